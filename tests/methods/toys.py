"""A small Combination on the tiny open_clip ViT, and method configs composed from the real conf/."""
from __future__ import annotations

import copy
import functools

import torch

from neulig.config.trainer import TrainerConfig
from neulig.methods.combination import Combination, Context
from tests.merging.merge_toys import tiny_visual

TRAINER = TrainerConfig(accelerator="cpu", devices=1)


def context(seed: int = 0, level: str = "features") -> Context:
    return Context(TRAINER, seed, level)


def method(name: str, *overrides: str):
    """The typed config of ``conf/merge/<name>.yaml`` with ``overrides`` (e.g. ``merge.steps=3``)."""
    from neulig.config import load
    from tests.conftest import compose

    return load(compose([f"merge={name}", *overrides], "/nonexistent")).merge


def model_config(name: str, *overrides: str):
    """The typed config of ``conf/model/<name>.yaml`` with ``overrides``."""
    from neulig.config import load
    from tests.conftest import compose

    return load(compose([f"model={name}", *overrides], "/nonexistent")).model


@functools.lru_cache(maxsize=1)
def tiny_combination(num_test: int = 24) -> Combination:
    """2 fake experts (perturbed copies of the tiny visual) on 2 random 3-class datasets (cached: the
    runners never modify a Combination)."""
    from neulig.data.base import DatasetSpec, LoadedDataset, TensorImages
    from neulig.stages.features import SplitFeatures, encode

    visual = tiny_visual()
    g = torch.Generator().manual_seed(0)
    base = {k: v.detach().clone() for k, v in visual.state_dict().items()}
    experts = [{k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(2)]
    names, datasets, heads, features = ["alpha", "beta"], {}, {}, {}
    for name in names:
        images = TensorImages(torch.randint(0, 256, (num_test, 3, 32, 32), dtype=torch.uint8, generator=g),
                              torch.randint(0, 3, (num_test,), generator=g))
        datasets[name] = LoadedDataset(DatasetSpec(name, ("a", "b", "c"), ("{}",)), images, images, images)
        heads[name] = 10 * torch.nn.functional.normalize(torch.randn(3, visual.output_dim, generator=g), dim=-1)
    scratch = copy.deepcopy(visual)
    for name in names:
        per_expert = []
        for state in experts:
            scratch.load_state_dict(state)
            per_expert.append(encode(scratch, datasets[name].test, 64, torch.device("cpu")))
        stacked = torch.stack(per_expert, 1)
        features[name] = SplitFeatures(stacked, stacked, stacked)
    return Combination(names=names, datasets=datasets, heads=heads, base=base, experts=experts, features=features,
                       visual=visual, device=torch.device("cpu"), eval_batch_size=64)


def check_accuracies(result, combination: Combination) -> None:
    for kind in ("merged", "ensembled"):
        assert set(result.accuracy[kind]) == set(combination.names)
        assert all(0.0 <= v <= 100.0 for v in result.accuracy[kind].values())
