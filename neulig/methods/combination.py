"""What a method sees of one dataset combination, and the evaluations every method shares."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from neulig.config.trainer import TrainerConfig
from neulig.data.base import LoadedDataset
from neulig.evaluate import accuracy, ensemble_logits, feature_accuracy, merged_features
from neulig.merging.state_dict import StateDict
from neulig.methods.align import Alignment
from neulig.results import ComboResult
from neulig.stages.features import RunFeatures, SplitFeatures, StackedView


@dataclass(frozen=True)
class Context:
    """Run-wide settings a method needs besides its own options."""

    trainer: TrainerConfig
    seed: int
    level: str  # ensemble.level: features | logits
    callbacks: tuple = ()


@dataclass
class Combination:
    """T datasets with their experts, everything already cached and loaded.

    ``features[d]`` stacks every expert's features on dataset d: [N, T, d_feat] per split (expert t
    in the order of ``names``); a ``StackedView`` makes that float32 copy at each read, from the run's
    features held once (``run_features``, whose experts ``expert_names`` are, in order). Runners that
    train on many rows (Portland) read ``run_features`` instead and copy only the rows of a batch.
    """

    names: list[str]
    datasets: dict[str, LoadedDataset]
    heads: dict[str, Tensor]
    base: StateDict  # theta_0 of anchored methods
    experts: list[StateDict]
    features: Mapping[str, StackedView | SplitFeatures]
    visual: nn.Module  # the architecture; weights are passed to it with functional_call
    device: torch.device
    eval_batch_size: int = 256
    num_workers: int = 0  # data.num_workers: processes decoding images in every evaluation pass
    alignment: Alignment | None = None  # what aligning the experts measured (align=), None without
    extra: dict = field(default_factory=dict)
    run_features: RunFeatures | None = None  # None: only ``features`` (a combination built by hand)
    expert_names: tuple[str, ...] = ()  # the experts' names in ``run_features``, in the order of ``names``

    def labels(self, name: str, split: str) -> Tensor:
        return getattr(self.datasets[name], split).labels

    def merged_accuracy(self, state: StateDict, split: str = "test", names: list[str] | None = None) -> dict[str, float]:
        """Accuracy of one merged encoder on ``split`` of each dataset (default: all), with its head."""
        return {d: feature_accuracy(merged_features(self.visual, state, getattr(self.datasets[d], split),
                                                    self.eval_batch_size, self.device, self.num_workers),
                                    self.labels(d, split), self.heads[d])
                for d in (names or self.names)}

    def curve_point(self, state: StateDict) -> dict[str, float]:
        """A training curve's point: the mean accuracy of the merged encoder ``state`` on val and test."""
        return {f"{split}/merged_avg": sum(acc.values()) / len(acc)
                for split in ("val", "test") for acc in [self.merged_accuracy(state, split)]}

    def ensemble_accuracy(self, coeffs: Tensor | Callable[[str], Tensor], level: str) -> dict[str, float]:
        """Accuracy of the experts' ensemble on each test split; ``coeffs`` [T] or [N, T], or a function
        of the dataset giving them."""
        return {d: accuracy(ensemble_logits(self.features[d].test, self.heads[d],
                                            coeffs(d) if callable(coeffs) else coeffs, level),
                            self.labels(d, "test"))
                for d in self.names}


def build_combination(group: tuple[str, ...], base, theta_0: StateDict, experts: dict, origins: dict, features,
                      datasets: dict[str, LoadedDataset], heads: dict[str, Tensor], config) -> Combination:
    """The Combination of the datasets ``group`` from the run's stage products (``base``: the backbone
    whose image tower gives the architecture and ``theta_0``), its experts aligned as ``config.align`` says."""
    from neulig.methods.align import align_experts

    names = list(group)
    alignment = align_experts([experts[e].state for e in names], [origins[e] for e in names], base.visual,
                              [datasets[d] for d in names], config.align)
    return Combination(names=names, datasets={d: datasets[d] for d in names}, heads=heads, base=theta_0,
                       experts=alignment.experts, features={d: features.stacked(names, d) for d in names},
                       visual=base.visual, device=config.trainer.device(), eval_batch_size=config.eval.batch_size,
                       num_workers=config.data.num_workers, alignment=alignment, run_features=features,
                       expert_names=tuple(names))  # the pipeline names each expert after its dataset


def run_method(runner: Callable, groups: list[tuple[str, ...]], build: Callable[[tuple[str, ...]], Combination],
               method, context: Context, many: Callable | None = None) -> list[ComboResult]:
    """The runner's result on each combination of ``groups`` (built by ``build``), with what building it
    measured (alignment). One at a time, so that only one combination's experts are held; ``many``, if
    given, takes them all at once (every combination's experts are then held together)."""
    if many is not None:
        combinations = [build(group) for group in groups]
        return [with_alignment(r, c) for r, c in zip(many(combinations, method, context), combinations)]
    results = []
    for group in groups:
        combination = build(group)
        results.append(with_alignment(runner(combination, method, context), combination))
    return results


def with_alignment(result: ComboResult, combination: Combination) -> ComboResult:
    if combination.alignment is None or not combination.alignment.groups:
        return result
    return replace(result, diagnostics={**result.diagnostics, **combination.alignment.metrics},
                   details={**result.details, "alignment": {"groups": combination.alignment.groups,
                                                            "seconds": combination.alignment.seconds}})
