"""Static methods: one pure merge function of the experts' weights, evaluated with its ensemble counterpart.

The method's yaml names ``fn(base, experts, **hparams)``; ``statistics`` (optional) names an
estimator run on every expert with its own train split, whose outputs reach ``fn`` as the keyword
``statistics.argument``; ``ensemble_weights`` (optional) gives the per-expert coefficients of the
ensemble counterpart (uniform otherwise). ``grid: {hparam: [values]}`` picks the value with the best
mean *validation* accuracy of the merged model; the test split is never used for selection.
"""
from __future__ import annotations

from dataclasses import asdict, is_dataclass

import torch

from neulig.config.merge import StaticMerge
from neulig.methods.combination import Combination, Context
from neulig.methods.resolve import resolve
from neulig.methods.statistics import estimate
from neulig.results import ComboResult, MergedModel


def hyperparameters(method: StaticMerge) -> dict:
    return asdict(method.hparams) if is_dataclass(method.hparams) else dict(method.hparams)


def run(combination: Combination, method: StaticMerge, context: Context) -> ComboResult:
    """Merge with ``method.fn``, evaluate the merge (test and val) and its ensemble counterpart."""
    fn = resolve(method.fn)
    hparams = hyperparameters(method)
    stats = {}
    if (config := method.statistics) is not None:
        options = {k: v for k, v in asdict(config).items() if k not in ("fn", "argument", "batch_size")}
        stats[config.argument] = estimate(combination, resolve(config.fn), options, config.batch_size, context.seed)
    details: dict = {}
    best = None  # (merged, its val accuracies) at the selected value: the grid's winner is not merged again
    for name, values in (method.grid or {}).items():  # one hyperparameter (checked by the schema)
        scores = {}
        for value in values:
            candidate = fn(combination.base, combination.experts, **{**hparams, name: value}, **stats)
            val_acc = combination.merged_accuracy(candidate, "val")
            scores[value] = sum(val_acc.values()) / len(val_acc)
            if best is None or scores[value] > scores[hparams[name]]:  # the first best value wins ties
                best, hparams[name] = (candidate, val_acc), value
        details = {"grid": {str(k): v for k, v in scores.items()}, "selected": {name: hparams[name]}}
    merged, val_merged = best or (fn(combination.base, combination.experts, **hparams, **stats), None)
    count = len(combination.experts)
    coeffs = resolve(method.ensemble_weights)(count, **hparams) if method.ensemble_weights else [1.0 / count] * count
    accuracy = {"merged": combination.merged_accuracy(merged, "test"),
                "ensembled": combination.ensemble_accuracy(torch.tensor(coeffs), context.level),
                "val_merged": val_merged or combination.merged_accuracy(merged, "val")}
    return ComboResult(tuple(combination.names), accuracy, merged=(MergedModel("merged", merged),), details=details)
