"""Weight-space features, Pearson/cosine similarities, the dual-space blend, activation moments."""
from __future__ import annotations

import pytest
import torch

from neulig.alignment import Group, PermutationSpec, Slot, random_permutation, spec_for
from neulig.alignment.similarity import CrossMoments, WeightSimilarity, blend, cross_similarity, weight_features
from neulig.errors import NeuligError
from tests.alignment.toys import MLP_A, MLP_B, MLP_SPEC


def test_unit_features_of_the_tiny_mlp():
    group = MLP_SPEC.group("hidden")
    f_a = weight_features(MLP_A, MLP_SPEC, group, None)
    f_b = weight_features(MLP_B, MLP_SPEC, group, {"hidden": torch.tensor([1, 0])})  # own perm never applies
    assert torch.equal(f_a, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 2.0]]))
    assert torch.allclose(f_b, torch.tensor([[0.0, 1.2, 2.2], [0.8, 0.0, 0.8]]))
    pearson = cross_similarity(f_a, f_b, "pearson")
    assert torch.allclose(pearson, torch.tensor([[-0.0524, 1.0], [0.9986, 0.0]]), atol=1e-4)
    assert torch.allclose(f_a @ f_b.T, torch.tensor([[2.2, 1.6], [5.6, 1.6]]))  # the inner products agree
    # cosine by hand: A0.B0 = 2.2, |A0| = sqrt 2, |B0| = sqrt(1.44 + 4.84) = sqrt 6.28
    assert cross_similarity(f_a, f_b, "cosine")[0, 0] == pytest.approx(2.2 / (2**0.5 * 6.28**0.5), abs=1e-6)


def test_features_see_the_neighbours_current_permutation():
    # x -> fc1 (h1: 3) -> fc2 (h2: 3) -> fc3: h2's features read fc2's columns in B's current h1 order
    spec = PermutationSpec("mlp3", (
        Group("h1", 3, (Slot("fc1", 0), Slot("fc2", 1))),
        Group("h2", 3, (Slot("fc2", 0), Slot("b2", 0), Slot("fc3", 1))),
    ), {"fc1": (3, 2), "fc2": (3, 3), "b2": (3,), "fc3": (1, 3)})
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in spec.shapes.items()}
    q = torch.tensor([1, 2, 0])
    got = weight_features(state, spec, spec.group("h2"), {"h1": q, "h2": torch.tensor([2, 1, 0])})
    expected = torch.cat([state["fc2"][:, q], state["b2"][:, None], state["fc3"].T], dim=1)
    assert torch.equal(got, expected)
    got_h1 = weight_features(state, spec, spec.group("h1"), {"h1": q, "h2": torch.tensor([2, 1, 0])})
    assert torch.equal(got_h1, torch.cat([state["fc1"], state["fc2"][[2, 1, 0]].T], dim=1))


def test_blend_oracle():
    s_w = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    s_act = torch.tensor([[0.1, 0.7], [0.6, 0.2]])
    assert torch.allclose(blend(s_w, s_act, 0.5), torch.tensor([[0.5, 0.4], [0.4, 0.5]]))
    assert torch.allclose(blend(s_w, s_act, 0.3), torch.tensor([[0.34, 0.52], [0.48, 0.38]]))
    assert blend(s_w, None, 1.0) is s_w and blend(None, s_act, 0.0) is s_act
    with pytest.raises(NeuligError, match="needs both"):
        blend(s_w, None, 0.5)


def test_relu_activation_correlation_oracle():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])  # 4 samples
    a = torch.relu(x @ MLP_A["W1"].T).T  # [units, samples]
    b = torch.relu(x @ MLP_B["W1"].T).T
    moments = CrossMoments()
    moments.update(a, b)
    assert torch.allclose(moments.similarity("pearson"), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), atol=1e-6)


def test_moments_match_the_direct_correlation_despite_large_means():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 300, generator=g, dtype=torch.float64) + 1000.0
    b = 0.5 * a[[3, 0, 4, 1, 2]] + 0.3 * torch.randn(5, 300, generator=g, dtype=torch.float64) - 500.0
    moments = CrossMoments()
    for lo, hi in [(0, 100), (100, 150), (150, 300)]:  # unequal batches are weighted by their size
        moments.update(a[:, lo:hi].float(), b[:, lo:hi].float())
    expected = torch.corrcoef(torch.cat([a, b]))[:5, 5:]
    assert torch.allclose(moments.similarity("pearson").double(), expected, atol=1e-4)
    cos = (a @ b.T) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :])
    assert torch.allclose(moments.similarity("cosine").double(), cos, atol=1e-5)


def test_dead_units_get_zero_similarity_and_errors_are_one_line():
    moments = CrossMoments()
    moments.update(torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    s = moments.similarity()
    assert torch.equal(s[0], torch.zeros(2)) and s[1].tolist() == pytest.approx([1.0, -1.0])
    with pytest.raises(NeuligError, match="no activations"):
        CrossMoments().similarity()
    with pytest.raises(NeuligError, match="unknown similarity 'l2'"):
        cross_similarity(torch.ones(2, 2), torch.ones(2, 2), "l2")


@pytest.mark.parametrize("measure", ["pearson", "cosine"])
def test_weight_similarity_equals_the_definition(tower, measure):
    visual, state = tower("vit_b32")
    spec = spec_for(visual)
    g = torch.Generator().manual_seed(0)
    other = {k: v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()}
    perm = random_permutation(spec, g)
    fast = WeightSimilarity(state, spec, measure)
    for group in spec.groups:
        expected = cross_similarity(weight_features(state, spec, group, None),
                                    weight_features(other, spec, group, perm), measure)
        assert torch.allclose(fast(other, group.name, perm), expected, atol=1e-5), group.name


def test_neighbours_are_the_groups_on_the_other_axes(tower):
    spec = spec_for(tower("tiny")[0])
    block = "transformer.resblocks.1"
    assert spec.neighbours[f"{block}.mlp"] == ("residual",)
    assert spec.neighbours[f"{block}.attn.qk"] == ("residual",)  # V shares in_proj's rows, not their columns
    assert set(spec.neighbours["residual"]) == {g.name for g in spec.groups} - {"residual"}
