"""Portland's set-up memory: the experts' offset statistics (eps* and the Gram matrix) at real model size.

Seven ViT-L/14-sized experts (the visual tower: ~304M parameters, 1.2 GB each in float32; random flat
tensors in the shapes of a few large entries suffice) are created in a child process, which then
computes every k-combination's statistics (k = 2..E) the way a run does: one streamed pass over the
parameters with float64 accumulation (``portland.statistics.offset_moments``), then each combination
from the [E, E] moments. The child reports its peak RSS while computing them (``VmHWM``, reset once the
experts exist; Linux) against the experts' own bytes.
``--stacked`` measures, in another child, the earlier way for comparison: a stacked [T, P] float64
matrix of all experts and its offsets (two more copies of the experts in float64).

    python benchmarks/portland_setup.py                       # 7 experts of 304M parameters (8.5 GB)
    python benchmarks/portland_setup.py --scale 0.25 --stacked   # a quarter of the size, both ways

Target: peak RSS <= 1.1x the experts' bytes (the RSS the interpreter and torch held before the experts
were made is subtracted; it is printed).
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TARGET = 1.1
VIT_L14_VISUAL = 303_966_976  # parameters of open_clip ViT-L-14's image tower


def child(mode: str, experts: int, params: int) -> dict:
    """In this (child) process: make the experts, compute every combination's statistics, report memory."""
    import torch

    from neulig.portland.statistics import offset_moments

    def status_kb(field: str) -> int:
        """VmRSS (now) or VmHWM (peak since the last reset) of this process, in kB."""
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field} in /proc/self/status")

    torch.set_num_threads(1)
    before = status_kb("VmRSS")
    sizes = [params // 4, params // 4, params // 4, params - 3 * (params // 4)]  # a few large entries
    g = torch.Generator().manual_seed(0)
    states: dict[str, dict] = {f"e{e}": {} for e in range(experts)}
    for i, n in enumerate(sizes):  # one entry's base at a time: nothing but the experts stays
        base = torch.randn(n, generator=g)
        for state in states.values():
            state[f"block{i}.weight"] = torch.randn(n, generator=g).mul_(1e-3).add_(base)
        del base
    expert_bytes = sum(t.numel() * t.element_size() for s in states.values() for t in s.values())
    with_experts = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from here
    start = time.perf_counter()
    names = list(states)
    if mode == "streamed":
        moments = offset_moments(states, "all")
        count = 0
        for k in range(2, experts + 1):
            for group in itertools.combinations(names, k):
                moments.of(group)
                count += 1
    else:  # the earlier way: stacked [T, P] float64, offsets from it (for the full set of experts)
        theta = torch.stack([torch.cat([s[k].double().flatten() for k in sorted(s)]) for s in states.values()])
        offsets = theta - theta.mean(0, keepdim=True)
        sums = offsets.sum(1)
        _ = (sums - sums.mean()) / sums.std(unbiased=True), offsets @ offsets.t()
        count = 1
    seconds = time.perf_counter() - start
    peak = status_kb("VmHWM")
    return {"mode": mode, "experts": experts, "params": params, "expert_bytes": expert_bytes,
            "rss_start_bytes": before * 1024, "rss_with_experts_bytes": with_experts * 1024, "peak_bytes": peak * 1024,
            "combinations": count, "seconds": seconds}


def measure(mode: str, experts: int, params: int) -> dict:
    """Run :func:`child` in a fresh Python process (its peak RSS is its own)."""
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import portland_setup as p; "
            f"print(json.dumps(p.child({mode!r}, {experts}, {params})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=C.REPO, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def own(result: dict) -> float:
    """Peak RSS beyond what the process held before making the experts, over the experts' bytes."""
    return (result["peak_bytes"] - result["rss_start_bytes"]) / result["expert_bytes"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, default=7, help="number of experts (the paper's study: 7)")
    p.add_argument("--params", type=int, default=VIT_L14_VISUAL, help="parameters per expert")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of --params (for a machine with less memory)")
    p.add_argument("--stacked", action="store_true", help="also measure the stacked [T, P] float64 way")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Measure, print the table and the ratio; returns every figure (``rows`` as printed)."""
    args = build_parser().parse_args(argv)
    params = max(4, int(args.params * args.scale))
    results = [measure("streamed", args.experts, params)]
    if args.stacked:
        results.append(measure("stacked", args.experts, params))
    gb = 1 << 30
    rows = [[r["mode"], f"{r['expert_bytes'] / gb:.2f}", f"{r['peak_bytes'] / gb:.2f}",
             f"{(r['peak_bytes'] - r['rss_with_experts_bytes']) / gb:.3f}", f"{own(r):.3f}",
             str(r["combinations"]), f"{r['seconds']:.1f}"] for r in results]
    print(f"portland_setup: {args.experts} experts of {params:,} parameters (scale {args.scale} of {args.params:,}), "
          "float32")
    print(C.table(["statistics", "experts GB", "peak RSS GB", "beyond GB", "(peak-start)/experts", "combos", "s"], rows))
    ratio = own(results[0])
    print(f"RATIO peak RSS (less the {results[0]['rss_start_bytes'] / gb:.2f} GB the interpreter and libraries held "
          f"before the experts were made) / experts' bytes: {ratio:.3f}x ({C.verdict(ratio, TARGET, True)})")
    return {"rows": rows, "ratio": ratio, "results": results}


if __name__ == "__main__":
    main()
