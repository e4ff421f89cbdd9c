"""Portland training: neulig's cached expert features vs re-encoding every batch (the reference code).

(a) neulig: ``PortlandModule`` fitted by a Lightning Trainer on the cached, frozen expert features,
    exactly as ``methods.portland.run`` sets it up (one Lightning step = one global epoch).
(b) reference-style (docs/neural_ligand.md §7, §12): every training batch goes through all T frozen
    experts at every step (no_grad, eval mode), then Portland, L_b + L_a / scaling, one Adam step;
    validation features are re-encoded too at every evaluation.
Both train on the clean train features only (as ``merge.views=0``; the augmented views that
``methods.portland.run`` adds by default would be re-encoded crops here, the same data either way).
Both run the same number of global epochs from the same Portland initialisation, with the same
seeded batch order (the module's ``randperm`` per epoch), the same loss and the same evaluation
schedule; the math is identical apart from float noise, so their final validation ensembled
accuracies must agree (within --tolerance points).

Inputs come from the pipeline's cached stages (backbone, datasets, heads, experts, features), with
the config composed by Hydra exactly as the CLI composes it (default: the embedded default, tiny
backbone and 4 tasks; missing stages are computed and cached first).

    python benchmarks/portland_training.py --epochs 5
    python benchmarks/portland_training.py --epochs 5 -o trainer=gpu      # any Hydra override

Issue target: (a) >= 100x faster than (b) at the same number of epochs.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

TARGET = 100.0


def compose(overrides: list[str], root: Path):
    """The CLI's typed config (Hydra compose API, as tests/conftest.py)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from neulig.config import load, register

    register()
    with initialize_config_dir(config_dir=str(C.REPO / "conf"), version_base="1.3"):
        return load(hydra_compose("config", overrides=[f"paths.root_dir={root}", "logger=none", *overrides]))


def build_combo(config):
    """One combination of all datasets, through the recipe's own cached stages (``recipe.prepare``)."""
    from neulig.recipe import prepare

    products = prepare(config)
    return products.combination(tuple(products.names))


def offsets(combo, merge):
    from neulig.merging.portland import offset_statistics
    from neulig.methods.portland import flatten_for_offsets

    return offset_statistics(flatten_for_offsets(combo.experts, merge.offsets_over))


def run_cached(combo, config, epochs: int) -> dict:
    """(a) neulig: PortlandModule + Lightning Trainer, set up as ``methods.portland.run`` does."""
    import lightning as L

    from neulig.lit.trainer import trainer_kwargs
    from neulig.methods.portland import build_module

    merge, seed = config.merge, config.seed
    start = time.perf_counter()
    L.seed_everything(seed, verbose=False)
    module = build_module(combo, merge, seed)
    init = copy.deepcopy(module.portland.state_dict())
    kwargs = trainer_kwargs(config.trainer)
    kwargs.update(max_epochs=epochs, use_distributed_sampler=False, num_sanity_val_steps=0, enable_progress_bar=False)
    clock = C.epoch_clock()
    trainer = L.Trainer(callbacks=[clock], **kwargs)
    trainer.fit(module)
    wall = time.perf_counter() - start
    rounds = min(math.ceil(len(combo.labels(d, "train")) / merge.batch_size) for d in combo.names)
    steps = rounds * len(combo.names)  # optimiser steps per global epoch
    return {"wall_s": wall, "loop_s": sum(clock.times), "epoch_s": clock.times, "init": init,
            "val_acc": module.history[-1]["val/ensembled_avg"], "history": module.history, "steps_per_epoch": steps}


@torch.no_grad()
def encode_batch(experts: list[torch.nn.Module], images: torch.Tensor) -> torch.Tensor:
    """[B, T, d]: every frozen expert's raw features of the batch (the reference's per-step work)."""
    return torch.stack([e(images).float() for e in experts], 1)


def run_reference(combo, config, epochs: int, init: dict) -> dict:
    """(b) the reference's loop: re-encode each batch through all T experts, then one Adam step."""
    from neulig.merging.portland import Portland, ensemble_features, portland_loss, regularizer_statistic
    from neulig.models.heads import head_logits

    merge, seed, device = config.merge, config.seed, combo.device
    batch_size, eval_every = merge.batch_size, merge.eval_every
    start = time.perf_counter()
    statistic = regularizer_statistic(merge.regularizer, *offsets(combo, merge)).to(device)
    experts = []
    for state in combo.experts:
        encoder = copy.deepcopy(combo.visual).to(device).eval()
        encoder.load_state_dict(state)
        experts.append(encoder.requires_grad_(False))
    heads = {d: combo.heads[d].to(device) for d in combo.names}
    feature_dim = combo.features[combo.names[0]].train.shape[-1]
    portland = Portland(len(experts), feature_dim).to(device)
    portland.load_state_dict(init)
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
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)  # PortlandModule's batch order
        orders = {d: torch.randperm(len(combo.labels(d, "train")), generator=generator) for d in combo.names}
        rounds = min((len(o) + batch_size - 1) // batch_size for o in orders.values())
        for r in range(rounds):
            for d in combo.names:
                index = orders[d][r * batch_size : (r + 1) * batch_size]
                images, labels = combo.datasets[d].train.batch(index)
                z = encode_batch(experts, images.to(device))
                loss, _ = portland_loss(portland, z, labels.to(device), heads[d], merge.loss, merge.scaling,
                                        merge.regularizer, statistic)
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
    p.add_argument("--epochs", type=int, default=5, help="global epochs, the same for both")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override of the composed config (repeatable), e.g. -o trainer=gpu")
    p.add_argument("--root", type=Path, default=C.REPO,
                   help="paths.root_dir: its outputs/cache holds (or receives) the cached stages")
    p.add_argument("--tolerance", type=float, default=0.5, help="allowed |acc(a) - acc(b)| in points")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = compose(args.override, args.root.resolve())
    prep = time.perf_counter()
    combo = build_combo(config)
    prep = time.perf_counter() - prep
    T = len(combo.names)
    print(f"portland_training: model={config.model.name}, datasets={','.join(combo.names)} (T={T}), "
          f"epochs={args.epochs}, batch={config.merge.batch_size}, device={C.device_name(combo.device)}, "
          f"trainer={config.trainer.accelerator}; stages ready in {prep:.1f} s")
    a = run_cached(combo, config, args.epochs)
    b = run_reference(combo, config, args.epochs, a["init"])
    steps = a["steps_per_epoch"] * args.epochs
    ratio_wall, ratio_loop = b["wall_s"] / a["wall_s"], b["loop_s"] / a["loop_s"]
    diff = abs(a["val_acc"] - b["val_acc"])
    rows = [["(a) neulig cached features", f"{a['wall_s']:.3f}", f"{a['loop_s']:.3f}",
             f"{a['loop_s'] / steps * 1e3:.3f}", f"{a['val_acc']:.2f}"],
            ["(b) re-encode every batch", f"{b['wall_s']:.3f}", f"{b['loop_s']:.3f}",
             f"{b['loop_s'] / steps * 1e3:.3f}", f"{b['val_acc']:.2f}"]]
    print(C.table(["variant", "wall s", "loop s", "ms/step", "final val ens. acc %"], rows))
    print(f"{steps} optimiser steps each ({a['steps_per_epoch']} per epoch); 'wall' includes set-up "
          f"(Trainer, expert modules), 'loop' is the epochs alone (evaluations included)")
    print(f"RATIO speed (b)/(a) wall: {ratio_wall:.1f}x ({C.verdict(ratio_wall, TARGET, False)}); "
          f"loop: {ratio_loop:.1f}x")
    print(f"accuracy |(a) - (b)| = {diff:.3f} points ({'within' if diff <= args.tolerance else 'OUTSIDE'} "
          f"±{args.tolerance})")
    return {"cached": {k: v for k, v in a.items() if k != "init"}, "reference": b, "ratio_wall": ratio_wall,
            "ratio_loop": ratio_loop, "acc_diff": diff, "steps": steps}


if __name__ == "__main__":
    main()
