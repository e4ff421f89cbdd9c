"""Smoke run of benchmarks/alignment.py at its tiniest size (speed numbers live in the script's output)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "alignment.py"


def test_alignment_benchmark_runs_on_the_tiny_tower(capsys):
    spec = importlib.util.spec_from_file_location("bench_alignment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    result = module.main(["--arch", "tiny", "--images", "6", "--batch-size", "4", "--threads", "1", "--tol", "2"])
    out = capsys.readouterr().out
    assert "SECONDS activations=" in out and "total=" in out
    assert result["sweeps"] >= 3 and result["seconds"] > 0 and set(result["phases"]) >= {"activations", "matching"}
