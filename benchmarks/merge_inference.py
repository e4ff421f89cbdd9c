"""Per-batch merged inference vs a plain forward of one expert (docs/neural_ligand.md §5, §12).

The merged forward of one test batch is what ``portland.evaluation.merged_batch_accuracy`` runs: one GEMV
``coeffs @ theta`` on the FlatStack of N experts (plus BN pooling for RN50), the result viewed as a
state dict and run with ``torch.func.functional_call`` of the visual tower on the batch. The plain
forward is the same visual tower, holding one expert's weights, on the same batch. Experts are
perturbed copies of a randomly initialised backbone (speed does not depend on the values).

    python benchmarks/merge_inference.py                                   # tiny, CPU, N = 2..7
    python benchmarks/merge_inference.py --model vit_b32 --experts 7 --device cuda

Issue targets: merged/plain <= 1.25x for tiny at N=4 on CPU; <= 1.10x for vit_b32 at N=7 on a GPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402
from torch.func import functional_call  # noqa: E402

TARGETS = {("tiny", "cpu", 4): 1.25, ("vit_b32", "cuda", 7): 1.10}


def perturbed_experts(state: dict, count: int, scale: float, seed: int) -> list[dict]:
    """``count`` fine-tuned-looking copies of ``state`` (on its device): params + noise, BN stats jittered."""
    gen = torch.Generator(device=next(iter(state.values())).device).manual_seed(seed)
    experts = []
    for i in range(count):
        expert = {}
        for key, value in state.items():
            if key.endswith("num_batches_tracked"):
                expert[key] = torch.full_like(value, 100 * (i + 1))
            elif not value.is_floating_point():
                expert[key] = value.clone()
            elif key.endswith("running_var"):
                expert[key] = value * (1 + scale * torch.rand(value.shape, generator=gen, device=value.device))
            else:
                expert[key] = value + scale * torch.randn(value.shape, generator=gen, device=value.device)
        experts.append(expert)
    return experts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(C.MODELS), default="tiny")
    p.add_argument("--experts", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7], help="numbers N of merged experts")
    p.add_argument("--batch-size", type=int, default=128, help="test batch (the reference evaluates with 128)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15, help="timed repeats; the median is reported")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = C.resolve_device(args.device)
    from neulig.merging.flat import FlatStack

    backbone = C.load_random_backbone(args.model)
    visual = backbone.visual.to(device).eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    size = C.image_size(visual)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, size, size, generator=gen).to(device)
    base = {k: v.detach() for k, v in visual.state_dict().items()}
    experts_all = perturbed_experts(base, max(args.experts), 1e-2, args.seed)
    visual.load_state_dict(experts_all[0])  # the plain forward runs expert 0

    print(f"merge_inference: model={args.model} ({backbone.arch}, random init), batch={args.batch_size}, "
          f"image={size}px, device={C.device_name(device)}")
    rows, results = [], {"model": args.model, "device": str(device), "per_n": {}}
    for n in args.experts:
        flat = FlatStack(experts_all[:n], device=device)
        coeffs = [torch.softmax(torch.randn(n, generator=gen), 0).to(device) for _ in range(8)]
        step = iter(range(10 ** 9))

        def merged_forward(flat=flat, coeffs=coeffs, step=step):
            state = flat.combine(coeffs[next(step) % len(coeffs)])
            return functional_call(visual, state, (x,))

        def combine_only(flat=flat, coeffs=coeffs, step=step):
            return flat.combine(coeffs[next(step) % len(coeffs)])

        with torch.inference_mode():  # plain and merged timed in alternation: fair on a shared machine
            times = C.time_interleaved({"plain": lambda: visual(x), "merged": merged_forward, "combine": combine_only},
                                       device, args.warmup, args.repeats)
            plain, merged, comb = times["plain"], times["merged"], times["combine"]
            # same numbers as a state dict loaded into the module (sanity, not timed)
            out_f = functional_call(visual, flat.combine(coeffs[0]), (x,))
        ratio = merged / plain
        target = TARGETS.get((args.model, device.type, n))
        results["per_n"][n] = {"plain_s": plain, "merged_s": merged, "combine_s": comb, "ratio": ratio, "target": target,
                               "finite": bool(torch.isfinite(out_f).all())}
        rows.append([n, f"{flat.num_params / 1e6:.2f}M", f"{plain * 1e3:.2f}", f"{comb * 1e3:.2f}",
                     f"{merged * 1e3:.2f}", f"{ratio:.3f}x", C.verdict(ratio, target, True) if target else ""])
        del flat
    print(C.table(["N", "params", "plain ms", "combine ms", "merged ms", "merged/plain", "target"], rows))
    for n, r in results["per_n"].items():
        print(f"RATIO merged/plain N={n}: {r['ratio']:.3f}x")
    return results


if __name__ == "__main__":
    main()
