"""Portland training: the one trainer on cached features vs a plain PyTorch loop on the same features,
and vs re-encoding every batch (the reference code).

(a) neulig: ``portland.training.fit`` (the one trainer, a LightningModule driven by a Lightning
    Trainer, one Lightning step per global epoch), set up as ``portland.runner.run`` sets it up, on one
    combination of all datasets (C = 1);
(c) a plain PyTorch loop on the same cached features: one ``Portland``, ``torch.optim.Adam``, the same
    seeded batch order, loss (``portland.loss.portland_loss``) and evaluation schedule, no Lightning;
(b) reference-style (docs/neural_ligand.md §7, §12): every training batch goes through all T frozen
    experts at every step (no_grad, eval mode), then Portland, L_b + L_a / scaling, one Adam step;
    validation features are re-encoded too at every evaluation;
(a*) and (c*): every k-combination of the datasets (``--k``, default 2) trained at once by the one
    trainer, against the plain loop run on each combination in turn.
All train on the clean train features only (``merge.views=0``: augmented views would be re-encoded
crops in (b); with views (a) would train on three times the rows of (b), which is what made this
benchmark report 43-53x and a 0.5-point accuracy difference before). All run the same global epochs
from the same initialisation with the same batch order, loss and evaluation schedule; the maths is the
same apart from float noise, so final validation accuracies must agree (within --tolerance points).

Inputs come from the pipeline's cached stages (backbone, datasets, heads, experts, features), with
the config composed by Hydra exactly as the CLI composes it (default: the embedded default, tiny
backbone and 4 tasks; missing stages are computed and cached first).

    python benchmarks/portland_training.py --epochs 5 --threads 1
    python benchmarks/portland_training.py --epochs 5 -o trainer=gpu      # any Hydra override

Targets: (a) >= 100x faster than (b) at the same epochs, |acc(a) - acc(b)| <= 0.1; the one trainer's
time per optimiser step within 1.5x the plain loop's, for one combination and for all of a k.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

TARGET = 100.0
STEP_TARGET = 1.5  # one trainer's time per step / the plain loop's


def compose(overrides: list[str], root: Path):
    """The CLI's typed config (Hydra compose API, as tests/conftest.py)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from neulig.config import load, register

    register()
    with initialize_config_dir(config_dir=str(C.REPO / "conf"), version_base="1.3"):
        return load(hydra_compose("config", overrides=[f"paths.root_dir={root}", "logger=none", "merge.views=0",
                                                       *overrides]))


def build_combo(config):
    """One combination of all datasets, through the recipe's own cached stages (``recipe.prepare``)."""
    from neulig.recipe import prepare

    products = prepare(config)
    return products.combination(tuple(products.names))


def statistic(combo, merge, config) -> torch.Tensor:
    """What the regulariser reads of the combination's experts (as the runner computes it)."""
    from neulig.portland.loss import regularizer
    from neulig.portland.runner import combo_inputs

    return regularizer(merge.regularizer).statistic(combo_inputs([combo], merge, config.seed)[0].stats).float()


def run_trainer(combos: list, config, epochs: int) -> dict:
    """(a) the one trainer on ``combos`` at once, set up as ``portland.runner.run_many`` does."""
    import dataclasses

    from neulig.portland.runner import combo_inputs, sources_of
    from neulig.portland.training import fit

    merge = dataclasses.replace(config.merge, global_epochs=epochs)
    start = time.perf_counter()
    inputs = combo_inputs(combos, merge, config.seed)
    clock = C.epoch_clock()
    fits = fit(inputs, sources_of(combos, "train"), sources_of(combos, "val"), merge, config.seed,
               config.ensemble.level, config.trainer, [clock])
    wall = time.perf_counter() - start
    steps = sum(steps_per_epoch(c, merge.batch_size) for c in combos) * epochs
    return {"wall_s": wall, "loop_s": sum(clock.times), "steps": steps, "fits": fits,
            "val_acc": [f.history[-1]["val/ensembled_avg"] for f in fits]}


def steps_per_epoch(combo, batch_size: int) -> int:
    rounds = min(math.ceil(len(combo.labels(d, "train")) / batch_size) for d in combo.names)
    return rounds * len(combo.names)


@torch.no_grad()
def validate(portland, val: list, heads: list, level: str) -> float:
    """Mean ensembled accuracy (%) at ``level`` over the datasets' cached validation features."""
    from neulig.evaluate import accuracy, ensemble_logits

    hits = [accuracy(ensemble_logits(z, h, portland(z), level).cpu(), y) for (z, y), h in zip(val, heads)]
    return sum(hits) / len(hits)


def run_plain(combos: list, config, epochs: int) -> dict:
    """(c) a plain PyTorch loop on the same cached features, one combination after another."""
    from neulig.portland.loss import portland_loss
    from neulig.portland.model import Portland, initial_state

    merge, seed, level = config.merge, config.seed, config.ensemble.level
    device, b = combos[0].device, merge.batch_size
    start, loop = time.perf_counter(), 0.0
    accs, steps = [], 0
    for combo in combos:
        names, stat = combo.names, statistic(combo, merge, config).to(device)
        train = [(combo.features[d].train.to(device), combo.labels(d, "train").to(device)) for d in names]
        val = [(combo.features[d].val.to(device), combo.labels(d, "val")) for d in names]
        heads = [combo.heads[d].to(device) for d in names]
        portland = Portland(len(names), train[0][0].shape[-1]).to(device)
        portland.load_state_dict(initial_state(len(names), train[0][0].shape[-1], seed))
        optimizer = torch.optim.Adam(portland.parameters(), lr=merge.lr)

        tick = time.perf_counter()
        history = [validate(portland, val, heads, level)]
        for epoch in range(epochs):
            generator = torch.Generator().manual_seed(seed * 100003 + epoch)
            orders = [torch.randperm(len(y), generator=generator) for _, y in train]
            rounds = min((len(o) + b - 1) // b for o in orders)
            epoch_sets = [(z[o[: rounds * b].to(device)], y[o[: rounds * b].to(device)]) for (z, y), o in zip(train, orders)]
            losses = []
            for r in range(rounds):
                for (z, y), head in zip(epoch_sets, heads):
                    zb, yb = z[r * b : (r + 1) * b], y[r * b : (r + 1) * b]
                    loss, _ = portland_loss(portland(zb), zb, yb, head, merge.loss, merge.scaling, merge.regularizer,
                                            stat)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.detach())
                    steps += 1
            if not bool(torch.isfinite(torch.stack(losses)).all()):
                raise RuntimeError("non-finite loss in the plain loop")
            if (epoch + 1) % merge.eval_every == 0 or epoch + 1 == epochs:
                history.append(validate(portland, val, heads, level))
        C.sync(device)
        loop += time.perf_counter() - tick
        accs.append(history[-1])
    return {"wall_s": time.perf_counter() - start, "loop_s": loop, "steps": steps, "val_acc": accs}


@torch.no_grad()
def encode_batch(experts: list[torch.nn.Module], images: torch.Tensor) -> torch.Tensor:
    """[B, T, d]: every frozen expert's raw features of the batch (the reference's per-step work)."""
    return torch.stack([e(images).float() for e in experts], 1)


def run_reference(combo, config, epochs: int) -> dict:
    """(b) the reference's loop: re-encode each batch through all T experts, then one Adam step."""
    from neulig.models.heads import head_logits
    from neulig.portland.loss import portland_loss
    from neulig.portland.model import Portland, ensemble_features, initial_state

    merge, seed, device = config.merge, config.seed, combo.device
    batch_size, eval_every = merge.batch_size, merge.eval_every
    start = time.perf_counter()
    stat = statistic(combo, merge, config).to(device)
    experts = []
    for state in combo.experts:
        encoder = copy.deepcopy(combo.visual).to(device).eval()
        encoder.load_state_dict(state)
        experts.append(encoder.requires_grad_(False))
    heads = {d: combo.heads[d].to(device) for d in combo.names}
    feature_dim = combo.features[combo.names[0]].train.shape[-1]
    portland = Portland(len(experts), feature_dim).to(device)
    portland.load_state_dict(initial_state(len(experts), feature_dim, seed))
    optimizer = torch.optim.Adam(portland.parameters(), lr=merge.lr)

    @torch.no_grad()
    def validate() -> float:
        accs = []
        for d in combo.names:
            split = combo.datasets[d].val
            correct = 0
            for s in range(0, len(split), 256):  # the batch the feature cache is computed with
                images, labels = split.batch(torch.arange(s, min(s + 256, len(split))))
                z = encode_batch(experts, images.to(device))
                pred = head_logits(ensemble_features(portland(z), z), heads[d]).argmax(-1)
                correct += int((pred.cpu() == labels).sum())
            accs.append(100.0 * correct / len(split))
        return sum(accs) / len(accs)

    history = [validate()]
    loop_start = time.perf_counter()
    for epoch in range(epochs):
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)  # the trainer's batch order
        orders = {d: torch.randperm(len(combo.labels(d, "train")), generator=generator) for d in combo.names}
        rounds = min((len(o) + batch_size - 1) // batch_size for o in orders.values())
        for r in range(rounds):
            for d in combo.names:
                index = orders[d][r * batch_size : (r + 1) * batch_size]
                images, labels = combo.datasets[d].train.batch(index)
                z = encode_batch(experts, images.to(device))
                loss, _ = portland_loss(portland(z), z, labels.to(device), heads[d], merge.loss, merge.scaling,
                                        merge.regularizer, stat)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            history.append(validate())
    C.sync(device)
    return {"wall_s": time.perf_counter() - start, "loop_s": time.perf_counter() - loop_start,
            "val_acc": history[-1], "history": history}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=5, help="global epochs, the same for all")
    p.add_argument("--k", type=int, default=2, help="(a*) / (c*): every k-combination of the datasets")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override of the composed config (repeatable), e.g. -o trainer=gpu")
    p.add_argument("--root", type=Path, default=C.REPO,
                   help="paths.root_dir: its outputs/cache holds (or receives) the cached stages")
    p.add_argument("--tolerance", type=float, default=0.1, help="allowed |acc(a) - acc(b)| in points")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--skip-reference", action="store_true", help="leave out (b), the slow re-encoding loop")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison, print its table and ratios; returns every figure (``rows`` as printed)."""
    from neulig.recipe import prepare

    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = compose(args.override, args.root.resolve())
    prep = time.perf_counter()
    products = prepare(config)
    combo = products.combination(tuple(products.names))
    many = [products.combination(g) for g in itertools.combinations(products.names, args.k)]
    prep = time.perf_counter() - prep
    T = len(combo.names)
    print(f"portland_training: model={config.model.name}, datasets={','.join(combo.names)} (T={T}), "
          f"epochs={args.epochs}, batch={config.merge.batch_size}, device={C.device_name(combo.device)}, "
          f"trainer={config.trainer.accelerator}; stages ready in {prep:.1f} s")
    results = {"(a) one trainer, C=1": run_trainer([combo], config, args.epochs),
               "(c) plain loop, C=1": run_plain([combo], config, args.epochs),
               f"(a*) one trainer, all {len(many)} of k={args.k}": run_trainer(many, config, args.epochs),
               f"(c*) plain loop, all {len(many)} of k={args.k}, in turn": run_plain(many, config, args.epochs)}
    if not args.skip_reference:
        results["(b) re-encode every batch, C=1"] = run_reference(combo, config, args.epochs)
    a, c, a_many, c_many = (results[k] for k in list(results)[:4])
    rows = []
    for name, r in results.items():
        steps = r["steps"] if "steps" in r else a["steps"]
        acc = r["val_acc"] if isinstance(r["val_acc"], float) else sum(r["val_acc"]) / len(r["val_acc"])
        rows.append([name, f"{r['wall_s']:.3f}", f"{r['loop_s']:.3f}", f"{r['loop_s'] / steps * 1e3:.3f}", f"{acc:.2f}"])
    print(C.table(["variant", "wall s", "loop s", "ms/step", "final val ens. acc %"], rows))
    print(f"{a['steps']} optimiser steps for C=1, {a_many['steps']} for the {len(many)} combinations; 'wall' includes "
          "set-up (Trainer, offset statistics, expert modules), 'loop' the epochs alone (evaluations included)")
    step_one = (a["loop_s"] / a["steps"]) / (c["loop_s"] / c["steps"])
    step_many = (a_many["loop_s"] / a_many["steps"]) / (c_many["loop_s"] / c_many["steps"])
    same = max(abs(x - y) for x, y in zip([a["val_acc"][0], *a_many["val_acc"]], [c["val_acc"][0], *c_many["val_acc"]]))
    print(f"RATIO step time one trainer / plain loop: C=1 {step_one:.2f}x "
          f"({C.verdict(step_one, STEP_TARGET, True)}); all of k={args.k}: {step_many:.2f}x "
          f"({C.verdict(step_many, STEP_TARGET, True)}); accuracies differ by at most {same:.3f} points")
    out = {"rows": rows, "step_ratio_one": step_one, "step_ratio_many": step_many, "acc_diff_plain": same,
           "steps": a["steps"], "cached": {k: v for k, v in a.items() if k != "fits"}}
    if not args.skip_reference:
        b = results["(b) re-encode every batch, C=1"]
        ratio_wall, ratio_loop = b["wall_s"] / a["wall_s"], b["loop_s"] / a["loop_s"]
        diff = abs(a["val_acc"][0] - b["val_acc"])
        print(f"RATIO speed (b)/(a) wall: {ratio_wall:.1f}x ({C.verdict(ratio_wall, TARGET, False)}); "
              f"loop: {ratio_loop:.1f}x")
        print(f"accuracy |(a) - (b)| = {diff:.3f} points ({'within' if diff <= args.tolerance else 'OUTSIDE'} "
              f"±{args.tolerance})")
        out.update(reference=b, ratio_wall=ratio_wall, ratio_loop=ratio_loop, acc_diff=diff)
    return out


if __name__ == "__main__":
    main()
