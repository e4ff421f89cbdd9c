"""Neural Ligand (Li, Yu, Wang, ICCV 2025, arXiv 2503.01268) on one combination: fit Portland on the
cached expert features (selection on the validation split), then evaluate every granularity.

The same CoopVec beta(x) combines the experts' features (``ensembled``: h_k(sum_t beta_t z_t), per
sample) and their weights (``merged``: theta(beta) = sum_t beta_t theta_t). A merge per sample would
cost one network per image, so the merged model is evaluated at three granularities:
``merged_batch`` (one merge per test batch, from the batch's mean beta or its first sample's, the
paper's protocol and the one ``acc/merged`` reports), ``merged_task`` (one merge per dataset, from its
mean validation beta) and ``merged_global`` (one merge for all datasets).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from neulig.config.merge import PortlandMerge
from neulig.data.base import fetch_images
from neulig.evaluate import accuracy, ensemble_logits
from neulig.merging.flat import FlatStack
from neulig.merging.state_dict import StateDict
from neulig.methods.combination import Combination, Context
from neulig.models.heads import head_logits
from neulig.results import ComboResult, MergedModel

LABELS = {"merged_batch": "merged per test batch", "merged_task": "one merge per dataset",
          "merged_global": "one merge for all"}


def flatten_for_offsets(states: list[StateDict], over: str) -> Tensor:
    """[T, P] flattened checkpoints for the offset statistic: ``all`` entries (the reference, sorted
    keys, buffers cast to float) or only floating ``params``."""
    keys = sorted(states[0])
    if over == "params":
        keys = [k for k in keys if states[0][k].is_floating_point()]
    return torch.stack([torch.cat([s[k].double().flatten() for k in keys]) for s in states])


def training_features(combination: Combination, name: str) -> tuple[Tensor, Tensor]:
    """Portland's training set on dataset ``name``: the clean train features [N, T, d] followed by
    the augmented views' features (``merge.views``, view-major) when they were computed, with labels."""
    features, labels = combination.features[name].train, combination.labels(name, "train")
    views = combination.features[name].train_views
    if views is None:
        return features, labels
    return torch.cat([features, views]), labels.repeat(1 + len(views) // len(labels))


def build_module(combination: Combination, method: PortlandMerge, seed: int):
    """The PortlandModule of ``method`` on the combination's cached features (call after seeding)."""
    from neulig.lit.portland import PortlandModule
    from neulig.merging.portland import offset_statistics

    eps_star, gram = offset_statistics(flatten_for_offsets(combination.experts, method.offsets_over))
    return PortlandModule(
        train_sets={d: training_features(combination, d) for d in combination.names},
        val_sets={d: (combination.features[d].val, combination.labels(d, "val")) for d in combination.names},
        head_weights=combination.heads, feature_dim=combination.features[combination.names[0]].train.shape[-1],
        loss=method.loss, scaling=method.scaling, regularizer=method.regularizer, eps_star=eps_star, gram=gram,
        lr=method.lr, batch_size=method.batch_size, eval_every=method.eval_every, seed=seed)


def run(combination: Combination, method: PortlandMerge, context: Context) -> ComboResult:
    import lightning as L

    from neulig.lit.trainer import trainer_kwargs

    L.seed_everything(context.seed, verbose=False)
    module = build_module(combination, method, context.seed)
    kwargs = trainer_kwargs(context.trainer)
    kwargs.update(max_epochs=method.global_epochs, use_distributed_sampler=False, num_sanity_val_steps=0,
                  enable_progress_bar=False)
    L.Trainer(callbacks=list(context.callbacks), **kwargs).fit(module)
    return evaluate(combination, module.portland, method, context,
                    Fit(module.best_epoch, module.best_val_acc, tuple(module.history)))


def combo_inputs(combination: Combination, offsets_over: str):
    """What the batched trainer needs of a combination besides its features: its datasets, heads and the
    offset statistics of its experts (as :func:`build_module` computes them)."""
    from neulig.lit.portland_batched import ComboInputs
    from neulig.merging.portland import offset_statistics

    eps_star, gram = offset_statistics(flatten_for_offsets(combination.experts, offsets_over))
    return ComboInputs(tuple(combination.names), tuple(combination.heads[d] for d in combination.names), eps_star, gram)


def run_many(combinations: list[Combination], method: PortlandMerge, context: Context) -> list[ComboResult]:
    """Every combination trained at once (``lit.portland_batched``: each keeps its own parameters,
    optimiser state, initialisation and seeded batch order, so each equals training it alone), reading
    the run's features held once (``context.features``), then each evaluated as :func:`run` evaluates it."""
    from neulig.lit.portland_batched import PortlandOptions, fit_combinations
    from neulig.merging.portland import Portland

    groups = [list(c.names) for c in combinations]
    stores = context.features.stores
    fits = fit_combinations([combo_inputs(c, method.offsets_over) for c in combinations],
                            stores["train"].sources(groups), stores["val"].sources(groups),
                            PortlandOptions.of(method, context.seed), device=combinations[0].device)
    results = []
    for combination, fit in zip(combinations, fits):
        portland = Portland(len(combination.names), stores["train"].bank.shape[-1])
        portland.load_state_dict(fit.state)
        results.append(evaluate(combination, portland, method, context,
                                Fit(fit.best_epoch, fit.best_val_acc, tuple(fit.history))))
    return results


@dataclass(frozen=True)
class Fit:
    """How Portland's training ended: the selected epoch, its validation accuracy, the history."""

    best_epoch: int
    best_val_acc: float
    history: tuple


@torch.no_grad()
def merged_batch_accuracy(combination: Combination, flat: FlatStack, portland: nn.Module, name: str,
                          method: PortlandMerge, seed: int, feats: Tensor | None = None) -> float:
    """The paper's protocol: one merged encoder per test batch from the batch's mean CoopVec
    (``batch_weights: mean``) or its first sample's (``first``, the reference code). ``feats``: the
    dataset's stacked test features when the caller holds them already."""
    dataset = combination.datasets[name].test
    feats = combination.features[name].test if feats is None else feats
    order = (torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
             if method.eval_shuffle else torch.arange(len(dataset)))
    visual = combination.visual.to(combination.device).eval()
    correct = 0
    for start in range(0, len(order), method.eval_batch_size):
        idx = order[start : start + method.eval_batch_size]
        beta = portland(feats[idx].to(combination.device))
        state = flat.combine(beta[0] if method.batch_weights == "first" else beta.mean(0))
        images = fetch_images(dataset, idx).to(combination.device)
        logits = head_logits(functional_call(visual, state, (images,)), combination.heads[name])
        correct += int((logits.argmax(-1).cpu() == dataset.labels[idx]).sum())
    return 100.0 * correct / len(order)


@torch.no_grad()
def evaluate(combination: Combination, portland: nn.Module, method: PortlandMerge, context: Context,
             fit: Fit | None = None) -> ComboResult:
    """Ensembled accuracy (per-sample beta) and the three merge granularities, with routing diagnostics."""
    flat = FlatStack(combination.experts, device=combination.device)
    portland = portland.to(combination.device).eval()
    names = combination.names
    acc: dict[str, dict[str, float]] = {k: {} for k in ("ensembled", "merged_batch", "merged_task")}
    diagnostics: dict[str, dict[str, float]] = {"beta_entropy": {}, "beta_own_expert": {}}
    val_betas = {d: portland(combination.features[d].val.to(combination.device)).cpu() for d in names}
    global_beta = torch.cat(list(val_betas.values())).mean(0)
    acc["merged_global"] = combination.merged_accuracy(flat.combine(global_beta.to(combination.device)), "test")
    for t, d in enumerate(names):
        test_feats, labels = combination.features[d].test, combination.labels(d, "test")
        beta = portland(test_feats.to(combination.device)).cpu()
        acc["ensembled"][d] = accuracy(ensemble_logits(test_feats, combination.heads[d], beta, context.level), labels)
        acc["merged_batch"][d] = merged_batch_accuracy(combination, flat, portland, d, method, context.seed, test_feats)
        task_state = flat.combine(val_betas[d].mean(0).to(combination.device))
        acc["merged_task"][d] = combination.merged_accuracy(task_state, "test", [d])[d]
        diagnostics["beta_entropy"][d] = float(-(beta * beta.clamp_min(1e-12).log()).sum(-1).mean())
        diagnostics["beta_own_expert"][d] = 100.0 * float((beta.argmax(-1) == t).float().mean())
    acc["merged"] = dict(acc["merged_batch"])
    task_beta = {d: val_betas[d].mean(0).tolist() for d in names}  # merged_task's coefficients
    experts = tuple(combination.experts)
    merged = (MergedModel("merged_global", coefficients=tuple(global_beta.tolist()), experts=experts),
              *(MergedModel(f"merged_task/{d}", coefficients=tuple(task_beta[d]), experts=experts) for d in names))
    details = {**diagnostics, "global_beta": global_beta.tolist(), "task_beta": task_beta}
    if fit is not None:
        details.update(best_epoch=fit.best_epoch, best_val_ensembled=fit.best_val_acc)
    return ComboResult(tuple(names), acc, labels=LABELS, granularity="per test batch (paper protocol)",
                       merged=merged, details=details, history=fit.history if fit is not None else ())
