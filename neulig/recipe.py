"""The experiment recipe: backbone -> heads -> experts -> features -> each combination -> results.

``run_experiment(config)`` reads as the list of its stages; every stage is cached by a hash of what
determines it (``neulig.stages``), so a second run, or a sweep over methods, reuses everything up to
the combination. Heavy imports happen here, never at CLI start-up.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import torch

from neulig.config import Config
from neulig.results import RunResult
from neulig.stages.features import RunFeatures
from neulig.utils.log import log, quiet_libraries


def run_experiment(config: Config, callbacks: tuple = ()) -> RunResult:
    """The whole experiment, its torch threads sized to its share of the cores (``threads``,
    ``neulig.utils.cores``): re-sized before each stage it computes and before its method runs."""
    from neulig.methods.combination import Context, run_method
    from neulig.methods.resolve import resolve
    from neulig.utils.cores import resize, sharing

    with sharing(config.threads):
        clock = Clock()
        products = prepare(config, callbacks, clock)
        resize()  # the runs that waited for this one's stages compute their methods now too
        runner = resolve(config.merge.runner)
        context = Context(config.trainer, config.seed, config.ensemble.level, tuple(callbacks))
        groups = combinations(products.names, config.data.num_co_models)
        many = resolve(config.merge.runner_many) if config.merge.runner_many and len(groups) > 1 else None
        if many is not None and (reason := one_at_a_time(config)):
            log.info(f"{config.merge.name}: {len(groups)} combinations one at a time ({reason})")
            many = None
        combos = tuple(run_method(runner, groups, products.combination, config.merge, context, many))
        clock.lap("combination_done", f"{config.merge.name} done")
        return RunResult(tuple(products.names), products.reference, combos, clock.timings(), products.base)


def one_at_a_time(config: Config) -> str | None:
    """Why a method that can train every combination at once (``merge.runner_many``) must not, or None:
    batched training runs on one device, and aligned experts are copies, one set per combination, that
    only one-at-a-time runs can free before the next combination is built."""
    if config.trainer.devices > 1:
        return f"trainer.devices={config.trainer.devices}: batched training runs on one device"
    if config.align.method is not None:
        return f"align={config.align.method}: one combination's aligned experts held at a time"
    return None


@dataclass(frozen=True)
class Products:
    """What the cached stages produce for a run, ready for any combination of its datasets."""

    config: Config
    names: list[str]
    datasets: dict
    heads: dict
    experts: dict
    origins: dict  # dataset -> the origin its expert started from
    features: RunFeatures
    reference: dict  # zero-shot and fine-tuned test accuracy per dataset
    base: object  # the backbone of the first dataset's origin: architecture and theta_0 of anchored methods
    theta_0: dict

    def combination(self, group: tuple[str, ...]):
        from neulig.methods.combination import build_combination

        return build_combination(group, self.base, self.theta_0, self.experts, self.origins, self.features,
                                 self.datasets, self.heads, self.config)


def prepare(config: Config, callbacks: tuple = (), clock: Clock | None = None) -> Products:
    """Every stage up to the combination: backbone(s), datasets, zero-shot heads, experts, features."""
    from neulig import stages

    quiet_libraries()
    clock = clock or Clock()
    torch.manual_seed(config.seed)
    names = config.data.names
    given = stages.user_experts(config.model, names, config.paths.cache_dir)  # checked before any training
    origins = stages.expert_origins(config.model, names)
    backbones = stages.load_backbones(config, origins, given.base)
    clock.lap("backbone", f"backbone {config.model.name} ready ({len(backbones)} origin(s))")
    datasets = stages.load_datasets(config)
    heads = {d: stages.zero_shot_head(backbones[origins[d]], datasets[d].spec, config.paths.cache_dir) for d in names}
    experts = stages.prepare_experts(config, backbones, origins, datasets, heads, given, callbacks)
    clock.lap("experts_ready", "experts ready")
    features = stages.all_features(config, backbones, origins, experts, datasets)
    reference = stages.reference_accuracies(features, datasets, heads)
    clock.lap("features_ready", "expert features ready")
    base = backbones[origins[names[0]]]
    theta_0 = {k: v.detach().cpu().clone() for k, v in base.visual.state_dict().items()}
    return Products(config, names, datasets, heads, experts, origins, features, reference, base, theta_0)


def combinations(names: list[str], k: int | None) -> list[tuple[str, ...]]:
    """Every k-combination of the datasets (the paper's ``itertools.combinations``), or all of them."""
    return [tuple(names)] if k is None or k == len(names) else list(itertools.combinations(names, k))


class Clock:
    """Seconds since the recipe started, logged and recorded at each named point."""

    def __init__(self) -> None:
        self.start, self.laps = time.time(), {}

    def lap(self, name: str, message: str) -> None:
        self.laps[f"{name}_s"] = time.time() - self.start
        log.info(f"{message} ({self.laps[f'{name}_s']:.1f} s)")

    def timings(self) -> dict[str, float]:
        return {**self.laps, "total_s": time.time() - self.start}
