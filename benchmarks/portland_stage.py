"""The whole Portland stage of one paper5-shaped run, in absolute seconds (issue target: <= 60 s on one
H100 for ViT-B/32; the reference code needs about 33 h).

Paper5 is the first 5-combination of the paper's seven datasets (conf/data/paper5.yaml: GTSRB, CIFAR100,
RESISC45, CIFAR10, MNIST). Its features are ``study_scale.py``'s paper7-shaped random features (real
split sizes and classes, ``--dim``, ``--views`` augmented views, the run's default float32 store), and the
stage is that script's batched path (``methods.portland.run_many``'s trainer) on that one combination,
for the default ``merge.global_epochs`` (conf/merge/portland.yaml), evaluations every ``eval_every``.

The seconds are the wall time of the whole stage: making the random features (a stand-in for reading
them from the cache; it makes all seven datasets' features, more than paper5 needs, so the figure is an
upper bound), set-up, training and evaluations. ``--measure A B`` instead runs A and then B epochs and
EXTRAPOLATES linearly in epochs to ``--epochs`` (per epoch = the difference / (B - A)): for a budget smaller
than the whole stage. Both short runs evaluate at their start and end, so the extrapolation leaves out the
evaluations in between (each reads the val rows, about 4% of one epoch's train rows).

    python benchmarks/portland_stage.py --device cuda                      # measured, 200 epochs
    python benchmarks/portland_stage.py --measure 1 3 --threads 2          # CPU: extrapolated to 200
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def default_epochs() -> tuple[int, int]:
    """(global_epochs, eval_every) of conf/merge/portland.yaml, read with PyYAML (no Hydra needed)."""
    import yaml

    merge = yaml.safe_load((C.REPO / "conf" / "merge" / "portland.yaml").read_text())
    return int(merge["global_epochs"]), int(merge["eval_every"])


def study_scale():
    spec = importlib.util.spec_from_file_location("bench_study_scale", Path(__file__).resolve().parent / "study_scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def build_parser() -> argparse.ArgumentParser:
    epochs, every = default_epochs()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=epochs, help="the stage's global epochs (default: the run's)")
    p.add_argument("--eval-every", type=int, default=every)
    p.add_argument("--measure", type=int, nargs=2, default=None, metavar=("A", "B"),
                   help="run A and B epochs and extrapolate to --epochs (default: run --epochs, measured)")
    p.add_argument("--dim", type=int, default=512, help="feature dimension (ViT-B/32: 512)")
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the real split sizes (tests only)")
    p.add_argument("--store-dtype", choices=("float32", "float16"), default="float32",
                   help="the run's feature_dtype (default float32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    measure = args.measure or [args.epochs]
    if min(measure) < 1 or (len(measure) == 2 and not measure[0] < measure[1] < args.epochs):
        raise SystemExit(f"--measure takes two increasing epoch counts below --epochs {args.epochs} (e.g. 1 5)")
    study = study_scale()
    shape = ["--dim", str(args.dim), "--views", str(args.views), "--scale", str(args.scale), "--ks", "5",
             "--limit", "1", "--paths", "batched", "--store-dtype", args.store_dtype, "--device", args.device,
             "--eval-every", str(args.eval_every), "--in-process"]
    if args.threads:
        shape += ["--threads", str(args.threads)]
    def timed(epochs: int) -> float:
        start = time.perf_counter()
        study.main([*shape, "--epochs", str(epochs), "--full-epochs", str(epochs)])
        return time.perf_counter() - start

    walls = [timed(e) for e in measure]  # the first run also pays what is done once (features made, imports)
    if len(measure) == 1:
        per_epoch = fixed = float("nan")
        seconds = walls[0]
    else:
        warm = timed(measure[0])  # A again, with what is done once already done: the line's origin
        if walls[1] <= warm:  # the per-epoch time is below the timing noise: no line to extrapolate along
            raise SystemExit(f"portland_stage: {measure[1]} epochs took {walls[1]:.1f} s, no longer than {measure[0]} "
                             f"({warm:.1f} s): measure with a larger B (--measure {measure[0]} {4 * measure[1]})")
        per_epoch = (walls[1] - warm) / (measure[1] - measure[0])
        fixed = walls[0] - per_epoch * measure[0]  # the cold run less its epochs
        seconds = fixed + per_epoch * args.epochs
    paper = study.paper7(args.scale, args.views, args.dim, 128, 1, args.eval_every, 0)
    rows = sum(paper.train_rows(d) for d in paper.names[:5])
    measured = len(measure) == 1
    label = "measured" if measured else f"EXTRAPOLATED from {measure[0]} and {measure[1]} epochs"
    print(f"portland_stage: paper5 ({', '.join(paper.names[:5])}; {rows:,} train rows incl. views), d={args.dim}, "
          f"{args.epochs} epochs: {seconds:.1f} s ({label}); runs: "
          + ", ".join(f"{e} epochs {w:.1f} s" for e, w in zip(measure, walls)))
    if not measured:
        print(f"  fixed (features made, set-up) {fixed:.1f} s, per epoch {per_epoch:.3f} s")
    return {"seconds": seconds, "epochs": args.epochs, "measured": measured, "measure": measure, "walls": walls,
            "fixed_s": fixed, "epoch_s": per_epoch, "rows": rows, "dim": args.dim, "views": args.views,
            "device": C.device_name(C.resolve_device(args.device))}


if __name__ == "__main__":
    main()
