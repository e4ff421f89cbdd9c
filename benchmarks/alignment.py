"""Time one permutation alignment of two independently initialised image towers (issue #12).

Two randomly initialised towers of the same architecture (different seeds), activations from
``--images`` random normalised images at the tower's resolution, then ``neulig.alignment.align``
(MuDSC by default: initial matching from S_act, then weight-space refinement sweeps). Prints the
seconds per phase: activations (hooked forward passes of both towers), matching (S_act and the
initial LAPs), refinement (the weight-space sweeps and final scores), permuting; and the total.
Random towers are unrelated, so their similarities are noise-like: the worst case for the LAPs.

    python benchmarks/alignment.py                                    # ViT-B/32, 32 images, CPU
    python benchmarks/alignment.py --arch rn50 --images 16 --threads 2
    python benchmarks/alignment.py --arch tiny --images 4             # seconds, for a smoke run
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

ARCHS = {"tiny": "neulig-tiny", "vit_b32": "ViT-B-32", "rn50": "RN50", "vit_b16": "ViT-B-16"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHS), default="vit_b32")
    p.add_argument("--method", choices=["weight", "activation", "mudsc"], default="mudsc")
    p.add_argument("--images", type=int, default=32, help="random images for the activation statistics")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-sweeps", type=int, default=100)
    p.add_argument("--tol", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    return p


def random_tower(arch: str, seed: int) -> torch.nn.Module:
    import open_clip

    open_clip.add_model_config(str(REPO / "neulig" / "models" / "configs"))
    torch.manual_seed(seed)
    return open_clip.create_model(ARCHS[arch]).visual.eval()


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from neulig.alignment import align
    from neulig.config.align import AlignConfig

    reference_tower = random_tower(args.arch, args.seed)
    reference = {k: v.detach().clone() for k, v in reference_tower.state_dict().items()}
    other = {k: v.detach().clone() for k, v in random_tower(args.arch, args.seed + 1).state_dict().items()}
    size = reference_tower.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    gen = torch.Generator().manual_seed(args.seed)
    counts = [min(args.batch_size, args.images - i) for i in range(0, args.images, args.batch_size)]
    batches = [torch.randn(n, 3, size, size, generator=gen) for n in counts]
    options = AlignConfig(method=args.method, max_sweeps=args.max_sweeps, tol=args.tol, seed=args.seed)
    print(f"alignment: arch={args.arch} ({ARCHS[args.arch]}, random init x2), method={args.method}, "
          f"images={args.images}x{size}px, threads={torch.get_num_threads()}, max_sweeps={args.max_sweeps}, "
          f"tol={args.tol}")
    start = time.perf_counter()
    result = align(reference, [other], reference_tower, args.method, batches, options)
    wall = time.perf_counter() - start
    phases = result.phase_seconds
    groups = result.reports[0]
    mean_sim = sum(r.similarity for r in groups.values()) / len(groups)
    scores = " ".join(f"{x:.4f}" for x in result.sweep_scores[0])
    print(f"groups={len(groups)} sweeps={result.sweeps[0]} (scores {scores}) mean matched similarity={mean_sim:.4f}")
    print(f"SECONDS activations={phases['activations']:.2f} matching={phases['matching']:.2f} "
          f"refinement={phases['refinement']:.2f} permuting={phases['permuting']:.2f} total={result.seconds:.2f} "
          f"(wall {wall:.2f})")
    return {"arch": args.arch, "method": args.method, "phases": phases, "seconds": result.seconds,
            "sweeps": result.sweeps[0], "similarity": mean_sim}


if __name__ == "__main__":
    main()
