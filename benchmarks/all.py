"""Every performance figure from one command, at a size chosen for the device.

Runs the rows of ``benchmarks/rows.py`` (one benchmark script each, called through its ``main(argv)``),
each in its own process, prints one table and writes it as markdown and JSON to
``benchmarks/results/<date>-<device>.{md,json}``. A row shows its figure, the contenders measured side
by side in the same run, their ratio, the goal and whether it is met, and the exact command that
reproduces it alone.

The rows share ``--budget`` seconds: before each row, the seconds left are split among the rows left in
proportion to their full sizes' nominal cost, and the row runs at the largest of its sizes that fits its
share (its full size when the budget allows; a cut size says so in its status, and a figure that goes
beyond what was measured says "extrapolated").

    python benchmarks/all.py                          # the device torch sees (cuda if present), default budget
    python benchmarks/all.py --device cpu --budget 300
    python benchmarks/all.py --only merge_inference --only study_scale
    make bench ARGS='--device cpu'
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rows as R  # noqa: E402

REPO = R.REPO
DEFAULT_BUDGET = {"cuda": 480.0, "cpu": 600.0}
COLUMNS = ("row", "figure", "contenders (same run)", "ratio", "goal", "met", "status", "s", "command")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="rows:\n" + "\n".join(f"  {b.name:<20} {b.what} ({', '.join(b.devices)})"
                                                              for b in R.ROWS))
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when torch sees one")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help=f"seconds the rows share (default: {DEFAULT_BUDGET['cuda']:g} on cuda, "
                        f"{DEFAULT_BUDGET['cpu']:g} on cpu)")
    p.add_argument("--only", action="append", choices=[b.name for b in R.ROWS], metavar="NAME",
                   help="run only this row (repeatable)")
    p.add_argument("--smoke", action="store_true", help="every row at its tiniest size (the tests' run; no budget)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads passed to the scripts (0: their default)")
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "bench",
                   help="paths.root_dir parent of the rows that run the pipeline (cached stages kept there)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="where the table is written")
    p.add_argument("--in-process", action="store_true", help="run the rows in this process (faster start, no isolation)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--argv", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p


def load(bench: R.Bench):
    spec = importlib.util.spec_from_file_location(f"bench_{bench.script}", bench.path())
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def summarise(bench: R.Bench, argv: list[str], context: R.Context) -> R.Summary:
    """Run the row's script in this process and read its result (working directory: the repository)."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return bench.summarise(load(bench).main(argv), context)
    finally:
        os.chdir(cwd)


def in_child(bench: R.Bench, plan: R.Plan, args, timeout: float) -> R.Summary:
    """Run the row in a fresh interpreter (``--worker``); its output streams through, its result comes back."""
    with tempfile.TemporaryDirectory() as tmp:
        result, errors = Path(tmp) / "summary.json", Path(tmp) / "stderr"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--root", str(args.root),
               "--threads", str(args.threads), "--worker", bench.name, "--argv", json.dumps(list(plan.argv)),
               "--result", str(result)]
        with errors.open("w") as stderr:  # its own process group: a timeout ends its children too (make, runs)
            child = subprocess.Popen(cmd, cwd=REPO, stderr=stderr, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})  # its lines as they come
            try:
                code = child.wait(timeout=timeout)
            except BaseException as err:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                if isinstance(err, subprocess.TimeoutExpired):
                    raise RuntimeError(f"timed out after {timeout:.0f} s") from None
                raise
        if code:
            lines = [line for line in errors.read_text().splitlines() if line.strip()]
            sys.stderr.write("\n".join(lines[-20:]) + "\n")
            raise RuntimeError(lines[-1] if lines else f"exit status {code}")
        data = json.loads(result.read_text())
        data["contenders"] = tuple(tuple(c) for c in data["contenders"])
        return R.Summary(**data)


def choose(plans: list[R.Plan], share: float) -> R.Plan:
    """The largest size whose nominal cost fits the share (the cheapest when none does)."""
    return next((p for p in plans if p.seconds <= share), plans[-1])


def run_rows(benches: list[R.Bench], args, context: R.Context) -> list[R.Row]:
    """One row per bench, every bench listed (those not run say why)."""
    rows: list[R.Row] = []
    left = args.budget
    chosen = [b for b in benches if (not args.only or b.name in args.only) and args.device in b.devices]
    full = {b.name: b.plans(context)[0].seconds for b in chosen}
    for bench in benches:
        if bench not in chosen:
            status = "not selected (--only)" if args.device in bench.devices else \
                f"not run on {args.device} ({'/'.join(bench.devices)} only)"
            rows.append(R.Row.empty(bench.name, status))
            continue
        if args.smoke:
            plan = bench.smoke(context)
        else:
            share = left * full[bench.name] / sum(full.values())
            plan = choose(bench.plans(context), share)
        full.pop(bench.name)
        command = bench.command(plan)
        if bench.optional and not bench.path().exists():
            rows.append(R.Row.empty(bench.name, f"not available (benchmarks/{bench.script}.py absent)", command))
            continue
        print(f"\n=== {bench.name}: {command}", flush=True)
        start = time.perf_counter()
        try:
            if args.in_process:
                summary = summarise(bench, list(plan.argv), context)
            else:
                summary = in_child(bench, plan, args, timeout=max(5 * plan.seconds, 600.0))  # a hang, not a slow machine
            row = R.Row.of(bench.name, summary, plan, command, time.perf_counter() - start)
        except (Exception, SystemExit) as err:  # noqa: BLE001 - a failed row is reported, the others still run
            row = R.Row.empty(bench.name, f"failed ({str(err) or type(err).__name__})", command,
                              time.perf_counter() - start)
        left -= row.seconds
        rows.append(row)
    return rows


# ---- the table -----------------------------------------------------------------------------------


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[R.Row], meta: dict) -> str:
    met = {True: "yes", False: "**no**", None: "-"}
    lines = [f"# Benchmarks on {meta['device_kind']}: {meta['date']}", "",
             f"`{meta['command']}`: {meta['device']}, torch {meta['torch']}, {meta['cpus']} CPUs, load average "
             f"{meta['load_average']} at the start; commit {meta['commit']}; budget {meta['budget']:g} s, "
             f"spent {meta['seconds']:.0f} s.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in rows:
        contenders = "; ".join(f"{who}: {value}" for who, value in r.contenders) or "-"
        ratio = f"{r.ratio:.2f}x ({r.ratio_of})" if r.ratio is not None else "-"
        lines.append("| " + " | ".join(cell(c) for c in (
            r.name, r.figure, contenders, ratio, r.goal, met[r.met], r.status, f"{r.seconds:.0f}",
            f"`{r.command}`" if r.command else "-")) + " |")
    return "\n".join(lines) + "\n"


def metadata(args) -> dict:
    """Where and when the table was made (before the rows run: they may change torch's thread count)."""
    import _common as C
    import torch

    device = C.resolve_device(args.device)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device_kind": args.device, "device": C.device_name(device), "torch": torch.__version__,
            "cpus": os.cpu_count(), "load_average": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
            "machine": platform.machine(), "commit": commit.stdout.strip() or "unknown", "budget": args.budget,
            "smoke": args.smoke,
            "command": shlex.join(["python", "benchmarks/all.py", *args.argv_given])}


def write(rows: list[R.Row], meta: dict, out: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>.md`` and ``<stem>.json`` under ``out``, each written to a temporary name and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    paths = out / f"{stem}.md", out / f"{stem}.json"
    texts = markdown(rows, meta), json.dumps({"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1)
    for path, text in zip(paths, texts):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return paths


def stem(args) -> str:
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    suffix = "-smoke" if args.smoke else ""
    if args.only:
        suffix += "-" + "+".join(args.only)  # a partial table never replaces the whole one
    return f"{day}-{args.device}{suffix}"


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.budget is None:
        args.budget = DEFAULT_BUDGET[args.device]
    args.root = args.root.resolve()
    context = R.Context(args.device, args.root, args.threads)
    if args.worker:  # one row, in this (child) process: write its summary for the parent
        summary = summarise(R.BY_NAME[args.worker], json.loads(args.argv), context)
        args.result.write_text(json.dumps(dataclasses.asdict(summary)))
        return {}
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("benchmarks/all.py: --device cuda asked for, but torch sees no CUDA device")
    args.argv_given = argv
    meta, start = metadata(args), time.perf_counter()
    rows = run_rows(R.ROWS, args, context)
    meta["seconds"] = time.perf_counter() - start
    md, js = write(rows, meta, args.out, stem(args))
    print("\n" + markdown(rows, meta))
    print(f"written: {R.rel(md)}, {R.rel(js)}")
    return {"rows": rows, "meta": meta, "markdown": md, "json": js}


if __name__ == "__main__":
    main()
