"""AdaMerging (arXiv 2310.02575) against the hand-checkable oracles of docs/methods.md §9, plus a runner smoke test.

tests/methods/toys.py (a Combination of 2 fake experts on the tiny open_clip ViT and 2 small datasets)
is shared with test_wemoe.py.
"""
from __future__ import annotations

import math

import pytest
import torch

from neulig.errors import NeuligError
from neulig.merging.adamerging import AdaMergingWeights, entropy, entropy_objective, merge_params
from neulig.merging.state_dict import classify_keys
from tests.merging.merge_toys import assert_close, make_family


def scalar_family(theta_0, taus):
    base = {"w": torch.tensor(theta_0)}
    return base, [{"w": base["w"] + torch.tensor(t)} for t in taus]


# -- merge ---------------------------------------------------------------------------------------
def test_task_wise_merge_oracle_clamps():
    base, experts = scalar_family([1.0, 1.0], [[2.0, 0.0], [0.0, -4.0]])
    lam = torch.tensor([0.25, 1.2])  # clamp -> [0.25, 1.0]
    taus = [{"w": e["w"] - base["w"]} for e in experts]
    assert_close(merge_params(base, taus, lam, ["w"])["w"], [1.5, -3.0])
    merger = AdaMergingWeights(base, experts, "task")
    with torch.no_grad():
        merger.lambdas.copy_(lam.view(1, 2))
    assert_close(merger.merged_state()["w"], [1.5, -3.0])
    assert_close(merger.ensemble_coefficients(), [0.2, 0.8])


def test_layer_wise_merge_is_per_tensor_and_keyed_by_name():
    base, experts = make_family(2)  # BatchNorm statistics and integer buffers interleaved with parameters
    keys = classify_keys(base).params
    merger = AdaMergingWeights(base, experts, "layer")
    assert merger.lambdas.shape == (len(keys), 2)
    with torch.no_grad():
        merger.lambdas.copy_(torch.rand(len(keys), 2, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2)
    state = merger.merged_state()
    taus = [{k: e[k] - base[k] for k in keys} for e in experts]
    expected = merge_params(base, taus, merger.lambdas.detach(), keys)
    assert set(state) == set(base)
    for j, key in enumerate(keys):
        c = merger.lambdas[j].detach().clamp(0, 1)
        assert_close(state[key], base[key] + c[0] * taus[0][key] + c[1] * taus[1][key], atol=1e-5, msg=key)
        assert_close(state[key], expected[key], atol=1e-5, msg=key)
    assert torch.equal(state["pos_ids"], base["pos_ids"]) and torch.equal(state["bn1.num_batches_tracked"],
                                                                          base["bn1.num_batches_tracked"])
    assert_close(merger.ensemble_coefficients(), merger.lambdas.detach().clamp(0, 1).mean(0) /
                 merger.lambdas.detach().clamp(0, 1).mean(0).sum())


def test_init_lambda_is_task_arithmetic():
    from neulig.merging import task_arithmetic

    base, experts = make_family(3)
    state = AdaMergingWeights(base, experts, "layer", init_lambda=0.3).merged_state()
    expected = task_arithmetic.merge(base, experts, 0.3)
    for key in classify_keys(base).params:
        assert_close(state[key], expected[key], atol=1e-5, msg=key)


def test_bad_granularity_is_one_line():
    base, experts = scalar_family([1.0], [[1.0]])
    with pytest.raises(NeuligError, match="granularity"):
        AdaMergingWeights(base, experts, "block")


# -- objective and optimisation --------------------------------------------------------------------
def toy_step(lam0: float) -> tuple[AdaMergingWeights, torch.Tensor]:
    """logits [lambda * 2, 0]: theta_0 = 0 and tau = 2 for a one-parameter "model"; one Adam step."""
    merger = AdaMergingWeights(*scalar_family([0.0], [[2.0]]), "task", init_lambda=lam0)
    optimizer = torch.optim.Adam(merger.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    logits = torch.cat([merger.merged_state()["w"], torch.zeros(1)]).view(1, 2)
    loss = entropy_objective([logits])
    loss.backward()
    grad = merger.lambdas.grad.clone()
    optimizer.step()
    return merger, torch.stack([loss.detach(), grad.view(())])


def test_one_adam_step_oracle():
    merger, (h, grad) = toy_step(0.3)
    assert h.item() == pytest.approx(0.650094, abs=1e-6)
    assert grad.item() == pytest.approx(-0.274541, abs=1e-6)
    assert merger.lambdas.item() == pytest.approx(0.301, abs=1e-7)  # moved by lr against the gradient's sign


@pytest.mark.parametrize("lam0", [1.2, -0.1])
def test_clamp_freezes_lambda_outside_unit_interval(lam0):
    merger, (_, grad) = toy_step(lam0)
    assert grad.item() == 0.0
    assert merger.lambdas.item() == torch.tensor(lam0).item()  # untouched, bit for bit


def test_entropy_is_softmax_times_log_softmax():
    assert entropy(torch.zeros(2, 4)).tolist() == pytest.approx([math.log(4)] * 2)
    assert entropy_objective([torch.zeros(3, 2), torch.zeros(1, 4)]).item() == pytest.approx(math.log(2) + math.log(4))
