"""The fault catalogue of runs that share a machine and a cache (issue 21): each cached stage computed
once across processes, locks of dead processes taken over, cores shared, preempted fine-tuning resumed,
and command-line mistakes answered in one line (those are in tests/config/test_catalogue.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, assert_cache_clean

FETCHER = """
import os, sys, time
from pathlib import Path

import pytest
import torch
from neulig.stages.stage import CachedStage

root, hold = Path(sys.argv[1]), float(sys.argv[2])

def compute():
    with open(root / "computed.txt", "a") as handle:
        handle.write(f"{os.getpid()}\\n")
    print("computing", flush=True)
    time.sleep(hold)
    return {"w": torch.arange(4.0) * 3}, {}

product = CachedStage("experts", "expert", "encoder.safetensors").fetch(root / "cache", ("same",), compute,
                                                                         label="the toy expert")
print("result", product.tensors["w"].tolist(), flush=True)
"""


def _fetcher(root: Path, hold: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", FETCHER, str(root), str(hold)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _computed(root: Path) -> list[int]:
    path = root / "computed.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_concurrent_fetches_compute_once_and_the_others_wait_then_load(tmp_path):
    procs = [_fetcher(tmp_path, 2.0) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]
    (owner,) = _computed(tmp_path)  # one process computed
    assert all("result [0.0, 3.0, 6.0, 9.0]" in out for out, _ in outs)
    waiting = [err for p, (_, err) in zip(procs, outs) if p.pid != owner]
    assert all("waiting for the toy expert (experts/" in err and f"process {owner} on " in err for err in waiting)
    assert_cache_clean(tmp_path / "cache")
    assert not list((tmp_path / "cache" / "experts").glob(".*.lock"))  # released


def test_a_killed_computing_process_is_taken_over_by_a_waiting_one(tmp_path):
    first = _fetcher(tmp_path, 600)
    assert first.stdout.readline().strip() == "computing"
    second = _fetcher(tmp_path, 0.0)
    deadline = time.time() + 60
    while not list((tmp_path / "cache" / "experts").glob(".*.lock")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # the second one is waiting on the first's lock by now (its import takes ~2 s)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert f"process {first.pid} on " in err and "is no longer running" in err  # took the dead lock over
    assert _computed(tmp_path) == [first.pid, second.pid]
    assert "result [0.0, 3.0, 6.0, 9.0]" in out
    assert_cache_clean(tmp_path / "cache")


RUN = ["model.pretrain.steps=30", "model.pretrain.n_per_family=300", "model.pretrain.batch_size=64",
       "data.sizes.train=160", "data.sizes.val=64", "data.sizes.test=96", "model.pretrained=null",
       "data.datasets=[digits,shapes]", "logger=none", "merge=average"]


def _run(root: Path, *extra: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NEULIG_RUN_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "neulig.run", *RUN, f"paths.root_dir={root}", *extra], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"), text=True)


def _results(root: Path) -> list[dict]:
    import json

    return [json.loads(p.read_text())["metrics"] for p in sorted((root / "outputs" / "runs").glob("*/results.json"))]


@pytest.mark.slow
def test_three_concurrent_identical_runs_train_each_expert_once_and_agree(tmp_path):
    logs = [tmp_path / f"run{i}.log" for i in range(3)]
    procs = [_run(tmp_path, "model.finetune.epochs=2", log=log) for log in logs]
    assert [p.wait(timeout=1800) for p in procs] == [0, 0, 0], [log.read_text()[-2000:] for log in logs]
    text = "".join(log.read_text() for log in logs)
    for dataset in ("digits", "shapes"):
        assert text.count(f"fine-tuning the tiny encoder on {dataset}:") == 1, text  # trained once, by one run
    assert "waiting for the digits expert" in text or "waiting for the shapes expert" in text
    first, *others = _results(tmp_path)
    assert len(others) == 2 and all(other == first for other in others)
    assert_cache_clean(tmp_path / "outputs" / "cache")


@pytest.mark.slow
def test_killing_the_run_that_fine_tunes_lets_another_take_over_and_finish(tmp_path):
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_run(tmp_path, "model.finetune.epochs=30", log=log) for log in logs]
    deadline = time.time() + 900
    victim = None
    while victim is None and time.time() < deadline:
        time.sleep(0.5)
        victim = next((p for p, log in zip(procs, logs) if "fine-tuning the tiny encoder on digits" in log.read_text()),
                      None)
    assert victim is not None, [log.read_text() for log in logs]
    survivor, survivor_log = next((p, log) for p, log in zip(procs, logs) if p is not victim)
    time.sleep(2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert survivor.wait(timeout=1800) == 0, survivor_log.read_text()[-2000:]
    text = survivor_log.read_text()
    assert "taking over the digits expert (experts/" in text and f"process {victim.pid} on " in text, text
    assert "fine-tuning the tiny encoder on digits" in text and len(_results(tmp_path)) == 1
    assert_cache_clean(tmp_path / "outputs" / "cache", allow_temp=True)  # the victim's temp dirs are never trusted


def _expert(root: Path, dataset: str) -> dict:
    import json

    from safetensors.torch import load_file

    for entry in (root / "outputs" / "cache" / "experts").iterdir():
        if not entry.name.startswith(".") and json.loads((entry / "meta.json").read_text())["dataset"] == dataset:
            return load_file(str(entry / "encoder.safetensors"))
    raise AssertionError(f"no {dataset} expert in {root}")


@pytest.mark.slow
def test_sigterm_during_fine_tuning_saves_its_state_and_the_rerun_ends_with_the_same_expert(tmp_path):
    import torch

    args = ("model.finetune.epochs=3", "data.sizes.train=1200")  # 10 steps an epoch, 30 per expert
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _run(whole, *args, log=tmp_path / "whole.log").wait(timeout=1800) == 0
    proc = _run(cut, *args, log=tmp_path / "cut.log")
    deadline = time.time() + 900
    while "fine-tuning the tiny encoder on digits" not in (tmp_path / "cut.log").read_text() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(6)  # into its 30 steps
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) != 0
    (saved,) = (cut / "outputs" / "cache" / "scratch" / "experts").glob("*/state.pt")
    assert "stopped by SIGTERM" in (tmp_path / "cut.log").read_text()
    assert _run(cut, *args, log=tmp_path / "rerun.log").wait(timeout=1800) == 0
    rerun = (tmp_path / "rerun.log").read_text()
    assert "resuming the digits expert from step " in rerun, rerun
    assert not saved.exists()  # removed once the expert is published
    for dataset in ("digits", "shapes"):
        expected, got = _expert(whole, dataset), _expert(cut, dataset)
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), dataset  # identical tensors
    assert _results(whole) == _results(cut)[-1:]
