"""Day one rehearsed: the real CLI and the real huggingface_hub client against a loopback hub
(tests/hub_server.py), with empty weights, data and cache folders.

The hub serves, generated here with random weights under the real file names and repository ids:
FusionBench-style expert repositories (transformers ``CLIPVisionModel`` folders) and their base (a
``CLIPModel`` folder), two small datasets in the hub's parquet layout (tests/hub_datasets.py) and, for
the slow ViT-B/32 rehearsal, open_clip's ``open_clip_model.safetensors`` for ViT-B-32-quickgelu/openai.
A first run fetches everything and finishes; a second makes no request; a dropped connection publishes
nothing and the next run completes; ``HF_HUB_OFFLINE=1`` with nothing cached is one line per missing thing.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.hub_datasets import write_parquet_dataset
from tests.hub_server import HubServer, hub_environment

DATASETS = ("dtd", "eurosat")
SIZES = {"train": 24, "test": 8}
SMALL = [f"data.datasets=[{','.join(DATASETS)}]", "data.sizes.train=12", "data.sizes.val=6", "data.sizes.test=8",
         "data.num_workers=0", "logger=none",
         "merge=portland", "merge.global_epochs=2", "merge.eval_every=1"]


def write_datasets(root: Path) -> None:
    from neulig.data.hub import HUB_REPOS
    from neulig.data.real import REAL_SPECS

    for name in DATASETS:
        write_parquet_dataset(root, HUB_REPOS[name], list(REAL_SPECS[name].classnames), SIZES)


def write_fusionbench(root: Path, org: str, prefix: str, clip, base_repo: str | None = None) -> None:
    """``<org>/<prefix>_<task>`` CLIPVisionModel repositories (weights moved off the base) and the base
    CLIPModel at ``base_repo`` (default ``<org>/<prefix>``), as FusionBench publishes them."""
    transformers = pytest.importorskip("transformers")
    from neulig.models.hf_export import save_hf_clip
    from neulig.models.hub_experts import hub_task

    arch = "neulig-tiny" if clip.visual.output_dim == 64 else "ViT-B-32-quickgelu"
    staging = root / "staging"
    base = save_hf_clip(staging / "base", clip.state_dict(), arch, text=True)
    transformers.CLIPModel.from_pretrained(base).save_pretrained(root / "models" / (base_repo or f"{org}/{prefix}"))
    visual = {k: v.clone() for k, v in clip.visual.state_dict().items()}
    for i, name in enumerate(DATASETS):
        generator = torch.Generator().manual_seed(i)
        clip.visual.load_state_dict({k: v + 0.01 * torch.randn(v.shape, generator=generator)
                                     if v.is_floating_point() else v for k, v in visual.items()})
        folder = save_hf_clip(staging / name, clip.state_dict(), arch)
        transformers.CLIPVisionModel.from_pretrained(folder).save_pretrained(
            root / "models" / f"{org}/{prefix}_{hub_task(name)}")
    clip.visual.load_state_dict(visual)
    import shutil

    shutil.rmtree(staging)


def run_cli(args: list[str], env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return subprocess.run([sys.executable, "-m", "neulig.run", *args], capture_output=True, text=True,
                          cwd=cwd, env={**environment, "PYTHONPATH": str(REPO), **env}, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def hub_requests(server: HubServer) -> list[tuple[str, str]]:
    """Requests for repositories and files (the client's daily agent-registry poll left out)."""
    return [r for r in server.requests if r[1] != "/api/agent-harnesses"]


def published_snapshot_files(hub_cache: Path) -> list[str]:
    return sorted(p.name for p in hub_cache.glob("*/snapshots/*/*"))


# ---- the tiny rehearsal (default suite) -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory):
    from neulig.stages.backbone import create_quietly

    root = tmp_path_factory.mktemp("hub")
    write_datasets(root)
    write_fusionbench(root, "neulig", "clip-vit-tiny", create_quietly("neulig-tiny", None, 3))
    with HubServer(root) as server:
        yield server


TINY = ["model=tiny", "model.weights=hf://neulig/clip-vit-tiny", "model.experts_dir=hf://neulig/clip-vit-tiny"]


def tiny_args(tmp: Path) -> list[str]:
    return [*TINY, *SMALL, f"paths.root_dir={tmp}", f"data.root={tmp / 'data'}"]


def test_tiny_offline_with_nothing_cached_is_one_line_per_missing_thing(tiny_hub, tmp_path):
    env = {**hub_environment(tiny_hub, tmp_path / "hf_cache"), "HF_HUB_OFFLINE": "1"}
    tiny_hub.requests.clear()
    proc = run_cli(tiny_args(tmp_path), env, tmp_path)  # stops in the preflight (seconds; timed in no test)
    lines = error_lines(proc)
    assert proc.returncode == 2 and all(line.startswith("neulig: error: ") for line in lines), proc.stderr
    expected = ["neulig/clip-vit-tiny_dtd", "neulig/clip-vit-tiny_eurosat", "neulig/clip-vit-tiny ", "tanganke/dtd",
                "tanganke/eurosat"]
    assert len(lines) == len(expected)  # the two experts, the base, the two datasets: each named once
    for repo, line in zip(expected, lines):
        assert repo in line and "HF_HUB_OFFLINE=1" in line, line
    assert hub_requests(tiny_hub) == [] and not (tmp_path / "outputs" / "cache").exists()
    assert not (tmp_path / "hf_cache").exists() or not list((tmp_path / "hf_cache").glob("models--*"))


def test_tiny_day_one(tiny_hub, tmp_path):
    """A dropped connection publishes nothing; the next run fetches the rest, resumes and finishes; the
    run after it makes no request at all and prints the same table."""
    env = hub_environment(tiny_hub, tmp_path / "hf_cache")
    tiny_hub.drop("clip-vit-tiny_eurosat/model.safetensors", 1000)
    try:
        failed = run_cli(tiny_args(tmp_path), env, tmp_path)
    finally:
        tiny_hub.drop(None)
    lines = error_lines(failed)
    assert failed.returncode == 2 and lines[-1].startswith("neulig: error: the expert for eurosat"), failed.stderr
    assert "neulig/clip-vit-tiny_eurosat" in lines[-1] and "run again" in lines[-1]
    eurosat = tmp_path / "hf_cache" / "models--neulig--clip-vit-tiny_eurosat"
    assert not list(eurosat.glob("snapshots/*/model.safetensors"))  # nothing published under the final name
    assert not (tmp_path / "outputs" / "cache" / "experts").exists()

    tiny_hub.requests.clear()
    first = ok(run_cli(tiny_args(tmp_path), env, tmp_path))
    assert "[neulig] device: cpu" in first.stderr and "precision 32-true" in first.stderr
    downloaded = "\n".join(tiny_hub.downloads())
    for repo in ("/neulig/clip-vit-tiny/", "/neulig/clip-vit-tiny_eurosat/", "/datasets/tanganke/dtd/",
                 "/datasets/tanganke/eurosat/"):
        assert repo in downloaded, repo
    assert list(eurosat.glob("snapshots/*/model.safetensors"))
    assert "results.json" in first.stdout

    tiny_hub.requests.clear()
    second = ok(run_cli(tiny_args(tmp_path), env, tmp_path))
    assert hub_requests(tiny_hub) == []  # everything from the hub cache and the stage caches
    assert table(second) == table(first)


def table(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.split("run:")[0]


# ---- ViT-B/32: the README's command, open_clip weights included (slow) ------------------------------


@pytest.mark.slow
def test_vit_b32_day_one(tmp_path_factory):
    """``model=vit_b32 merge=portland`` with empty folders: open_clip's weights, the datasets; then FusionBench
    experts by name, ``+experiment=ta8_fusionbench``-style (``model.experts_dir=hf://...``)."""
    from safetensors.torch import save_file

    from neulig.models.openclip import open_clip
    from neulig.models.weights import weights_source
    from neulig.stages.backbone import create_quietly

    root, tmp = tmp_path_factory.mktemp("hub"), tmp_path_factory.mktemp("day_one")
    write_datasets(root)
    clip = create_quietly("ViT-B-32-quickgelu", None, 0)
    source = weights_source("ViT-B-32-quickgelu", "openai")
    assert open_clip.get_pretrained_cfg("ViT-B-32-quickgelu", "openai")["hf_hub"].startswith(source.repo)
    (root / "models" / source.repo).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              str(root / "models" / source.repo / source.files[0]))
    write_fusionbench(root, "tanganke", "clip-vit-base-patch32", clip, base_repo="openai/clip-vit-base-patch32")
    small_vit = ["model.finetune.batch_size=4", "model.finetune.epochs=1", "model.finetune.warmup_steps=1",
                 "model.finetune.num_workers=0", "model.finetune.compile=false", "eval.batch_size=8"]
    args = ["model=vit_b32", *SMALL, *small_vit, f"paths.root_dir={tmp}", f"data.root={tmp / 'data'}"]
    with HubServer(root) as server:
        env = hub_environment(server, tmp / "hf_cache")
        first = ok(run_cli(args, env, tmp, timeout=1800))  # a ViT-B/32 on 2 busy cores
        assert "warning: ViT-B-32-quickgelu runs on the CPU" in first.stderr
        assert (tmp / "weights" / "ViT-B-32-quickgelu_openai.safetensors").is_file()
        assert [p.name for p in (tmp / "weights").iterdir() if p.is_file()] == ["ViT-B-32-quickgelu_openai.safetensors"]
        server.requests.clear()
        ok(run_cli(args, env, tmp))
        assert hub_requests(server) == []
        hub_args = [*args, "model.weights=hf://openai/clip-vit-base-patch32",
                    "model.experts_dir=hf://tanganke/clip-vit-base-patch32"]
        ok(run_cli(hub_args, env, tmp, timeout=1800))
        assert any("tanganke/clip-vit-base-patch32_dtd/" in p for p in server.downloads())
        server.requests.clear()
        ok(run_cli(hub_args, env, tmp))
        assert hub_requests(server) == []
    offline = run_cli(["model=vit_b32", *SMALL, f"paths.root_dir={tmp / 'empty'}", f"data.root={tmp / 'data'}"],
                      {**env, "HF_HUB_OFFLINE": "1"}, tmp)
    lines = error_lines(offline)
    assert offline.returncode == 2 and len(lines) == 1, offline.stderr
    assert all(s in lines[0] for s in ("open_clip_model.safetensors", source.repo,
                                        str(tmp / "empty" / "weights" / "ViT-B-32-quickgelu_openai.safetensors")))
