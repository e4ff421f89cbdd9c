"""Smoke tests of the benchmark scripts (benchmarks/*.py) at their tiniest size on CPU.

They check that each script runs and prints its ratio line; speed targets live in the scripts' own
output, never in unit tests.
"""
import importlib.util
import sys

import pytest

from tests.conftest import REPO, TINY_OVERRIDES

BENCH = REPO / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["merge_inference", "portland_training", "portland_setup", "finetune_throughput",
                                  "feature_extraction"])
def test_help_exits_zero(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load(name).main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_merge_inference_smoke(capsys):
    result = load("merge_inference").main(["--experts", "2", "3", "--batch-size", "4", "--warmup", "1",
                                           "--repeats", "2", "--threads", "1"])
    out = capsys.readouterr().out
    assert "RATIO merged/plain N=2:" in out and "RATIO merged/plain N=3:" in out
    assert all(r["finite"] and r["ratio"] > 0 for r in result["per_n"].values())


def test_finetune_throughput_smoke(capsys):
    result = load("finetune_throughput").main(["--steps", "2", "--warmup", "1", "--batch-size", "8", "--threads", "1"])
    out = capsys.readouterr().out
    assert "RATIO neulig/plain_fp32 images/s:" in out
    assert set(result["images_per_s"]) == {"plain_fp32", "neulig"}


@pytest.mark.slow
def test_feature_extraction_smoke(capsys):
    """neulig's encode and open_clip's preprocess loop compute the same features (the script asserts it)."""
    result = load("feature_extraction").main(["--model", "tiny", "--images", "4", "--batch", "2", "--workers", "1",
                                              "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert "RATIO neulig_files/open_clip_plain images/s:" in out and "RATIO neulig_parquet/open_clip_plain" in out
    assert set(result["images_per_s"]) == {"open_clip_plain", "neulig_files", "neulig_parquet"}
    assert all(r > 0 for r in result["ratios"].values())


@pytest.mark.slow
def test_portland_training_smoke(tmp_path, capsys):
    overrides = [*TINY_OVERRIDES, "model.finetune.epochs=1"]
    result = load("portland_training").main(
        ["--epochs", "2", "--root", str(tmp_path), "--threads", "1", *[a for o in overrides for a in ("-o", o)]])
    out = capsys.readouterr().out
    assert "RATIO speed (b)/(a) wall:" in out and "RATIO step time one trainer / plain loop:" in out
    assert result["steps"] > 0 and result["ratio_wall"] > 0 and result["step_ratio_many"] > 0
    # identical math apart from float noise: at most a few of the 4 x 64 validation images may flip
    assert result["acc_diff"] <= 1.6 and result["acc_diff_plain"] <= 1.6


def test_portland_setup_smoke(capsys):
    result = load("portland_setup").main(["--experts", "3", "--scale", "0.0001", "--stacked"])
    out = capsys.readouterr().out
    assert "RATIO peak RSS" in out and [r[0] for r in result["rows"]] == ["streamed", "stacked"]
    streamed, stacked = result["results"]
    assert streamed["combinations"] == 4 and streamed["expert_bytes"] == stacked["expert_bytes"] > 0
