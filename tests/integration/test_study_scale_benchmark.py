"""Smoke tests of benchmarks/study_scale.py (the paper's 120-combination study, arXiv 2503.01268) at a
tiny size on CPU: it runs, prints its ratio lines, and its two paths agree (a float32 store: combinations
trained together equal training them one at a time within 1e-5, docs/neural_ligand.md §7)."""
import importlib.util
import sys

import pytest
import torch

from tests.conftest import REPO

TINY = ["--scale", "0.002", "--dim", "16", "--epochs", "2", "--eval-every", "1", "--limit", "1", "--threads", "1",
        "--store-dtype", "float32"]


@pytest.fixture(autouse=True)
def keep_threads():
    """The script sets torch's thread count (``--threads``): give the suite its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load():
    spec = importlib.util.spec_from_file_location("bench_study_scale", REPO / "benchmarks" / "study_scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load().main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_paper7_shapes_follow_the_real_protocol():
    study = load().paper7(1.0, 2, 512, 128, 1, 10, 0)
    assert study.sizes["cifar100"] == (45000, 5000, 10000)  # val = 10% of 50,000 capped at 5,000
    assert study.sizes["gtsrb"] == (23976, 2664, 12630)
    assert study.sizes["resisc45"] == (18900, 6300, 6300)
    assert study.train_rows("stl10") == 3 * 4500  # clean + 2 views
    assert study.classes["cifar100"] == 100 and study.classes["gtsrb"] == 43


def test_study_scale_smoke_in_process(capsys):
    result = load().main([*TINY, "--in-process"])
    out = capsys.readouterr().out
    assert "RATIO memory peak/needed batched:" in out and "RATIO memory peak/needed sequential:" in out
    assert "RATIO speed sequential/batched measured (6 combinations" in out
    assert "RATIO speed sequential/batched estimated (120 combinations" in out
    assert result["compared"] == 6 and result["same_best_epoch"] == 6  # one combination per k = 2..7
    assert result["max_state_diff"] <= 1e-5 and result["max_acc_diff"] <= 1e-5


@pytest.mark.slow
def test_study_scale_smoke_isolated(tmp_path, capsys):
    """Each path in its own process (the default), the store also written as safetensors."""
    result = load().main([*TINY, "--save", str(tmp_path / "store")])
    out = capsys.readouterr().out
    assert "on disk as safetensors (49 files" in out
    assert result["batched"]["peak"] > 0 and result["sequential"]["peak"] > 0
