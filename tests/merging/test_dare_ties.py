"""DARE then TIES: hand-checked fixed-mask oracle and reductions to TIES."""
from __future__ import annotations

import pytest
import torch

from neulig.merging import dare_ties, ties
from tests.merging.merge_toys import (
    DTYPES,
    assert_close,
    assert_params_close,
    assert_params_differ,
    check_buffers,
    make_family,
)

TAU = [0.2, -0.4, 0.6, 0.8]
MASKS = [{"w": torch.tensor([1, 0, 1, 0], dtype=torch.bool)}, {"w": torch.tensor([0, 1, 0, 1], dtype=torch.bool)}]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed_mask_oracle(dtype):
    """DARE'd deltas [0.4, 0, 1.2, 0] and [0, -0.8, 0, 1.6]; TIES keeps 1 of 4 per task (density 0.25):
    [0, 0, 1.2, 0] and [0, 0, 0, 1.6]; dis-mean [0, 0, 1.2, 1.6]; theta = 1 + 0.5 * that."""
    base = {"w": torch.ones(4, dtype=dtype)}
    expert = {"w": base["w"] + torch.tensor(TAU, dtype=dtype)}
    out = dare_ties.merge(base, [expert, expert], p=0.5, density=0.25, scaling=0.5, masks=MASKS)
    assert out["w"].dtype == dtype
    assert_close(out["w"], [1.0, 1.0, 1.6, 1.8])
    # without the trim the disjoint mean keeps every DARE'd entry (they do not conflict)
    out = dare_ties.merge(base, [expert, expert], p=0.5, density=1.0, scaling=0.5, masks=MASKS)
    assert_close(out["w"], [1.2, 0.6, 1.6, 1.8])


def test_p_zero_is_ties():
    base, experts = make_family(3, torch.float64)
    assert_params_close(dare_ties.merge(base, experts, p=0.0, density=0.3, merge_fn="sum"),
                        ties.merge(base, experts, density=0.3, merge_fn="sum"), atol=1e-12)


def test_seeded_and_properties():
    base, experts = make_family(3)
    a = dare_ties.merge(base, experts, seed=1)
    assert_params_close(dare_ties.merge(base, experts, seed=1), a, atol=0)
    assert_params_differ(dare_ties.merge(base, experts, seed=2), a)
    assert_params_close(dare_ties.merge(base, experts, scaling=0.0), base, atol=0)
    one = dare_ties.merge(base, experts[:1], p=0.0, density=1.0, scaling=1.0)
    assert_params_close(one, experts[0], atol=1e-6)
    check_buffers(a, base, experts)
