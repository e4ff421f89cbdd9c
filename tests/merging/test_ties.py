"""TIES-Merging: docs/methods.md §4 oracle (both trim counts) and merge properties."""
from __future__ import annotations

import pytest
import torch

from neulig.errors import NeuligError
from neulig.merging import ties
from tests.merging.merge_toys import (
    DEVICES,
    DTYPES,
    assert_close,
    assert_params_close,
    assert_params_differ,
    check_buffers,
    make_family,
)

TAUS = [[0.5, -0.1, 0.3, -0.4, 0.05], [-0.2, 0.6, 0.1, -0.3, 0.02], [0.4, -0.5, -0.05, 0.2, 0.01]]


def oracle(dtype, split: bool = False):
    """theta_0 = 0, experts = the task vectors; ``split`` spreads the 5 entries over two tensors."""
    taus = torch.tensor(TAUS, dtype=dtype)
    if split:
        return {"a": torch.zeros(2, dtype=dtype), "b": torch.zeros(3, dtype=dtype)}, [{"a": t[:2], "b": t[2:]} for t in taus]
    return {"w": torch.zeros(5, dtype=dtype)}, [{"w": t} for t in taus]


def flat(state):
    return torch.cat([state[k].reshape(-1) for k in sorted(state)]).double()


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_trim_oracle(dtype):
    trimmed = ties.trim(torch.tensor(TAUS, dtype=dtype), 0.4, "exact")
    expected = [[0.5, 0, 0, -0.4, 0], [0, 0.6, 0, -0.3, 0], [0.4, -0.5, 0, 0, 0]]
    assert_close(trimmed, torch.tensor(expected, dtype=dtype))
    assert ties.elect(trimmed).tolist() == [1, 1, 1, -1, 1]  # sums [0.9, 0.1, 0, -0.7, 0]: zeros -> majority +


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_trim_oracle(dtype):
    trimmed = ties.trim(torch.tensor(TAUS, dtype=dtype), 0.4, "reference")  # keeps 3 per row
    expected = [[0.5, 0, 0.3, -0.4, 0], [-0.2, 0.6, 0, -0.3, 0], [0.4, -0.5, 0, 0.2, 0]]
    assert_close(trimmed, torch.tensor(expected, dtype=dtype))
    assert ties.elect(trimmed).tolist() == [1, 1, 1, -1, 1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("trim,merge_fn,expected", [
    ("exact", "mean", [0.45, 0.6, 0, -0.35, 0]),
    ("exact", "sum", [0.9, 0.6, 0, -0.7, 0]),
    ("exact", "max", [0.5, 0.6, 0, -0.4, 0]),
    ("reference", "mean", [0.45, 0.6, 0.3, -0.35, 0]),
])
def test_merge_oracle(dtype, split, trim, merge_fn, expected):
    """``split`` checks that the trim is global over the model, not per tensor (tensor 'a' has 2 entries)."""
    base, experts = oracle(dtype, split)
    out = ties.merge(base, experts, density=0.4, scaling=1.0, merge_fn=merge_fn, trim=trim)
    assert all(v.dtype == dtype for v in out.values())
    assert_close(flat(out), torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=1e-6)


def test_scaling_multiplies_merged_vector():
    base, experts = oracle(torch.float64)
    base = {"w": base["w"] + 1.0}
    experts = [{"w": e["w"] + 1.0} for e in experts]
    out = ties.merge(base, experts, density=0.4, scaling=0.5)
    assert_close(out["w"], 1.0 + 0.5 * torch.tensor([0.45, 0.6, 0, -0.35, 0], dtype=torch.float64))


def test_zero_sum_takes_global_majority_sign():
    positive = torch.tensor([[1.0, 0.5], [-1.0, 0.2]])  # sums [0, 0.7] -> majority +
    negative = torch.tensor([[1.0, -0.5], [-1.0, -0.2]])  # sums [0, -0.7] -> majority -
    assert ties.elect(positive).tolist() == [1, 1]
    assert ties.elect(negative).tolist() == [-1, -1]
    assert ties.ties_vector(negative, density=1.0).tolist() == pytest.approx([-1.0, -0.35])


def test_exact_count_with_ties_and_float_error():
    row = torch.ones(1, 4)
    assert ties.trim(row, 0.5, "exact").tolist() == [[1, 1, 0, 0]]  # exactly floor(0.5 * 4), ties by index
    mixed = torch.tensor([[3.0, -1.0, 1.0, 1.0, 0.5], [0.125, 0.25, 0.375, 0.75, 0.5]])
    assert ties.trim(mixed, 0.4, "exact").tolist() == [[3.0, -1.0, 0, 0, 0], [0, 0, 0, 0.75, 0.5]]
    assert int((ties.trim(row, 0.5, "reference") != 0).sum()) == 4  # >= threshold keeps every tie
    assert ties.keep_count(0.29, 100) == 29  # 0.29 * 100 = 28.999999999999996
    assert ties.keep_count(0.2, 7) == 1
    assert int((ties.trim(torch.randn(2, 10), 0.0, "exact") != 0).sum()) == 0


def test_bad_options_raise():
    base, experts = oracle(torch.float32)
    with pytest.raises(NeuligError):
        ties.merge(base, experts, trim="topk")
    with pytest.raises(NeuligError):
        ties.merge(base, experts, merge_fn="median")
    with pytest.raises(NeuligError):
        ties.merge(base, experts, density=1.5)


@pytest.mark.parametrize("merge_fn", ["mean", "sum", "max"])
def test_one_expert_no_trim_returns_itself(merge_fn):
    base, experts = make_family(1, torch.float64)
    out = ties.merge(base, experts, density=1.0, scaling=1.0, merge_fn=merge_fn)
    assert_params_close(out, experts[0], atol=1e-6)
    assert_params_differ(out, base)


def test_identical_experts_return_that_model():
    base, experts = make_family(1, torch.float64)
    out = ties.merge(base, experts * 3, density=1.0, scaling=1.0)
    assert_params_close(out, experts[0], atol=1e-6)


def test_scale_zero_returns_base():
    base, experts = make_family(3)
    out = ties.merge(base, experts, scaling=0.0)
    assert_params_close(out, base, atol=0)


def test_expert_order_does_not_matter():
    base, experts = make_family(3, torch.float64)
    a = ties.merge(base, experts, density=0.3)
    b = ties.merge(base, experts[::-1], density=0.3)
    assert_params_close(a, b, atol=1e-12)
    assert_params_differ(a, base)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16])
def test_buffers_dtype_device(dtype, device):
    base, experts = make_family(3, dtype)
    base = {k: v.to(device) for k, v in base.items()}
    experts = [{k: v.to(device) for k, v in e.items()} for e in experts]
    check_buffers(ties.merge(base, experts), base, experts)
