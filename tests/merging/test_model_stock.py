"""Model Stock: docs/methods.md §1 oracles A, B (both N > 2 reductions), C, and merge properties."""
from __future__ import annotations

import logging

import pytest
import torch

from neulig.errors import NeuligError
from neulig.merging import average, model_stock
from neulig.utils.log import log
from tests.merging.merge_toys import (
    DTYPES,
    assert_close,
    assert_params_close,
    assert_params_differ,
    check_buffers,
    make_family,
)


def states(base, deltas, dtype):
    b = torch.tensor(base, dtype=dtype)
    return {"w": b}, [{"w": b + torch.tensor(d, dtype=dtype)} for d in deltas]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", ["cosine", "angle"])
def test_oracle_a_two_models(dtype, reduce):
    base, experts = states([1, 1], [[1, 0], [1, 1]], dtype)
    c = model_stock.cosine([e["w"].float() - base["w"].float() for e in experts], reduce)
    assert float(c) == pytest.approx(0.7071068, abs=1e-6)
    assert float(model_stock.ratio(c, 2)) == pytest.approx(0.8284271, abs=1e-6)
    out = model_stock.merge(base, experts, reduce=reduce)
    assert out["w"].dtype == dtype
    assert_close(out["w"], [1.828427, 1.414214], atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce,c,t,expected", [
    ("cosine", 0.4714045, 0.7279221, [0.485281, 0.485281, 0.0]),
    ("angle", 0.5, 0.75, [0.5, 0.5, 0.0]),
])
def test_oracle_b_three_models(dtype, reduce, c, t, expected):
    base, experts = states([0, 0, 0], [[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype)
    got_c = model_stock.cosine([e["w"].float() for e in experts], reduce)
    assert float(got_c) == pytest.approx(c, abs=1e-6)
    assert float(model_stock.ratio(got_c, 3)) == pytest.approx(t, abs=1e-6)
    assert_close(model_stock.merge(base, experts, reduce=reduce)["w"], expected, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_oracle_c_ignored_key_gets_plain_average(dtype):
    base, experts = states([0.0], [[3.0], [5.0]], dtype)
    assert model_stock.merge(base, experts, ignore=["w"])["w"].tolist() == [4.0]
    # the same experts with a second key that is not ignored: only "w" is forced to the average
    base["v"] = torch.tensor([1.0, 1.0], dtype=dtype)
    experts[0]["v"] = base["v"] + torch.tensor([1.0, 0.0], dtype=dtype)
    experts[1]["v"] = base["v"] + torch.tensor([1.0, 1.0], dtype=dtype)
    out = model_stock.merge(base, experts, ignore=["w"])
    assert out["w"].tolist() == [4.0]
    assert_close(out["v"], [1.828427, 1.414214], atol=1e-6)


def test_frozen_tensor_is_the_average_and_finite():
    base, experts = states([2.0, -1.0], [[0.0, 0.0], [0.0, 0.0]], torch.float32)
    out = model_stock.merge(base, experts)
    assert torch.equal(out["w"], base["w"])  # average of identical tensors; no 0/0


def test_parallel_deltas_give_the_average():
    """c = 1 -> t = 1: theta_i = theta_0 + s_i * delta gives the plain average."""
    base, experts = states([1.0, 2.0, 3.0], [[0.1, 0.2, -0.3], [0.3, 0.6, -0.9], [0.2, 0.4, -0.6]], torch.float64)
    out = model_stock.merge(base, experts)
    assert_close(out["w"], average.merge(base, experts)["w"], atol=1e-6)
    assert not torch.allclose(out["w"], base["w"])


def test_identical_experts_return_that_model_and_one_expert_raises():
    base, experts = make_family(1, torch.float64)
    assert_params_close(model_stock.merge(base, experts * 2), experts[0], atol=1e-6)
    with pytest.raises(NeuligError):
        model_stock.merge(base, experts)


def test_pulls_the_average_toward_the_anchor():
    base, experts = make_family(2, torch.float64, spread=0.5)
    out, avg = model_stock.merge(base, experts), average.merge(base, experts)
    key = "layer1.0.conv1.weight"  # independent random deltas: c ~ 0, t ~ 0 -> near theta_0
    assert (out[key] - base[key]).norm() < 0.5 * (avg[key] - base[key]).norm()
    assert_params_differ(out, avg)


def test_expert_order_does_not_matter():
    base, experts = make_family(3, torch.float64)
    for reduce in ("cosine", "angle"):
        assert_params_close(model_stock.merge(base, experts, reduce=reduce),
                            model_stock.merge(base, experts[::-1], reduce=reduce), atol=1e-6)


def test_non_positive_cosine_is_logged(caplog):
    base, experts = states([0.0, 0.0], [[1.0, 0.0], [-1.0, 0.5]], torch.float32)
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="neulig"):
            out = model_stock.merge(base, experts)
    finally:
        log.removeHandler(caplog.handler)
    assert "cos <= 0" in caplog.text
    assert torch.isfinite(out["w"]).all()


@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16])
def test_buffers_and_dtype(dtype):
    base, experts = make_family(3, dtype)
    check_buffers(model_stock.merge(base, experts), base, experts)


def test_bad_reduce_raises():
    base, experts = make_family(2)
    with pytest.raises(NeuligError):
        model_stock.merge(base, experts, reduce="median")
