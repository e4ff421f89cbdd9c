"""The paper's study at scale (issue #14): Portland (arXiv 2503.01268) on every k-combination of the
seven paper datasets, k = 2..7 (120 combinations), one combination at a time against combinations
trained together.

Inputs are paper7-shaped and need no download: seven experts' random features with the real split
sizes and class counts of GTSRB, CIFAR100, RESISC45, CIFAR10, MNIST, STL10 and SVHN as neulig's
real-dataset protocol cuts them (neulig/data/real.py, docs/neural_ligand.md §9: val = 10% of the
official train split capped at 5,000, test = the official test split, RESISC45 18,900/6,300/6,300 from
its lists), with ``--views`` augmented views per train image (§10: train features x (1 + views)).
Features have class structure (a class direction, strong in the dataset's own expert, weak in the
others, plus unit noise) and the heads are those directions, so accuracies mean something. Only the
train (+ views) and val features are made: Portland's training and selection read nothing else.

(a) sequential, one at a time, each from its own stacked copy: each expert's float32 features held
    once (``RunFeatures``); per combination, its own stacked [N, T, d] copy (``RunFeatures.stacked``
    into a ``Combination``, ``portland.runner.sources_of`` of a combination without the run's stores)
    and the one trainer (``portland.training.fit``) on that combination alone;
(b) batched (``portland.runner.run_many``, what a run does): one ``FeatureStore`` per split holding
    each expert's features once (``--store-dtype``, the run's ``feature_dtype``); the one trainer
    trains all combinations of one k together.
An epoch's time includes its evaluation (evaluations run inside the trainer's step); one evaluation
is also timed alone after training.

Each path runs in a fresh process, so its peak resident memory (VmHWM) is its own. Times are measured
on the combinations run (``--limit`` per k) for ``--epochs`` global epochs; the 120-combination,
200-epoch figures are EXTRAPOLATED (set-up + epochs x per-epoch time + evaluations x per-evaluation
time, scaled to all combinations of each k by optimiser steps and validation rows).

    python benchmarks/study_scale.py --epochs 1 --limit 2 --scale 0.25 --threads 1   # a shared 2-core CPU
    python benchmarks/study_scale.py --epochs 1 --threads 1 --paths batched          # real sizes, all 120
    python benchmarks/study_scale.py --dim 768 --device cuda --epochs 5

Issue target: peak resident memory of the study <= 1.3x the bytes of the features it needs once.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

TARGET = 1.3
OFFICIAL = {"gtsrb": (26640, 12630), "cifar100": (50000, 10000), "cifar10": (50000, 10000), "mnist": (60000, 10000),
            "stl10": (5000, 8000), "svhn": (73257, 26032)}  # official train / test images
RESISC45 = (18900, 6300, 6300)  # train / val / test of the torchgeo lists
OWN, OTHER = 4.0, 1.0  # class signal in a dataset's own expert / in the other experts (unit noise)
CHUNK = 16384  # rows generated per seeded chunk
FLAT = 4096  # size of the random flat "checkpoints" behind the offset statistics


@dataclass(frozen=True)
class Study:
    """The study's shape: datasets (= experts) with their split sizes and classes, and the options."""

    names: tuple[str, ...]
    sizes: dict  # name -> (train, val, test) images
    classes: dict  # name -> number of classes
    views: int
    dim: int
    batch_size: int
    epochs: int
    eval_every: int
    seed: int

    def train_rows(self, name: str) -> int:
        return self.sizes[name][0] * (1 + self.views)

    def rows(self, name: str, split: str) -> int:
        return self.train_rows(name) if split == "train" else self.sizes[name][1]

    def needed_bytes(self, itemsize: int) -> int:
        """Every expert's train (+ views) and val features on every dataset, once."""
        return len(self.names) * sum(self.rows(d, "train") + self.rows(d, "val") for d in self.names) * self.dim * itemsize

    def steps(self, group: tuple[str, ...]) -> int:
        """Optimiser steps per global epoch: rounds x k."""
        return min(math.ceil(self.train_rows(d) / self.batch_size) for d in group) * len(group)


def paper7(scale: float, views: int, dim: int, batch_size: int, epochs: int, eval_every: int, seed: int) -> Study:
    from neulig.data.real import PAPER7, REAL_SPECS, val_count

    sizes = {}
    for name in PAPER7:
        if name == "resisc45":
            split = RESISC45
        else:
            train, test = OFFICIAL[name]
            split = (train - val_count(train), val_count(train), test)
        sizes[name] = tuple(max(1, round(n * scale)) for n in split)
    return Study(PAPER7, sizes, {n: REAL_SPECS[n].num_classes for n in PAPER7}, views, dim, batch_size, epochs,
                 eval_every, seed)


def selected(study: Study, k: int, limit: int) -> list[tuple[str, ...]]:
    """The k-combinations run: all, or ``limit`` of them evenly spaced in ``itertools.combinations`` order."""
    groups = list(itertools.combinations(study.names, k))
    return groups if not limit or limit >= len(groups) else [groups[i * len(groups) // limit] for i in range(limit)]


# ---- the features --------------------------------------------------------------------------------


def directions(study: Study, name: str) -> torch.Tensor:
    """Unit class directions [K, d] of a dataset (its head is them times CLIP's logit scale 100)."""
    g = torch.Generator().manual_seed(study.seed * 1000 + study.names.index(name))
    return torch.nn.functional.normalize(torch.randn(study.classes[name], study.dim, generator=g), dim=-1)


def labels(study: Study, name: str, split: str) -> torch.Tensor:
    """Labels of a split's rows (train: the images' labels repeated for every view)."""
    g = torch.Generator().manual_seed(study.seed * 1000 + 100 + study.names.index(name) * 2 + (split == "val"))
    images = study.sizes[name][0 if split == "train" else 1]
    y = torch.randint(0, study.classes[name], (images,), generator=g)
    return y.repeat(1 + study.views) if split == "train" else y


def blocks(study: Study, expert: str, name: str, split: str, y: torch.Tensor, u: torch.Tensor):
    """(first row, float32 features) of expert ``expert`` on a split of ``name``, in seeded chunks."""
    strength = OWN if expert == name else OTHER
    for start in range(0, len(y), CHUNK):
        pair = study.names.index(expert) * len(study.names) + study.names.index(name)
        g = torch.Generator().manual_seed(((study.seed * 64 + pair) * 2 + (split == "val")) * 100003 + start // CHUNK)
        stop = min(start + CHUNK, len(y))
        yield start, u[y[start:stop]] * strength + torch.randn(stop - start, study.dim, generator=g)


def offsets(study: Study) -> dict[str, torch.Tensor]:
    """A random flat 'checkpoint' per expert, for the offset statistics L_a reads."""
    return {e: torch.randn(FLAT, generator=torch.Generator().manual_seed(study.seed + 7 + i))
            for i, e in enumerate(study.names)}


def portland_method(study: Study):
    """``conf/merge/portland.yaml`` as the typed ``PortlandMerge``, with the study's epochs and batch size."""
    from omegaconf import OmegaConf

    from neulig.config.merge import PortlandMerge

    yaml = OmegaConf.load(C.REPO / "conf" / "merge" / "portland.yaml")
    del yaml["defaults"]
    merged = OmegaConf.merge(OmegaConf.structured(PortlandMerge), yaml,
                             {"global_epochs": study.epochs, "eval_every": study.eval_every,
                              "batch_size": study.batch_size, "views": study.views})
    return OmegaConf.to_object(merged)


@dataclass(frozen=True)
class _Labels:
    """A split reduced to its labels: all that Portland's training reads of it."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


# ---- the two paths (each in its own process) -----------------------------------------------------


def rss(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes (from /proc/self/status; 0 where absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5), for in-process runs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_sequential(study: Study, groups: list[tuple[str, ...]], device: torch.device) -> dict:
    """(a) one combination at a time; returns timings and the results per combination."""
    from neulig.config.trainer import TrainerConfig
    from neulig.data.base import DatasetSpec, LoadedDataset
    from neulig.methods.combination import Combination
    from neulig.portland.runner import combo_inputs, sources_of
    from neulig.portland.training import ensembled_accuracy, fit
    from neulig.stages.features import RunFeatures

    baseline, tick = rss("VmRSS"), time.perf_counter()
    y = {d: {s: labels(study, d, s) for s in ("train", "val")} for d in study.names}
    u = {d: directions(study, d) for d in study.names}
    sizes = {d: {"train": study.sizes[d][0], "val": study.rows(d, "val"), "test": 0} for d in study.names}
    features = RunFeatures(study.names, sizes, study.views, study.dim, torch.float32)
    for d in study.names:
        features.put_labels(d, {"train": y[d]["train"][: study.sizes[d][0]], "val": y[d]["val"],
                                "test": torch.empty(0, dtype=torch.long)})
    for e in study.names:
        for d in study.names:
            parts = {}
            for split in ("train", "val"):
                out = torch.empty(study.rows(d, split), study.dim)
                for start, block in blocks(study, e, d, split, y[d][split], u[d]):
                    out[start : start + len(block)] = block
                parts[split] = out
            n = study.sizes[d][0]
            views = parts["train"][n:] if study.views else None
            features.put(e, d, {"train": parts["train"][:n], "val": parts["val"], "test": torch.empty(0, study.dim)},
                         views)
    made = time.perf_counter() - tick
    thetas, method = offsets(study), portland_method(study)
    trainer = TrainerConfig(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1)
    runs = []
    for group in groups:
        tick = time.perf_counter()
        datasets = {d: LoadedDataset(DatasetSpec(d, tuple(map(str, range(study.classes[d]))), ("{}",)),
                                     _Labels(y[d]["train"][: study.sizes[d][0]]), _Labels(y[d]["val"]),
                                     _Labels(torch.empty(0, dtype=torch.long))) for d in group}
        combination = Combination(list(group), datasets, {d: u[d] * 100.0 for d in group}, {},
                                  [{"theta": thetas[e]} for e in group],
                                  {d: features.stacked(list(group), d) for d in group}, torch.nn.Identity(), device)
        inputs = combo_inputs([combination], method, study.seed)
        train, val = sources_of([combination], "train"), sources_of([combination], "val")  # the stacked copies
        stack_s, tick = time.perf_counter() - tick, time.perf_counter()
        clock = C.epoch_clock()
        [result] = fit(inputs, train, val, method, study.seed, "features", trainer, [clock])
        fit_s, tick = time.perf_counter() - tick, time.perf_counter()
        ensembled_accuracy(inputs, [result.state], val, "features", device)  # one evaluation, timed
        C.sync(device)
        runs.append({"group": group, "stack_s": stack_s, "fit_s": fit_s, "epoch_s": clock.times,
                     "eval_s": time.perf_counter() - tick, "state": result.state, "best_epoch": result.best_epoch,
                     "history": list(result.history)})
        del combination, train, val
        gc.collect()  # the Trainer and the module reference each other: free this combination's copies now
    return {"path": "sequential", "dtype": "float32", "made_s": made, "baseline": baseline, "peak": rss("VmHWM"),
            "needed": study.needed_bytes(4), "runs": runs}


def run_batched(study: Study, groups: list[tuple[str, ...]], device: torch.device, dtype: torch.dtype,
                save: Path | None) -> dict:
    """(b) one feature store, every k trained together; returns timings and the results."""
    from neulig.config.trainer import TrainerConfig
    from neulig.portland.features import FeatureStore
    from neulig.portland.statistics import offset_moments
    from neulig.portland.training import ComboInputs, ensembled_accuracy, fit

    baseline, tick = rss("VmRSS"), time.perf_counter()
    stores = {}
    for split in ("train", "val"):
        store = FeatureStore(study.names, {d: study.rows(d, split) for d in study.names}, study.dim, dtype, device)
        for d in study.names:
            y, u = labels(study, d, split), directions(study, d)
            for e in study.names:
                for start, block in blocks(study, e, d, split, y, u):
                    store.put(e, d, block, y if start == 0 else None, start=start)
        stores[split] = store
    made = time.perf_counter() - tick
    thetas, method = offsets(study), portland_method(study)
    trainer = TrainerConfig(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1)
    fits = []
    for k in sorted({len(g) for g in groups}):
        part = [g for g in groups if len(g) == k]
        tick = time.perf_counter()
        moments = offset_moments({e: {"theta": thetas[e]} for e in study.names}, method.offsets_over)
        combos = [ComboInputs(g, tuple(directions(study, d) * 100.0 for d in g), moments.of(g)) for g in part]
        clock = C.epoch_clock()
        val = stores["val"].sources(part, part)
        results = fit(combos, stores["train"].sources(part, part), val, method, study.seed, "features", trainer, [clock])
        wall, tick = time.perf_counter() - tick, time.perf_counter()  # set-up = statistics, parameters, schedule
        ensembled_accuracy(combos, [r.state for r in results], val, "features", device)  # one evaluation, timed
        C.sync(device)
        eval_s = time.perf_counter() - tick
        fits.append({"k": k, "groups": part, "setup_s": wall - sum(clock.times), "epoch_s": clock.times,
                     "eval_s": [eval_s], "results": [{"state": r.state, "best_epoch": r.best_epoch,
                                                      "history": list(r.history)} for r in results]})
    peak, device_peak = rss("VmHWM"), torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    disk = save_store(stores, study, save) if save else None
    return {"path": "batched", "dtype": str(dtype).replace("torch.", ""), "made_s": made, "baseline": baseline,
            "peak": peak, "device_peak": device_peak, "needed": study.needed_bytes(torch.empty(0, dtype=dtype).element_size()),
            "fits": fits, "disk": disk}


def save_store(stores: dict, study: Study, folder: Path) -> dict:
    """Write the features as the cache would (one safetensors file per expert and dataset: train, views,
    val) and return their total size (bytes) and count."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    total, files = 0, 0
    for e in study.names:
        for d in study.names:
            n = study.sizes[d][0]
            train = stores["train"].rows(e, d)
            tensors = {"train": train[:n], "val": stores["val"].rows(e, d)}
            if study.views:
                tensors["views"] = train[n:]
            path = folder / f"{e}__{d}.safetensors"
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(path))
            total, files = total + path.stat().st_size, files + 1
    return {"bytes": total, "files": files}


# ---- the report ----------------------------------------------------------------------------------


def evaluations(epochs: int, every: int) -> int:
    """Validations of a run: epoch 0, every ``every`` epochs and the last."""
    return 1 + len({e for e in range(1, epochs + 1) if e % every == 0 or e == epochs})


def sequential_times(study: Study, runs: list[dict], epochs: int) -> dict[int, dict]:
    """Per k: measured seconds and the estimate for all its combinations at ``epochs`` epochs."""
    out = {}
    for k in sorted({len(r["group"]) for r in runs}):
        mine = [r for r in runs if len(r["group"]) == k]
        every = list(itertools.combinations(study.names, k))
        n_eval = evaluations(study.epochs, study.eval_every)
        fixed = sum(r["stack_s"] + r["fit_s"] - sum(r["epoch_s"]) - r["eval_s"] for r in mine)
        train = sum((sum(r["epoch_s"]) - (n_eval - 1) * r["eval_s"]) / study.epochs for r in mine)
        evals = sum(r["eval_s"] for r in mine)
        out[k] = {"measured": sum(r["stack_s"] + r["fit_s"] for r in mine),
                  "estimate": estimate(study, [r["group"] for r in mine], every, fixed, train, evals, epochs)}
    return out


def batched_times(study: Study, fits: list[dict], epochs: int) -> dict[int, dict]:
    out = {}
    for fit in fits:
        every = list(itertools.combinations(study.names, fit["k"]))
        train = sum(fit["epoch_s"]) / len(fit["epoch_s"])
        evals = sum(fit["eval_s"]) / len(fit["eval_s"])
        out[fit["k"]] = {"measured": fit["setup_s"] + sum(fit["epoch_s"]) + sum(fit["eval_s"]),
                         "estimate": estimate(study, fit["groups"], every, fit["setup_s"], train, evals, epochs)}
    return out


def estimate(study: Study, mine: list, every: list, fixed: float, train: float, evals: float, epochs: int) -> float:
    """Seconds for all of ``every`` at ``epochs`` epochs, from the measured ``mine``: set-up scaled by the
    number of combinations, training by optimiser steps, evaluations by validation rows x k."""
    steps = sum(study.steps(g) for g in every) / sum(study.steps(g) for g in mine)
    val = sum(sum(study.rows(d, "val") for d in g) * len(g) for g in every) / \
        sum(sum(study.rows(d, "val") for d in g) * len(g) for g in mine)
    return fixed * len(every) / len(mine) + train * epochs * steps + evals * evaluations(epochs, study.eval_every) * val


def agreement(seq: dict, bat: dict) -> tuple[int, int, float, float]:
    """(same best epoch, compared, max |best state difference|, max |validation accuracy difference|)."""
    mine = {tuple(g): r for f in bat["fits"] for g, r in zip(f["groups"], f["results"])}
    same, count, state, acc = 0, 0, 0.0, 0.0
    for run in seq["runs"]:
        other = mine.get(tuple(run["group"]))
        if other is None:
            continue
        count += 1
        same += run["best_epoch"] == other["best_epoch"]
        state = max(state, *((run["state"][k].cpu() - other["state"][k]).abs().max().item() for k in run["state"]))
        acc = max(acc, *(abs(a["val/ensembled_avg"] - b["val/ensembled_avg"])
                         for a, b in zip(run["history"], other["history"])))
    return same, count, state, acc


def gb(n: float) -> str:
    """Bytes in GB (decimal), or MB below 0.1 GB."""
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def report(study: Study, args, results: dict, groups: list, isolated: bool) -> dict:
    total = sum(math.comb(len(study.names), k) for k in range(2, len(study.names) + 1))
    device = C.resolve_device(args.device)
    print(f"study_scale: paper7-shaped random features, d={study.dim}, views={study.views}, scale={args.scale}, "
          f"epochs={study.epochs} (paper study: {args.full_epochs}), eval_every={study.eval_every}, "
          f"batch={study.batch_size}; device={C.device_name(device)}; combinations run: {len(groups)} of {total}"
          + (f" (--limit {args.limit} per k)" if args.limit else ""))
    print("datasets (train x (1 + views) / val rows; test not made; classes): " + ", ".join(
        f"{d} {study.train_rows(d):,}/{study.rows(d, 'val'):,}/({study.sizes[d][2]:,}) K={study.classes[d]}"
        for d in study.names))
    print(f"features needed once ({len(study.names)} experts x {len(study.names)} datasets, train + views and val): "
          f"{gb(study.needed_bytes(2))} as float16, {gb(study.needed_bytes(4))} as float32; the test split would add "
          f"{gb(len(study.names) * sum(s[2] for s in study.sizes.values()) * study.dim * 4)}"
          " as float32")
    bat, seq = results.get("batched"), results.get("sequential")
    if bat and bat["disk"]:
        print(f"on disk as safetensors ({bat['disk']['files']} files, {bat['dtype']}): {gb(bat['disk']['bytes'])}")
    rows, out = [], {"total_combinations": total}
    for res in (seq, bat):
        if res:
            ratio, extra = res["peak"] / res["needed"], (res["peak"] - res["baseline"]) / res["needed"]
            rows.append([res["path"], res["dtype"], f"{res['made_s']:.1f}", gb(res["needed"]), gb(res["peak"]),
                         gb(res["baseline"]), f"{ratio:.2f}x", f"{extra:.2f}x"])
            out[res["path"]] = {"peak_ratio": ratio, "peak": res["peak"], "needed": res["needed"]}
    print(C.table(["path", "features", "made s", "needed once", "peak RSS", "RSS after imports", "peak/needed",
                   "(peak-imports)/needed"], rows))
    if bat and bat["device_peak"]:
        print(f"batched: peak CUDA memory allocated {gb(bat['device_peak'])} (the store lives on the device)")
    if not isolated:
        print("(--in-process: both paths in one process; peaks after a VmHWM reset, not isolated)")
    times = {"sequential": sequential_times(study, seq["runs"], args.full_epochs) if seq else {},
             "batched": batched_times(study, bat["fits"], args.full_epochs) if bat else {}}
    ks = sorted({len(g) for g in groups})
    table = []
    for k in ks:
        run = [g for g in groups if len(g) == k]
        s, b = times["sequential"].get(k), times["batched"].get(k)
        table.append([k, f"{len(run)}/{math.comb(len(study.names), k)}", sum(study.steps(g) for g in run),
                      f"{s['measured']:.2f}" if s else "-", f"{b['measured']:.2f}" if b else "-",
                      f"{s['measured'] / b['measured']:.2f}x" if s and b else "-",
                      f"{s['estimate'] / 3600:.2f}" if s else "-", f"{b['estimate'] / 3600:.2f}" if b else "-"])
    print(C.table(["k", "combinations", "steps/epoch", "sequential s", "batched s", "seq/batched",
                   f"est. seq h ({args.full_epochs} ep, all)", f"est. batched h ({args.full_epochs} ep, all)"], table))
    print(f"measured: the combinations run, {study.epochs} epoch(s) each, with set-up and evaluations; est.: "
          f"EXTRAPOLATED to every combination of each k and {args.full_epochs} epochs (not measured)")
    for res in (bat, seq):
        if res:
            ratio = out[res["path"]]["peak_ratio"]
            print(f"RATIO memory peak/needed {res['path']}: {ratio:.2f}x ({C.verdict(ratio, TARGET, True)}; "
                  f"{res['dtype']} features)")
    if seq and bat:
        measured = [sum(t["measured"] for t in times[p].values()) for p in ("sequential", "batched")]
        estimated = [sum(t["estimate"] for t in times[p].values()) for p in ("sequential", "batched")]
        out.update(speed_measured=measured[0] / measured[1], speed_estimated=estimated[0] / estimated[1],
                   estimated_h=[e / 3600 for e in estimated])
        print(f"RATIO speed sequential/batched measured ({len(groups)} combinations, {study.epochs} epoch(s)): "
              f"{out['speed_measured']:.2f}x ({measured[0]:.1f} s vs {measured[1]:.1f} s)")
        print(f"RATIO speed sequential/batched estimated ({total} combinations, {args.full_epochs} epochs, "
              f"extrapolated): {out['speed_estimated']:.2f}x ({estimated[0] / 3600:.2f} h vs {estimated[1] / 3600:.2f} h)")
        same, count, state, acc = agreement(seq, bat)
        out.update(same_best_epoch=same, compared=count, max_state_diff=state, max_acc_diff=acc)
        print(f"agreement: same best epoch {same}/{count}, max |best state difference| {state:.2e}, max |val accuracy "
              f"difference| {acc:.3f} points" + ("" if bat["dtype"] == "float32" else
                                                 f" (batched reads {bat['dtype']} features: not bit-comparable)"))
    return out


# ---- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512, help="feature dimension d (ViT-B/32: 512, ViT-L/14: 768)")
    p.add_argument("--epochs", type=int, default=1, help="global epochs run (the estimates extrapolate to --full-epochs)")
    p.add_argument("--full-epochs", type=int, default=200, help="the study's global epochs (conf/merge/portland.yaml)")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--views", type=int, default=2, help="augmented views per train image (merge.views)")
    p.add_argument("--limit", type=int, default=0, help="combinations run per k (0: all 120)")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7], help="the k run")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the real split sizes (1: the real sizes)")
    p.add_argument("--store-dtype", choices=("float16", "float32"), default="float16", help="the batched store's dtype")
    p.add_argument("--paths", nargs="+", choices=("sequential", "batched"), default=["sequential", "batched"])
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path, default=None, help="also write the store as safetensors files here (batched)")
    p.add_argument("--in-process", action="store_true", help="run both paths in this process (peaks not isolated)")
    p.add_argument("--worker", choices=("sequential", "batched"), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p


def work(path: str, args, study: Study, groups: list) -> dict:
    device = C.resolve_device(args.device)
    if path == "sequential":
        return run_sequential(study, groups, device)
    return run_batched(study, groups, device, getattr(torch, args.store_dtype), args.save)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    study = paper7(args.scale, args.views, args.dim, args.batch_size, args.epochs, args.eval_every, args.seed)
    groups = [g for k in args.ks for g in selected(study, k, args.limit)]
    if args.worker:
        torch.save(work(args.worker, args, study, groups), args.result)
        return {}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.paths:
            if args.in_process:
                reset_peak()
                results[path] = work(path, args, study, groups)
                continue
            result = Path(tmp) / f"{path}.pt"
            subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--worker", path,
                            "--result", str(result)], check=True)
            results[path] = torch.load(result, weights_only=False)
    out = report(study, args, results, groups, isolated=not args.in_process)
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}))
    return out


if __name__ == "__main__":
    main()
