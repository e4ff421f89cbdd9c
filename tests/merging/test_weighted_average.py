"""weighted_average: the yaml drives average.merge with user weights (null = uniform)."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from omegaconf import OmegaConf

from merge_toys import assert_params_close, assert_params_differ, check_buffers, make_family
from neulig.merging import average


def resolve(path: str):
    """The function a yaml's ``fn`` names (as neulig.combine.resolve)."""
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


CONF = Path(__file__).resolve().parents[2] / "conf" / "merge" / "weighted_average.yaml"


def test_yaml_defaults_to_uniform_and_accepts_weights():
    cfg = OmegaConf.to_container(OmegaConf.load(CONF))
    fn = resolve(cfg["fn"])
    assert fn is average.merge and cfg["kind"] == "static" and cfg["hparams"] == {"weights": None}
    base, experts = make_family(2, torch.float64)
    assert_params_close(fn(base, experts, **cfg["hparams"]), average.merge(base, experts), atol=0)
    out = fn(base, experts, weights=[3.0, 1.0])
    expected = {k: 0.75 * experts[0][k] + 0.25 * experts[1][k] for k in experts[0]}
    assert_params_close(out, expected, atol=1e-12)
    assert_params_differ(out, average.merge(base, experts))
    check_buffers(out, base, experts, torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert average.ensemble_weights(2, weights=[3.0, 1.0]) == [0.75, 0.25]
