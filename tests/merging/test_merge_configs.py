"""Every static conf/merge/*.yaml drives a pure merge whose signature takes its hparams and statistics."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from neulig.methods.resolve import resolve
from neulig.methods.static import hyperparameters
from tests.merging.merge_toys import check_buffers, make_family
from tests.methods.toys import method

CONF = Path(__file__).resolve().parents[2] / "conf" / "merge"
STATIC = sorted(p.stem for p in CONF.glob("*.yaml") if OmegaConf.load(p).get("kind") == "static")


def statistics(argument: str, experts: list) -> dict:
    """Stand-in statistics of the right shape: all-ones Fishers, identity Grams."""
    if argument == "fishers":
        return {"fishers": [{k: torch.ones_like(v) for k, v in e.items() if v.is_floating_point()} for e in experts]}
    return {"grams": [{"attnpool.c_proj.weight": torch.eye(3)} for _ in experts]}


@pytest.mark.parametrize("name", STATIC)
def test_static_config_runs_with_its_defaults(name):
    config = method(name)
    assert (CONF / f"{name}.yaml").read_text().startswith("#"), "header comment with the formula"
    fn, hparams = resolve(config.fn), hyperparameters(config)
    extra = {config.statistics.argument: None} if config.statistics else {}
    inspect.signature(fn).bind(None, None, **hparams, **extra)
    base, experts = make_family(3)
    out = fn(base, experts, **hparams, **(statistics(config.statistics.argument, experts) if config.statistics else {}))
    check_buffers(out, base, experts)
    if config.ensemble_weights:
        assert sum(resolve(config.ensemble_weights)(3, **hparams)) == pytest.approx(1.0)
