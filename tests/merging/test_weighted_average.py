"""weighted_average: the yaml drives average.merge with user weights (null = uniform)."""
from __future__ import annotations

import torch

from neulig.merging import average
from neulig.methods.resolve import resolve
from neulig.methods.static import hyperparameters
from tests.merging.merge_toys import assert_params_close, assert_params_differ, check_buffers, make_family
from tests.methods.toys import method


def test_yaml_defaults_to_uniform_and_accepts_weights():
    config = method("weighted_average")
    fn = resolve(config.fn)
    assert fn is average.merge and config.kind == "static" and hyperparameters(config) == {"weights": None}
    assert resolve(config.ensemble_weights) is average.ensemble_weights
    base, experts = make_family(2, torch.float64)
    assert_params_close(fn(base, experts, **hyperparameters(config)), average.merge(base, experts), atol=0)
    out = fn(base, experts, weights=[3.0, 1.0])
    expected = {k: 0.75 * experts[0][k] + 0.25 * experts[1][k] for k in experts[0]}
    assert_params_close(out, expected, atol=1e-12)
    assert_params_differ(out, average.merge(base, experts))
    check_buffers(out, base, experts, torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert average.ensemble_weights(2, weights=[3.0, 1.0]) == [0.75, 0.25]
