"""`make run` (the embedded default experiment, README "Quick start") cold and warm, as subprocesses.

Cold: ``paths.root_dir`` emptied first, so every stage (heads, experts, features) is computed and the
MLflow store created; warm: the same command again, every stage read from the cache. Both are whole
processes (interpreter start, imports, the run, its table), timed from outside.

    python benchmarks/make_run.py                                  # root: outputs/bench/embedded
    python benchmarks/make_run.py --via python -o logger=none      # python -m neulig.run, without make
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "bench" / "embedded",
                   help="paths.root_dir of both runs; EMPTIED before the cold run")
    p.add_argument("--via", choices=("make", "python"), default="make",
                   help="make: `make run ARGS=...` (the repository's .venv); python: this interpreter's -m neulig.run")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override of both runs (repeatable)")
    return p


def command(args, root: Path) -> list[str]:
    overrides = [f"paths.root_dir={root}", *args.override]
    if args.via == "make":
        return ["make", "-s", "-C", str(REPO), "run", f"ARGS={shlex.join(overrides)}"]
    return [sys.executable, "-m", "neulig.run", *overrides]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        raise SystemExit(f"make_run: {shlex.join(cmd)} exited {done.returncode}: {' '.join(tail)}")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    root = args.root.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cmd = command(args, root)
    cold = timed(cmd)
    warm = timed(cmd)
    print(f"make_run: {shlex.join(cmd)}\n  cold {cold:.1f} s, warm {warm:.1f} s: cold / warm {cold / warm:.2f}x")
    return {"command": shlex.join(cmd), "cold_s": cold, "warm_s": warm}


if __name__ == "__main__":
    main()
