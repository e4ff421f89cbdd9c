"""A two-job joblib sweep on an empty root vs the same two runs one after the other (issue 21).

    python benchmarks/concurrent_sweep.py                         # average + task_arithmetic, default config
    python benchmarks/concurrent_sweep.py model.finetune.epochs=4 # any override applies to both paths
    python benchmarks/concurrent_sweep.py --code /path/to/checkout  # time another version of neulig

Sequential: ``python -m neulig.run merge=<a>`` then ``merge=<b>`` on one fresh root (the second reuses the
first's experts). Sweep: ``python -m neulig.run -m hydra/launcher=joblib merge=<a>,<b>`` on another fresh
root. Prints both wall times, their ratio (target <= 1.2) and how many experts each path fine-tuned.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str], code: Path) -> tuple[float, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(code)}
    env.pop("NEULIG_RUN_DIR", None)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    parser.add_argument("--methods", default="average,task_arithmetic", help="the two merge methods")
    parser.add_argument("--code", type=Path, default=REPO, help="the neulig checkout to run (default: this one)")
    parser.add_argument("--paths", default="sequential,sweep", help="which paths to time (comma-separated)")
    args = parser.parse_args()
    paths = args.paths.split(",")
    first, second = args.methods.split(",")
    base = Path(tempfile.mkdtemp(prefix="neulig-sweep-bench-"))
    run = [sys.executable, "-m", "neulig.run"]
    print(f"code: {args.code}  cores: {len(os.sched_getaffinity(0))}  load average: {os.getloadavg()[0]:.1f}", flush=True)
    try:
        if "sequential" in paths:
            seq_a, log_a = timed([*run, *args.overrides, f"merge={first}", f"paths.root_dir={base / 'seq'}"], args.code)
            seq_b, log_b = timed([*run, *args.overrides, f"merge={second}", f"paths.root_dir={base / 'seq'}"], args.code)
            print(f"sequential: {seq_a:.1f} s + {seq_b:.1f} s = {seq_a + seq_b:.1f} s, "
                  f"{(log_a + log_b).count('fine-tuning the ')} experts fine-tuned", flush=True)
        if "sweep" in paths:  # Hydra reads its flags before the overrides
            sweep, log_s = timed([*run, "-m", *args.overrides, "hydra/launcher=joblib", f"merge={first},{second}",
                                  f"paths.root_dir={base / 'sweep'}"], args.code)
            print(f"sweep (2 joblib jobs): {sweep:.1f} s, {log_s.count('fine-tuning the ')} experts fine-tuned")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if len(paths) == 2:
        print(f"sweep / sequential: {sweep / (seq_a + seq_b):.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
