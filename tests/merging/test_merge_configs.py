"""Every static conf/merge/*.yaml resolves to a pure merge whose signature takes its hparams."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from merge_toys import check_buffers, make_family


def resolve(path: str):
    """The function a yaml's ``fn`` names (as neulig.combine.resolve)."""
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


CONF = Path(__file__).resolve().parents[2] / "conf" / "merge"
STATIC = sorted(p.stem for p in CONF.glob("*.yaml") if OmegaConf.load(p).get("kind") == "static")
STATISTICS = {"fisher": "fishers", "grams": "grams"}


def extra_inputs(needs, experts):
    if needs == "fisher":
        return {"fishers": [{k: torch.ones_like(v) for k, v in e.items() if v.is_floating_point()} for e in experts]}
    if needs == "grams":
        return {"grams": [{"attnpool.c_proj.weight": torch.eye(3)} for _ in experts]}
    return {}


@pytest.mark.parametrize("name", STATIC)
def test_static_config_runs_with_its_defaults(name):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    assert (CONF / f"{name}.yaml").read_text().startswith("#"), "header comment with the formula"
    fn = resolve(cfg["fn"])
    hparams = dict(cfg.get("hparams") or {})
    assert cfg.get("needs") in (None, *STATISTICS)
    inspect.signature(fn).bind(None, None, **hparams, **({STATISTICS[cfg["needs"]]: None} if cfg.get("needs") else {}))
    base, experts = make_family(3)
    out = fn(base, experts, **hparams, **extra_inputs(cfg.get("needs"), experts))
    check_buffers(out, base, experts)
    weights_fn = getattr(importlib.import_module(fn.__module__), "ensemble_weights", None)
    if weights_fn is not None:
        assert sum(weights_fn(3, **hparams)) == pytest.approx(1.0)
