"""DARE (+ Task Arithmetic): docs/methods.md §5 oracles, seeding, and merge properties."""
from __future__ import annotations

import pytest
import torch

from neulig.errors import NeuligError
from neulig.merging import dare, task_arithmetic
from tests.merging.merge_toys import (
    DTYPES,
    assert_close,
    assert_params_close,
    assert_params_differ,
    check_buffers,
    make_family,
)

TAU = [0.2, -0.4, 0.6, 0.8]


@pytest.mark.parametrize("dtype", DTYPES)
def test_drop_and_rescale_oracle(dtype):
    out = dare.drop_and_rescale(torch.tensor(TAU, dtype=dtype), torch.tensor([1, 0, 1, 0], dtype=torch.bool), 0.5)
    assert out.dtype == dtype
    assert_close(out, [0.4, 0, 1.2, 0])
    assert dare.drop_and_rescale(torch.tensor(TAU), torch.ones(4, dtype=torch.bool), 1.0).abs().sum() == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_dare_then_task_arithmetic_oracle(dtype):
    base = {"w": torch.ones(4, dtype=dtype)}
    expert = {"w": base["w"] + torch.tensor(TAU, dtype=dtype)}
    masks = [{"w": torch.tensor([1, 0, 1, 0], dtype=torch.bool)}, {"w": torch.tensor([0, 1, 0, 1], dtype=torch.bool)}]
    out = dare.merge(base, [expert, expert], p=0.5, scaling=0.5, masks=masks)
    assert out["w"].dtype == dtype
    assert_close(out["w"], [1.2, 0.6, 1.6, 1.8])


def test_unbiased_over_10000_seeds():
    """E[tau~] = tau: the mean over 10,000 seeds lies within 3 standard errors of tau (p = 0.9)."""
    base, tau = {"w": torch.zeros(4, dtype=torch.float64)}, torch.tensor(TAU, dtype=torch.float64)
    draws = torch.stack([dare.drop_and_rescale(tau, dare.draw_keep_masks(base, ["w"], 1, 0.9, s)[0]["w"], 0.9)
                         for s in range(10_000)])
    standard_error = draws.std(0) / 100.0
    assert ((draws.mean(0) - tau).abs() <= 3 * standard_error).all()
    assert 0.05 < float((draws != 0).double().mean()) < 0.15  # about 1 - p of the entries survive


def test_seed_reproducible_and_masks_independent():
    base, experts = make_family(2)
    a = dare.merge(base, experts, p=0.5, seed=3)
    assert_params_close(dare.merge(base, experts, p=0.5, seed=3), a, atol=0)
    assert_params_differ(dare.merge(base, experts, p=0.5, seed=4), a)
    masks = dare.draw_keep_masks(base, ["conv1.weight", "layer1.0.conv1.weight"], 2, 0.5, seed=0)
    assert not torch.equal(masks[0]["conv1.weight"], masks[1]["conv1.weight"])  # across experts
    assert masks[0]["conv1.weight"].flatten()[:12].tolist() != masks[0]["layer1.0.conv1.weight"].flatten()[:12].tolist()


def test_p_zero_is_task_arithmetic_and_p_one_is_base():
    base, experts = make_family(3, torch.float64)
    assert_params_close(dare.merge(base, experts, p=0.0, scaling=0.3), task_arithmetic.merge(base, experts, 0.3), atol=1e-12)
    assert_params_close(dare.merge(base, experts, p=1.0, scaling=0.3), base, atol=0)


def test_one_expert_without_drop_returns_itself_and_scale_zero_returns_base():
    base, experts = make_family(1, torch.float64)
    assert_params_close(dare.merge(base, experts, p=0.0, scaling=1.0), experts[0], atol=1e-12)
    assert_params_close(dare.merge(base, experts, p=0.5, scaling=0.0), base, atol=0)


def test_order_dependent_by_design_for_a_fixed_seed():
    """Each position draws its own mask: permuting experts changes the draw (not the distribution)."""
    base, experts = make_family(3, torch.float64)
    assert_params_close(dare.merge(base, experts, p=0.0), dare.merge(base, experts[::-1], p=0.0), atol=1e-12)
    assert_params_differ(dare.merge(base, experts, p=0.5, seed=0), dare.merge(base, experts[::-1], p=0.5, seed=0))


@pytest.mark.parametrize("dtype", DTYPES + [torch.float16])
def test_buffers_and_dtype(dtype):
    base, experts = make_family(3, dtype)
    out = dare.merge(base, experts, p=0.5)
    check_buffers(out, base, experts)
    assert all(torch.isfinite(v.double()).all() for v in out.values())


def test_bad_inputs_raise():
    base, experts = make_family(2)
    with pytest.raises(NeuligError):
        dare.merge(base, experts, p=1.5)
    with pytest.raises(NeuligError):
        dare.merge(base, experts, masks=[{}])
