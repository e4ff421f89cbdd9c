"""Failures in the middle of a run, through the CLI: one error line on stderr, exit 2, and a cache
with nothing half-written; a run killed while fine-tuning resumes cleanly; users' own experts.

One uninterrupted run (the module's ``reference``) provides the numbers every recovered run must
reproduce exactly (same seed) and the cache the other tests start from.
"""
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_OVERRIDES, assert_cache_clean

# the tiny config at its cheapest: a random-init backbone (no pretraining), two datasets, 2 steps per expert
FAST = [*TINY_OVERRIDES, "model.pretrained=null", "data.datasets=[digits,shapes]", "model.finetune.epochs=1",
        "logger=none"]
WARM_STAGES = ("datasets", "heads")  # everything before the experts
ALL_STAGES = (*WARM_STAGES, "experts", "features")
FINETUNING = re.compile(r"^\[neulig\] fine-tuning the \S+ encoder on (\w+)")


def command(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "neulig.run", f"paths.root_dir={root}", *FAST, *args]


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(root, *args), capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def foreign_lines(stderr: str) -> list[str]:
    """stderr lines other than neulig's own ``[neulig] ...`` progress log: errors, warnings of libraries."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("[neulig] ")]


def assert_one_error(proc: subprocess.CompletedProcess, pattern: str) -> str:
    """Exit 2 and exactly one line besides the progress log: ``neulig: error: <pattern>``."""
    assert proc.returncode == 2, proc.stderr
    lines = foreign_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert re.fullmatch(f"neulig: error: {pattern}", lines[0]), lines[0]
    return lines[0]


def metrics_of(root: Path) -> dict:
    (results,) = sorted((root / "outputs" / "runs").glob("*/results.json"))[-1:]
    return json.loads(results.read_text())["metrics"]


def expert_dirs(cache: Path) -> dict[str, Path]:
    """{dataset: entry dir} of the cached experts."""
    return {json.loads((d / "meta.json").read_text())["dataset"]: d
            for d in sorted((cache / "experts").glob("[!.]*"))}


def finetuned(stderr: str) -> list[str]:
    return [m.group(1) for line in stderr.splitlines() if (m := FINETUNING.match(line))]


@dataclass
class Reference:
    root: Path
    metrics: dict

    @property
    def cache(self) -> Path:
        return self.root / "outputs" / "cache"

    def warm(self, root: Path, stages: tuple[str, ...] = WARM_STAGES) -> Path:
        """A new root whose cache holds a copy of these stages of the reference cache."""
        for stage in stages:
            shutil.copytree(self.cache / stage, root / "outputs" / "cache" / stage)
        return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    root = tmp_path_factory.mktemp("reference")
    proc = run_cli(root, "merge=average")
    assert proc.returncode == 0, proc.stderr
    assert finetuned(proc.stderr) == ["digits", "shapes"]
    assert foreign_lines(proc.stderr) == []  # a normal run: nothing but neulig's own progress on stderr
    assert_cache_clean(root / "outputs" / "cache")
    return Reference(root, metrics_of(root))


@pytest.mark.parametrize("lr, message", [
    ("1e30", r"fine-tuning loss is nan at step \d+; lower model\.finetune\.lr"),  # one step overflows the weights
    ("1e38", r"fine-tuning on \w+ overflowed \(.*\); lower model\.finetune\.lr \(now 1e\+38\)"),  # AdamW itself
])
def test_nan_loss_in_finetuning_stops_with_one_line_and_publishes_no_expert(tmp_path, reference, lr, message):
    root = reference.warm(tmp_path)
    proc = run_cli(root, "merge=average", f"model.finetune.lr={lr}")
    assert_one_error(proc, message)
    cache = root / "outputs" / "cache"
    assert_cache_clean(cache)
    assert not list((cache / "experts").glob("*"))


def test_nan_loss_in_portland_stops_with_one_line(tmp_path, reference):
    root = reference.warm(tmp_path, ALL_STAGES)
    cache = root / "outputs" / "cache"
    before = {p.relative_to(cache) for p in cache.glob("*/*")}
    proc = run_cli(root, "merge=portland", "merge.global_epochs=5", "merge.lr=1e37")
    assert_one_error(proc, r"Portland loss is nan at epoch 1, step \d+; lower merge\.lr or check the expert features")
    assert finetuned(proc.stderr) == []  # the experts came from the cache
    assert_cache_clean(cache)
    assert before <= {p.relative_to(cache) for p in cache.glob("*/*")}  # nothing cached was lost


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_split_is_one_line_before_any_work(tmp_path, split):
    proc = run_cli(tmp_path, "merge=average", f"data.sizes.{split}=0")
    assert_one_error(proc, f"data.sizes.{split}=0: an integer >= 1")
    assert not (tmp_path / "outputs" / "cache").exists()


def _lines_until(proc: subprocess.Popen, pattern: re.Pattern, count: int, timeout: float) -> list[str]:
    """stderr lines of ``proc`` up to the ``count``-th one matching ``pattern`` (fails on exit or timeout)."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)  # end of stream: the process has exited

    threading.Thread(target=read, daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while sum(bool(pattern.match(line)) for line in seen) < count:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"not {count} lines matching {pattern.pattern} within {timeout} s:\n{''.join(seen)}")
        if line is None:
            pytest.fail(f"exited before {count} lines matching {pattern.pattern}:\n{''.join(seen)}")
        seen.append(line)
    return seen


def test_run_killed_while_finetuning_resumes_cleanly(tmp_path, reference):
    root = reference.warm(tmp_path)
    cache = root / "outputs" / "cache"
    proc = subprocess.Popen(command(root, "merge=average"), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        _lines_until(proc, FINETUNING, count=2, timeout=240)  # the first expert is done, the second training
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert_cache_clean(cache)  # no entry that does not verify, no temp dir
    experts = expert_dirs(cache)
    assert list(experts) == ["digits"]  # only the finished expert, nothing of the second
    first = experts["digits"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}

    rerun = run_cli(root, "merge=average")
    assert rerun.returncode == 0, rerun.stderr
    assert finetuned(rerun.stderr) == ["shapes"]  # digits was reused...
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == mtimes  # ...untouched
    assert metrics_of(root) == reference.metrics
    assert_cache_clean(cache)


def test_truncated_cached_expert_is_retrained_with_one_warning(tmp_path, reference):
    root = reference.warm(tmp_path, ALL_STAGES)
    victim = expert_dirs(root / "outputs" / "cache")["shapes"] / "encoder.safetensors"
    size = victim.stat().st_size
    victim.write_bytes(victim.read_bytes()[: size // 2])  # a disk that filled up, a copy cut short
    proc = run_cli(root, "merge=average")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "retrain" in line]
    assert warnings == [f"[neulig] cache entry rejected: {victim}: content hash differs from meta.json "
                        f"(truncated or edited); retraining the shapes expert"], proc.stderr
    assert foreign_lines(proc.stderr) == []
    assert finetuned(proc.stderr) == ["shapes"]
    assert victim.stat().st_size == size
    assert metrics_of(root) == reference.metrics
    assert_cache_clean(root / "outputs" / "cache")


# -- model.experts: your own fine-tuned experts --------------------------------------------------------
def given(name: str, path: Path) -> str:
    return f"model.experts={{{name}:'{path}'}}"


def test_expert_file_is_used_instead_of_finetuning(tmp_path, reference):
    own = tmp_path / "mine" / "digits.safetensors"  # the cached expert, handed back as the user's file
    own.parent.mkdir()
    shutil.copy(expert_dirs(reference.cache)["digits"] / "encoder.safetensors", own)
    root = reference.warm(tmp_path / "root", ALL_STAGES)
    shutil.rmtree(expert_dirs(root / "outputs" / "cache")["digits"])  # it must not come from the cache
    proc = run_cli(root, "merge=average", given("digits", own))
    assert proc.returncode == 0, proc.stderr
    assert finetuned(proc.stderr) == []
    assert any(line.startswith(f"[neulig] expert for digits: {own} (sha256 ") for line in proc.stderr.splitlines())
    assert metrics_of(root) == reference.metrics
    assert "digits" not in expert_dirs(root / "outputs" / "cache")
    assert_cache_clean(root / "outputs" / "cache")


def test_missing_expert_file_is_one_line_before_any_work(tmp_path):
    missing = tmp_path / "nowhere" / "digits.safetensors"
    proc = run_cli(tmp_path, "merge=average", given("digits", missing))
    assert_one_error(proc, re.escape(f"expert checkpoint for digits not found: {missing} (model.experts.digits); "
                                     "give the path of an existing file or Hugging Face folder"))
    assert not (tmp_path / "outputs" / "cache").exists()


def test_truncated_expert_file_is_one_line_before_any_training(tmp_path, reference):
    bad = tmp_path / "digits.safetensors"
    data = (expert_dirs(reference.cache)["digits"] / "encoder.safetensors").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    proc = run_cli(tmp_path, "merge=average", given("digits", bad))
    assert_one_error(proc, re.escape(f"expert checkpoint {bad} (model.experts.digits) cannot be read (")
                     + r".+\); it may be truncated: export it again")
    assert not (tmp_path / "outputs" / "cache").exists()  # checked before the backbone, let alone training


def test_expert_file_with_a_wrong_shape_names_the_key(tmp_path, reference):
    from safetensors.torch import load_file, save_file

    state = load_file(str(expert_dirs(reference.cache)["digits"] / "encoder.safetensors"))
    state["conv1.weight"] = state["conv1.weight"][:, :, :4, :4].contiguous()  # patch 4 instead of 8
    bad = tmp_path / "digits.safetensors"
    save_file(state, str(bad))
    proc = run_cli(tmp_path, "merge=average", given("digits", bad))
    assert_one_error(proc, re.escape(f"expert checkpoint {bad} (model.experts.digits) does not fit the neulig-tiny "
                                     "image encoder: key 'conv1.weight' has shape (96, 3, 4, 4), expected "
                                     "(96, 3, 8, 8); give the image encoder fine-tuned from this model"))
    assert not (tmp_path / "outputs" / "cache").exists()
