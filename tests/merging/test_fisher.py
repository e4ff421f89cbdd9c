"""Fisher merging: docs/methods.md §7 merge and estimation oracles, estimator paths, merge properties."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neulig.errors import NeuligError
from neulig.merging import average, fisher
from neulig.merging.state_dict import normalized
from tests.merging.merge_toys import (
    DTYPES,
    assert_close,
    assert_params_close,
    assert_params_differ,
    check_buffers,
    make_family,
)

X = torch.tensor([[1.0, 2.0]])
EXACT = [[0.1875, 0.75], [0.1875, 0.75]]
EMPIRICAL = {0: [[0.0625, 0.25], [0.0625, 0.25]], 1: [[0.5625, 2.25], [0.5625, 2.25]]}


def oracle(dtype):
    base = {"w": torch.zeros(2, dtype=dtype)}
    experts = [{"w": torch.tensor([1.0, 2.0], dtype=dtype)}, {"w": torch.tensor([3.0, 6.0], dtype=dtype)}]
    fishers = [{"w": torch.tensor([3.0, 0.0])}, {"w": torch.tensor([1.0, 0.0])}]
    return base, experts, fishers


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize,favor_target,expected", [
    (False, True, [1.5, 2.0]),   # F_1 floored only: the all-zero coordinate falls back to expert 1
    (False, False, [1.5, 4.0]),  # every Fisher floored: that coordinate is the plain average
    (True, True, [2.0, 2.0]),    # coefficients 0.5/3 and 0.5/1
])
def test_merge_oracle(dtype, normalize, favor_target, expected):
    base, experts, fishers = oracle(dtype)
    out = fisher.merge(base, experts, fishers, weights=[0.5, 0.5], normalize=normalize, favor_target=favor_target)
    assert out["w"].dtype == dtype
    assert_close(out["w"], expected, atol=1e-6)


def test_favor_target_is_order_dependent_by_design_and_missing_keys_are_zero_fisher():
    base, experts, fishers = oracle(torch.float64)
    swapped = fisher.merge(base, experts[::-1], fishers[::-1], normalize=False)
    assert_close(swapped["w"], [1.5, 6.0])  # the zero-Fisher coordinate now follows the new first expert
    out = fisher.merge(base, experts, [{}, {}], normalize=False)
    assert_close(out["w"], experts[0]["w"])
    out = fisher.merge(base, experts, [{}, {}], normalize=False, favor_target=False)
    assert_close(out["w"], [2.0, 4.0])


def model_with_p(p0: float = 0.75) -> nn.Linear:
    """logits = W x with x = [1, 2] and p = [p0, 1 - p0]."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[math.log(p0 / (1 - p0)), 0.0], [0.0, 0.0]]))
    return model


def logits_fn(model, images):
    return model(images)


@pytest.mark.parametrize("vectorize", [True, False])
def test_estimation_oracle(vectorize):
    model = model_with_p()
    exact = fisher.estimate_fisher(model, logits_fn, [X], mode="exact", vectorize=vectorize)
    assert list(exact) == ["weight"]
    assert_close(exact["weight"], EXACT)
    for label, expected in EMPIRICAL.items():
        emp = fisher.estimate_fisher(model, logits_fn, [(X, torch.tensor([label]))], mode="empirical", vectorize=vectorize)
        assert_close(emp["weight"], expected)
    # the mean over examples (two batches, one example each)
    both = fisher.estimate_fisher(model, logits_fn, [(X, torch.tensor([0])), (X, torch.tensor([1]))], vectorize=vectorize)
    assert_close(both["weight"], [[0.3125, 1.25], [0.3125, 1.25]])
    # num_batches stops early
    first = fisher.estimate_fisher(model, logits_fn, [(X, torch.tensor([0])), (X, torch.tensor([1]))], num_batches=1,
                                   vectorize=vectorize)
    assert_close(first["weight"], EMPIRICAL[0])


def test_sampled_fisher_is_unbiased_for_exact():
    model = model_with_p()
    sampled = fisher.estimate_fisher(model, logits_fn, [X.repeat(4000, 1)], mode="sampled", seed=0)
    assert_close(sampled["weight"], EXACT, rtol=0.05, atol=0)
    assert not torch.allclose(sampled["weight"], torch.tensor(EXACT))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


def test_vmap_and_loop_agree_on_a_batchnorm_net_and_state_is_restored():
    torch.manual_seed(0)
    net = Net().train()
    net.fc1.weight.requires_grad_(False)
    images, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    for mode in ("exact", "empirical"):
        a = fisher.estimate_fisher(net, logits_fn, [(images, labels)], mode=mode, vectorize=True, chunk_size=4)
        b = fisher.estimate_fisher(net, logits_fn, [(images, labels)], mode=mode, vectorize=False)
        assert sorted(a) == sorted(n for n, _ in net.named_parameters())  # frozen fc1.weight included
        for k in a:
            assert_close(a[k], b[k], atol=1e-6, rtol=1e-4, msg=k)
        assert float(a["fc1.weight"].sum()) > 0
    assert net.training and not net.fc1.weight.requires_grad and net.fc2.weight.requires_grad
    with pytest.raises(NeuligError):
        fisher.estimate_fisher(net, logits_fn, [images], mode="empirical")  # no labels
    with pytest.raises(NeuligError):
        fisher.estimate_fisher(net, logits_fn, [], mode="exact")


def ones_like_params(state):
    return {k: torch.ones_like(v, dtype=torch.float32) for k, v in state.items() if v.is_floating_point()}


def test_uniform_fisher_is_the_weighted_average():
    base, experts = make_family(3, torch.float64)
    fishers = [ones_like_params(e) for e in experts]
    for weights in (None, [3.0, 1.0, 1.0]):
        out = fisher.merge(base, experts, fishers, weights=weights, normalize=False)
        assert_params_close(out, average.merge(base, experts, weights=weights), atol=1e-9)
        check_buffers(out, base, experts, normalized(weights, 3))
    assert fisher.ensemble_weights(2, weights=[3.0, 1.0], floor=1e-6) == [0.75, 0.25]


def test_properties():
    base, experts = make_family(3, torch.float64)
    g = torch.Generator().manual_seed(0)
    fishers = [{k: torch.rand(v.shape, generator=g) + 0.1 for k, v in ones_like_params(e).items()} for e in experts]
    out = fisher.merge(base, experts, fishers)
    assert_params_differ(out, average.merge(base, experts))
    # positive Fishers: the floor never binds, so expert order does not matter
    assert_params_close(out, fisher.merge(base, experts[::-1], fishers[::-1]), atol=1e-9)
    assert_params_close(fisher.merge(base, experts[:1], fishers[:1]), experts[0], atol=1e-9)
    assert_params_close(fisher.merge(base, [experts[0]] * 3, fishers), experts[0], atol=1e-9)
    with pytest.raises(NeuligError):
        fisher.merge(base, experts, fishers[:2])


@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16])
def test_buffers_and_dtype(dtype):
    base, experts = make_family(2, dtype)
    check_buffers(fisher.merge(base, experts, [ones_like_params(e) for e in experts]), base, experts)
