"""Portland's runners (``conf/merge/portland.yaml``: ``runner`` and ``runner_many``): the
combinations' features and offset statistics handed to the one trainer (``portland.training``), then
each combination evaluated (``portland.evaluation``). ``run`` is ``run_many`` of one combination.
"""
from __future__ import annotations

import torch
from torch import Tensor

from neulig.config.merge import PortlandMerge
from neulig.methods.combination import Combination, Context
from neulig.portland.evaluation import Fit, evaluate
from neulig.portland.features import ComboSources, StackedSources
from neulig.portland.loss import regularizer
from neulig.portland.model import Portland
from neulig.portland.statistics import offset_moments, offset_statistics
from neulig.portland.training import ComboInputs, fit
from neulig.results import ComboResult


def training_features(combination: Combination, name: str) -> tuple[Tensor, Tensor]:
    """Portland's training set on dataset ``name`` as stacked features: the clean train features
    [N, T, d] followed by the augmented views' features (``merge.views``, view-major) when they were
    computed, with labels (a float32 copy; the run's stores hold the same rows, see :func:`sources_of`)."""
    features, labels = combination.features[name].train, combination.labels(name, "train")
    views = combination.features[name].train_views
    if views is None:
        return features, labels
    return torch.cat([features, views]), labels.repeat(1 + len(views) // len(labels))


def sources_of(combinations: list[Combination], split: str) -> ComboSources:
    """What the trainer reads of ``split`` (train: clean rows then views): an index into the run's
    stores when every combination has them (no copy), else each combination's stacked features."""
    stores = {id(c.run_features) for c in combinations}
    if combinations[0].run_features is not None and len(stores) == 1:
        return combinations[0].run_features.stores[split].sources([c.names for c in combinations],
                                                                  [c.expert_names for c in combinations])
    def pair(c: Combination, d: str) -> tuple[Tensor, Tensor]:
        return training_features(c, d) if split == "train" else (c.features[d].val, c.labels(d, split))

    return StackedSources([[pair(c, d) for d in c.names] for c in combinations])


def fishers_of(combination: Combination, method: PortlandMerge, seed: int,
               indices: list[int] | None = None) -> list[dict[str, Tensor]]:
    """The diagonal Fisher F = E_x[(d log p(y|x) / d theta)^2] (arXiv 2111.09832) of the combination's experts
    (``indices``: these only), each on its own train split (``merge.fisher``): the metric of
    ``regularizer=fisher_variance`` (docs/neural_ligand.md §13)."""
    from neulig.methods.statistics import estimate, fisher

    options = {"num_batches": method.fisher.num_batches, "mode": method.fisher.mode}
    return estimate(combination, fisher, options, method.fisher.batch_size, seed, indices)


def expert_fishers(combinations: list[Combination], method: PortlandMerge, seed: int) -> dict[str, dict[str, Tensor]]:
    """Each named expert's Fisher (:func:`fishers_of`), estimated once per run."""
    fishers: dict[str, dict[str, Tensor]] = {}
    for c in combinations:
        if missing := [i for i, e in enumerate(c.expert_names) if e not in fishers]:
            fishers.update(zip([c.expert_names[i] for i in missing], fishers_of(c, method, seed, missing)))
    return fishers


def combo_inputs(combinations: list[Combination], method: PortlandMerge, seed: int) -> list[ComboInputs]:
    """Each combination's datasets, heads and offset statistics, from one pass over the experts' weights
    (``statistics.offset_moments``; experts named in ``expert_names``, else by position per combination),
    with the experts' Fishers when the regulariser reads them."""
    over, with_fisher = method.offsets_over, regularizer(method.regularizer).reads_fisher
    if all(c.expert_names for c in combinations):
        experts = {e: s for c in combinations for e, s in zip(c.expert_names, c.experts)}
        moments = offset_moments(experts, over, fishers=expert_fishers(combinations, method, seed) if with_fisher else None)
        stats = [moments.of(c.expert_names) for c in combinations]
    else:
        stats = [offset_statistics(c.experts, over, fishers_of(c, method, seed) if with_fisher else None)
                 for c in combinations]
    return [ComboInputs(tuple(c.names), tuple(c.heads[d] for d in c.names), s) for c, s in zip(combinations, stats)]


def run(combination: Combination, method: PortlandMerge, context: Context) -> ComboResult:
    """Portland on one combination: :func:`run_many` of one."""
    return run_many([combination], method, context)[0]


def run_many(combinations: list[Combination], method: PortlandMerge, context: Context) -> list[ComboResult]:
    """Every combination trained at once by the one trainer (``training.fit``: each keeps its own
    parameters, optimiser state, initialisation and seeded batch order, so each equals training it
    alone), then each evaluated on its test splits."""
    inputs = combo_inputs(combinations, method, context.seed)
    fits = fit(inputs, sources_of(combinations, "train"), sources_of(combinations, "val"), method, context.seed,
               context.level, context.trainer, context.callbacks)
    results = []
    for combination, result, combo in zip(combinations, fits, inputs):
        portland = Portland(len(combination.names), result.state["linear.weight"].shape[1] // len(combination.names))
        portland.load_state_dict(result.state)
        results.append(evaluate(combination, portland, method, context,
                                Fit(result.best_epoch, result.best_val_acc, result.history), combo.stats.gram))
    return results
