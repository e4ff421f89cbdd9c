"""Evaluating a trained Portland on one combination's test splits (arXiv 2503.01268, docs/neural_ligand.md §9).

The same CoopVec beta(x) combines the experts' features (``ensembled``: at ``ensemble.level``, per
sample) and their weights (``merged``: theta(beta) = sum_t beta_t theta_t). A merge per sample would
cost one network per image, so the merged model is evaluated at three granularities:
``merged_batch`` (one merge per ``merge.merged_batch_size`` test images, from the batch's mean beta
or its first sample's, the paper's protocol and the one ``acc/merged`` reports), ``merged_task`` (one
merge per dataset, from its mean validation beta) and ``merged_global`` (one merge for all datasets).
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
from neulig.methods.combination import Combination, Context
from neulig.models.heads import head_logits
from neulig.portland.loss import beta_variance, normalized_gram
from neulig.results import ComboResult, MergedModel

LABELS = {"merged_batch": "merged per test batch", "merged_task": "one merge per dataset",
          "merged_global": "one merge for all"}


@dataclass(frozen=True)
class Fit:
    """How Portland's training ended: the selected epoch, its validation accuracy, the history."""

    best_epoch: int
    best_val_acc: float
    history: tuple


@torch.no_grad()
def merged_batch_accuracy(combination: Combination, flat: FlatStack, portland: nn.Module, name: str,
                          method: PortlandMerge, seed: int, feats: Tensor | None = None, split: str = "test") -> float:
    """The paper's protocol: one merged encoder per test batch from the batch's mean CoopVec
    (``batch_weights: mean``) or its first sample's (``first``, the reference code), on ``split``.
    ``feats``: the dataset's stacked features of ``split`` when the caller holds them already."""
    dataset = getattr(combination.datasets[name], split)
    feats = getattr(combination.features[name], split) if feats is None else feats
    order = (torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
             if method.eval_shuffle else torch.arange(len(dataset)))
    visual = combination.visual.to(combination.device).eval()
    correct = 0
    for start in range(0, len(order), method.merged_batch_size):
        idx = order[start : start + method.merged_batch_size]
        beta = portland(feats[idx].to(combination.device))
        state = flat.combine(beta[0] if method.batch_weights == "first" else beta.mean(0))
        images = fetch_images(dataset, idx).to(combination.device)
        logits = head_logits(functional_call(visual, state, (images,)), combination.heads[name])
        correct += int((logits.argmax(-1).cpu() == dataset.labels[idx]).sum())
    return 100.0 * correct / len(order)


def routing_diagnostics(betas: dict[str, Tensor], names: tuple[str, ...], gram: Tensor | None) -> dict[str, float]:
    """How Portland routes each dataset's test inputs (betas [N, T] per dataset, expert t = dataset t):
    ``beta/own_weight/<d>`` the mean weight on the input's own expert, ``beta/entropy/<d>`` the mean
    entropy of beta (nats), and with the experts' offset Gram matrix ``beta/spread/<d>`` the beta-variance
    of the checkpoints at the dataset's mean beta, normalised as ``regularizer=variance`` (1 at uniform
    beta, 0 at one expert; the merge-versus-ensemble gap's second-order term, docs/neural_ligand.md §13);
    each also as ``avg`` over the datasets."""
    out: dict[str, float] = {}
    for t, d in enumerate(names):
        beta = betas[d].double()
        out[f"beta/own_weight/{d}"] = float(beta[:, t].mean())
        out[f"beta/entropy/{d}"] = float(-(beta * beta.clamp_min(1e-12).log()).sum(-1).mean())
        if gram is not None:
            spread = beta_variance(beta.mean(0)[None, None], normalized_gram(gram.double())[None])
            out[f"beta/spread/{d}"] = float(spread)
    for key in {k.rsplit("/", 1)[0] for k in out}:
        out[f"{key}/avg"] = sum(out[f"{key}/{d}"] for d in names) / len(names)
    return out


@torch.no_grad()
def evaluate(combination: Combination, portland: nn.Module, method: PortlandMerge, context: Context,
             fit: Fit | None = None, gram: Tensor | None = None) -> ComboResult:
    """Ensembled accuracy (per-sample beta) and the three merge granularities, with routing diagnostics
    (:func:`routing_diagnostics`; ``gram``: the experts' offset Gram matrix, for the spread). The
    validation split gets the ensemble and the reported merge too (``val_ensembled``, ``val_merged``),
    so that options can be chosen on validation alone."""
    flat = FlatStack(combination.experts, device=combination.device)
    portland = portland.to(combination.device).eval()
    names = combination.names
    acc: dict[str, dict[str, float]] = {k: {} for k in ("ensembled", "merged_batch", "merged_task", "val_ensembled",
                                                         "val_merged")}
    own_argmax: dict[str, float] = {}
    test_betas: dict[str, Tensor] = {}
    val_feats = {d: combination.features[d].val for d in names}  # one copy each (a StackedView copies per read)
    val_betas = {d: portland(val_feats[d].to(combination.device)).cpu() for d in names}
    global_beta = torch.cat(list(val_betas.values())).mean(0)
    acc["merged_global"] = combination.merged_accuracy(flat.combine(global_beta.to(combination.device)), "test")
    for t, d in enumerate(names):
        test_feats, labels = combination.features[d].test, combination.labels(d, "test")
        beta = test_betas[d] = portland(test_feats.to(combination.device)).cpu()
        acc["ensembled"][d] = accuracy(ensemble_logits(test_feats, combination.heads[d], beta, context.level), labels)
        acc["merged_batch"][d] = merged_batch_accuracy(combination, flat, portland, d, method, context.seed, test_feats)
        task_state = flat.combine(val_betas[d].mean(0).to(combination.device))
        acc["merged_task"][d] = combination.merged_accuracy(task_state, "test", [d])[d]
        own_argmax[d] = 100.0 * float((beta.argmax(-1) == t).float().mean())
        acc["val_ensembled"][d] = accuracy(ensemble_logits(val_feats[d], combination.heads[d], val_betas[d],
                                                           context.level), combination.labels(d, "val"))
        acc["val_merged"][d] = merged_batch_accuracy(combination, flat, portland, d, method, context.seed,
                                                     val_feats[d], "val")
    acc["merged"] = dict(acc["merged_batch"])
    task_beta = {d: val_betas[d].mean(0).tolist() for d in names}  # merged_task's coefficients
    experts = tuple(combination.experts)
    merged = (MergedModel("merged_global", coefficients=tuple(global_beta.tolist()), experts=experts),
              *(MergedModel(f"merged_task/{d}", coefficients=tuple(task_beta[d]), experts=experts) for d in names))
    routing = routing_diagnostics(test_betas, tuple(names), gram)
    details = {"beta_entropy": {d: routing[f"beta/entropy/{d}"] for d in names}, "beta_own_expert": own_argmax,
               "global_beta": global_beta.tolist(), "task_beta": task_beta}
    if fit is not None:
        details.update(best_epoch=fit.best_epoch, best_val_ensembled=fit.best_val_acc)
    return ComboResult(tuple(names), acc, labels=LABELS, granularity="per test batch (paper protocol)",
                       merged=merged, details=details, history=fit.history if fit is not None else (),
                       diagnostics=routing)
