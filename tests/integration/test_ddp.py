"""Lightning DDP with 2 CPU processes (gloo) gives the single-process metrics.

Portland's DDP path all-reduces per-sample-summed gradients by hand, so with the experts cached the
2-process run must reproduce the single-process accuracies (tolerance: one test image). Fine-tuning
under DDP shards each global batch across ranks with a different sampler, so it is compared loosely
(slow tier).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PORTLAND_TINY, REPO, TINY_OVERRIDES
from tests.output_checks import bar_lines, warning_lines


def run_cli(root: Path, *extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NEULIG_RUN_DIR", None)
    env.pop("PYTHONWARNINGS", None)  # as a user runs it, whatever the caller's warning filters
    args = [*TINY_OVERRIDES, *PORTLAND_TINY, "logger=none", f"paths.root_dir={root}", *extra]
    proc = subprocess.run([sys.executable, "-m", "neulig.run", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a normal run (pretraining, fine-tuning, Portland; DDP too) prints no warning and no progress bar
    assert not warning_lines(proc.stderr) and not bar_lines(proc.stderr), proc.stderr
    logged = [re.sub(r"\(.*\)$", "", line) for line in proc.stderr.splitlines() if line.startswith("[neulig]")]
    assert logged and len(logged) == len(set(logged)), proc.stderr  # a DDP child does not repeat rank 0's log
    runs = sorted((root / "outputs" / "runs").iterdir())
    return json.loads((runs[-1] / "results.json").read_text())["metrics"]


def test_portland_ddp_two_processes_matches_single(tmp_path):
    single = run_cli(tmp_path)
    ddp = run_cli(tmp_path, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert len(list((tmp_path / "outputs" / "runs").iterdir())) == 2  # the DDP child reused rank 0's run dir
    one_image = 100.0 / 96 + 1e-6
    for key, value in single.items():
        if key.startswith(("acc/ensembled", "acc/merged")):
            assert abs(ddp[key] - value) <= one_image, (key, value, ddp[key])


@pytest.mark.slow
def test_finetune_ddp_two_processes_close_to_single(tmp_path):
    single = run_cli(tmp_path / "single")
    ddp = run_cli(tmp_path / "ddp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert abs(ddp["acc/finetuned/avg"] - single["acc/finetuned/avg"]) <= 10.0
