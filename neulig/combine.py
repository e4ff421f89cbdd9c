"""The combination stage: static merges, the plain ensemble, and Portland (trained).

Each function returns per-dataset accuracies (percent) keyed like the metric contract
(``merged``, ``ensembled``, and for Portland ``merged_batch``, ``merged_task``, ``merged_global``),
plus diagnostics. Inputs are plain values: no DictConfig reaches this module.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from neulig.data.base import LoadedDataset
from neulig.errors import NeuligError
from neulig.evaluate import accuracy, ensemble_logits, feature_accuracy, merged_features
from neulig.merging.flat import FlatStack
from neulig.merging.state_dict import StateDict
from neulig.models.heads import head_logits


@dataclass
class Combo:
    """Everything one combination of T datasets/experts needs, already cached and loaded."""

    names: list[str]
    datasets: dict[str, LoadedDataset]
    heads: dict[str, Tensor]
    base: StateDict
    experts: list[StateDict]
    # features[d][split] = [N, T, d_feat]: every expert's features on dataset d
    features: dict[str, dict[str, Tensor]]
    visual: nn.Module
    device: torch.device
    eval_batch_size: int = 256
    extra: dict = field(default_factory=dict)

    def labels(self, name: str, split: str) -> Tensor:
        return getattr(self.datasets[name], split).labels


def resolve(path: str):
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def run_ensemble(combo: Combo, coeffs: Tensor, level: str) -> dict[str, float]:
    return {d: accuracy(ensemble_logits(combo.features[d]["test"], combo.heads[d], coeffs, level), combo.labels(d, "test"))
            for d in combo.names}


def statistics(combo: Combo, merge_cfg: dict, seed: int) -> dict:
    """Per-expert statistics a data-dependent static method needs (``needs:`` in its yaml), each
    estimated from the expert on its own train split; passed to ``merge`` as keyword arguments."""
    import copy

    from neulig.stages import loader

    needs = merge_cfg.get("needs")
    if not needs:
        return {}
    stats_cfg = dict(merge_cfg.get("statistics") or {})
    batch_size = int(stats_cfg.pop("batch_size", 32))
    encoder = copy.deepcopy(combo.visual).to(combo.device).eval()
    out = []
    for name, state in zip(combo.names, combo.experts):
        encoder.load_state_dict(state)
        batches = ((x.to(combo.device), y.to(combo.device))
                   for x, y in loader(combo.datasets[name].train, batch_size, shuffle=True, seed=seed))
        if needs == "fisher":
            from neulig.merging.fisher import estimate_fisher

            head = combo.heads[name].to(combo.device)
            fisher = estimate_fisher(encoder, lambda m, x, h=head: head_logits(m(x), h), batches, seed=seed, **stats_cfg)
            out.append({k: v.cpu() for k, v in fisher.items()})
        elif needs == "grams":
            from neulig.merging.regmean import collect_grams

            out.append({k: v.cpu() for k, v in collect_grams(encoder, batches, **stats_cfg).items()})
        else:
            raise NeuligError(f"merge={merge_cfg['name']} needs {needs!r}, which neulig cannot estimate; use fisher or grams")
    return {"fishers" if needs == "fisher" else "grams": out}


def split_accuracy(combo: Combo, state: StateDict, split: str, names: list[str] | None = None) -> dict[str, float]:
    """Accuracy of one merged encoder on ``split`` of each dataset (default: all), with its head."""
    return {d: feature_accuracy(merged_features(combo.visual, state, getattr(combo.datasets[d], split),
                                                combo.eval_batch_size, combo.device), combo.labels(d, split), combo.heads[d])
            for d in (names or combo.names)}


def run_static(combo: Combo, merge_cfg: dict, level: str, seed: int = 0) -> tuple[dict[str, dict[str, float]], StateDict]:
    """Merge with the configured pure function, evaluate it and its ensemble counterpart.

    ``grid: {hparam: [values]}`` in the method's config picks the value with the best mean
    *validation* accuracy of the merged model (the test split is never used for selection)."""
    fn = resolve(merge_cfg["fn"])
    hparams = dict(merge_cfg.get("hparams") or {})
    stats = statistics(combo, merge_cfg, seed)
    grid = dict(merge_cfg.get("grid") or {})
    if len(grid) > 1:
        raise NeuligError(f"merge.grid searches one hyperparameter, got {sorted(grid)}; use hparams_search for more")
    chosen = {}
    for name, values in grid.items():
        scores = {}
        for value in values:
            val_acc = split_accuracy(combo, fn(combo.base, combo.experts, **{**hparams, name: value}, **stats), "val")
            scores[value] = sum(val_acc.values()) / len(val_acc)
        hparams[name] = max(scores, key=scores.get)
        chosen = {"grid": {str(k): v for k, v in scores.items()}, "selected": {name: hparams[name]}}
    merged = fn(combo.base, combo.experts, **hparams, **stats)
    weights_fn = getattr(importlib.import_module(fn.__module__), "ensemble_weights", None)
    coeffs = torch.tensor(weights_fn(len(combo.experts), **hparams) if weights_fn else [1.0 / len(combo.experts)] * len(combo.experts))
    out = {"merged": split_accuracy(combo, merged, "test"), "ensembled": run_ensemble(combo, coeffs, level),
           "val_merged": split_accuracy(combo, merged, "val"), **chosen}
    return out, merged


def run_plain_ensemble(combo: Combo, merge_cfg: dict, level: str) -> tuple[dict[str, dict[str, float]], None]:
    """Prediction-level ensemble of the experts; its 'merged' counterpart is the uniform average."""
    from neulig.merging.average import merge

    coeffs = torch.full((len(combo.experts),), 1.0 / len(combo.experts))
    out = {"ensembled": run_ensemble(combo, coeffs, merge_cfg.get("level", level)),
           "merged": split_accuracy(combo, merge(combo.base, combo.experts), "test")}
    return out, None


def flatten_for_offsets(states: list[StateDict], over: str) -> Tensor:
    """[T, P] flattened checkpoints for the offset statistic: ``all`` entries (the reference, sorted
    keys, buffers cast to float) or only floating ``params``."""
    keys = sorted(states[0])
    if over == "params":
        keys = [k for k in keys if states[0][k].is_floating_point()]
    return torch.stack([torch.cat([s[k].double().flatten() for k in keys]) for s in states])


@torch.no_grad()
def portland_merged_batch(combo: Combo, flat: FlatStack, portland: nn.Module, name: str, batch_size: int,
                          weights: str, shuffle_seed: int | None) -> float:
    """The paper's protocol: one merged encoder per test batch from the first sample's (or the mean) CoopVec."""
    dataset, feats = combo.datasets[name].test, combo.features[name]["test"]
    order = (torch.randperm(len(dataset), generator=torch.Generator().manual_seed(shuffle_seed))
             if shuffle_seed is not None else torch.arange(len(dataset)))
    visual = combo.visual.to(combo.device).eval()
    correct = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        beta = portland(feats[idx].to(combo.device))
        coeffs = beta[0] if weights == "first" else beta.mean(0)
        state = flat.combine(coeffs)
        images = dataset.batch(idx)[0].to(combo.device) if hasattr(dataset, "batch") else \
            torch.stack([dataset[int(i)][0] for i in idx]).to(combo.device)
        logits = head_logits(functional_call(visual, state, (images,)), combo.heads[name])
        correct += int((logits.argmax(-1).cpu() == dataset.labels[idx]).sum())
    return 100.0 * correct / len(order)


@torch.no_grad()
def evaluate_portland(combo: Combo, portland: nn.Module, merge_cfg: dict, level: str, seed: int) -> dict:
    flat = FlatStack(combo.experts, device=combo.device)
    portland = portland.to(combo.device).eval()
    out: dict[str, dict[str, float]] = {k: {} for k in ("ensembled", "merged_batch", "merged_task",
                                                        "beta_entropy", "beta_own_expert")}
    val_betas = {d: portland(combo.features[d]["val"].to(combo.device)).cpu() for d in combo.names}
    global_beta = torch.cat(list(val_betas.values())).mean(0)
    out["merged_global"] = split_accuracy(combo, flat.combine(global_beta.to(combo.device)), "test")
    for t, d in enumerate(combo.names):
        test_feats, labels = combo.features[d]["test"], combo.labels(d, "test")
        beta = portland(test_feats.to(combo.device)).cpu()
        out["ensembled"][d] = accuracy(ensemble_logits(test_feats, combo.heads[d], beta, level), labels)
        out["merged_batch"][d] = portland_merged_batch(
            combo, flat, portland, d, merge_cfg["eval_batch_size"], merge_cfg["batch_weights"],
            seed if merge_cfg.get("eval_shuffle", True) else None)
        task_state = flat.combine(val_betas[d].mean(0).to(combo.device))
        out["merged_task"][d] = split_accuracy(combo, task_state, "test", [d])[d]
        out["beta_entropy"][d] = float(-(beta * beta.clamp_min(1e-12).log()).sum(-1).mean())
        out["beta_own_expert"][d] = 100.0 * float((beta.argmax(-1) == t).float().mean())
    out["merged"] = dict(out["merged_batch"])
    out["global_beta"] = global_beta.tolist()
    out["task_beta"] = {d: val_betas[d].mean(0).tolist() for d in combo.names}  # merged_task's coefficients
    return out


def training_features(combo: Combo, name: str) -> tuple[Tensor, Tensor]:
    """Portland's training set on dataset ``name``: the clean train features [N, T, d] followed by
    the augmented views' features (``merge.views``, view-major) when they were computed, with labels."""
    features, labels = combo.features[name]["train"], combo.labels(name, "train")
    views = combo.features[name].get("train_views")
    if views is None:
        return features, labels
    return torch.cat([features, views]), labels.repeat(1 + len(views) // len(labels))


def build_portland_module(combo: Combo, merge_cfg: dict, seed: int):
    """The PortlandModule of ``merge_cfg`` on the combination's cached features (call after seeding)."""
    from neulig.lit.portland import PortlandModule
    from neulig.merging.portland import offset_statistics

    eps_star, gram = offset_statistics(flatten_for_offsets(combo.experts, merge_cfg.get("offsets_over", "all")))
    return PortlandModule(
        train_sets={d: training_features(combo, d) for d in combo.names},
        val_sets={d: (combo.features[d]["val"], combo.labels(d, "val")) for d in combo.names},
        head_weights=combo.heads, feature_dim=combo.features[combo.names[0]]["train"].shape[-1],
        alignment=merge_cfg["alignment"], scaling=merge_cfg["scaling"], regularizer=merge_cfg["regularizer"],
        eps_star=eps_star, gram=gram, lr=merge_cfg["lr"], batch_size=merge_cfg["batch_size"],
        eval_every=merge_cfg["eval_every"], seed=seed)


def run_portland(combo: Combo, merge_cfg: dict, trainer_cfg: dict, level: str, seed: int,
                 callbacks: list | None = None) -> tuple[dict, list[dict]]:
    """Fit Portland on cached train features (selection on val), then evaluate every granularity."""
    import lightning as L

    from neulig.stages import trainer_kwargs

    L.seed_everything(seed, verbose=False)
    module = build_portland_module(combo, merge_cfg, seed)
    kwargs = trainer_kwargs(trainer_cfg)
    kwargs.update(max_epochs=merge_cfg["global_epochs"], use_distributed_sampler=False, num_sanity_val_steps=0,
                  enable_progress_bar=False)
    trainer = L.Trainer(callbacks=callbacks or [], **kwargs)
    trainer.fit(module)
    results = evaluate_portland(combo, module.portland, merge_cfg, level, seed)
    results["best_epoch"] = module.best_epoch
    results["best_val_ensembled"] = module.best_val_acc
    return results, module.history
