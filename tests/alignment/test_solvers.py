"""Linear assignment, whole-head assignment and the coordinate-descent loop on hand-checkable toys."""
from __future__ import annotations

import itertools

import pytest
import torch

from neulig.alignment import Group, PermutationSpec, Slot, identity_permutation, permute_state
from neulig.alignment.permute import head_map
from neulig.alignment.similarity import blend, cross_similarity, weight_features
from neulig.alignment.solvers import (
    coordinate_descent,
    head_assignment,
    linear_assignment,
    matched_similarity,
    solve,
)
from tests.alignment.toys import MLP_A, MLP_B, MLP_SPEC


def total(score: torch.Tensor, p: list[int] | torch.Tensor) -> float:
    return float(sum(score[i, int(j)] for i, j in enumerate(p)))


def test_blend_then_lap_oracle_2x2():
    s_w = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    s_act = torch.tensor([[0.1, 0.7], [0.6, 0.2]])
    s = blend(s_w, s_act, 0.5)
    assert linear_assignment(s).tolist() == [0, 1]  # identity: 1.0 vs 0.8
    assert total(s, [0, 1]) == pytest.approx(1.0) and total(s, [1, 0]) == pytest.approx(0.8)
    s = blend(s_w, s_act, 0.3)
    assert linear_assignment(s).tolist() == [1, 0]  # swap: 1.0 vs 0.72
    assert total(s, [1, 0]) == pytest.approx(1.0) and total(s, [0, 1]) == pytest.approx(0.72)


def test_blend_then_lap_oracle_3x3():
    s_w = torch.tensor([[1.0, 0.2, 0.0], [0.2, 0.0, 0.6], [0.0, 0.8, 0.4]], dtype=torch.float64)
    s_act = torch.tensor([[0.0, 0.6, 0.2], [0.8, 0.2, 0.0], [0.2, 0.0, 0.6]], dtype=torch.float64)
    # f = 0.5: S = [[.5, .4, .1], [.5, .1, .3], [.1, .4, .5]]; totals of p = (p0, p1, p2):
    #   (0,1,2) 1.1  (0,2,1) 1.2  (1,0,2) 1.4  (1,2,0) 0.8  (2,0,1) 1.0  (2,1,0) 0.3  -> (1,0,2).
    #   A row-by-row greedy pick takes 0 -> 0 (0.5) first and ends at (0,2,1) = 1.2.
    # f = 0.8: S = [[.8, .28, .04], [.32, .04, .48], [.04, .64, .44]]:
    #   (0,1,2) 1.28  (0,2,1) 1.92  (1,0,2) 1.04  (1,2,0) 0.80  (2,0,1) 1.00  (2,1,0) 0.12  -> (0,2,1).
    hand = {0.5: ([1, 0, 2], 1.4), 0.8: ([0, 2, 1], 1.92)}
    for f, (best, score) in hand.items():
        s = blend(s_w, s_act, f)
        assert linear_assignment(s).tolist() == best
        assert total(s, best) == pytest.approx(score)
        assert max(total(s, p) for p in itertools.permutations(range(3))) == pytest.approx(score)


def test_tiny_mlp_oracle_aligns_and_merges():
    group = MLP_SPEC.group("hidden")
    s = cross_similarity(weight_features(MLP_A, MLP_SPEC, group, None),
                         weight_features(MLP_B, MLP_SPEC, group, identity_permutation(MLP_SPEC)))
    p = linear_assignment(s)
    assert p.tolist() == [1, 0]
    aligned = permute_state(MLP_B, MLP_SPEC, {"hidden": p})
    merged = {k: (MLP_A[k] + aligned[k]) / 2 for k in MLP_A}
    assert torch.allclose(merged["W1"], torch.tensor([[0.9, 0.0], [0.0, 1.1]]))
    assert torch.allclose(merged["W2"], torch.tensor([[0.9, 2.1]]))
    assert matched_similarity(s, p) == pytest.approx((0.9986 + 1.0) / 2, abs=1e-4)


def test_head_assignment_keeps_heads_whole():
    # 2 heads of 2 units. The plain LAP takes 1 -> 2 and 2 -> 1 (4.0 in total), crossing heads.
    # Head pairs: (0,0) and (1,1) blocks score 1.2 each (mean 0.6), (0,1) and (1,0) 1.0 (mean 0.5),
    # so whole-head matching keeps the heads in place: identity, total 2.4.
    s = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                      [0.0, 0.2, 1.0, 0.0],
                      [0.0, 1.0, 0.2, 0.0],
                      [0.0, 0.0, 0.0, 1.0]])
    assert linear_assignment(s).tolist() == [0, 2, 1, 3]
    (p,) = head_assignment([s], heads=2)
    assert p.tolist() == [0, 1, 2, 3]
    assert solve([s], heads=2)[0].tolist() == [0, 1, 2, 3] and solve([s])[0].tolist() == [0, 2, 1, 3]


def test_head_assignment_recovers_a_head_permutation():
    g = torch.Generator().manual_seed(0)
    heads, d = 4, 3
    true = torch.cat([h * d + torch.randperm(d, generator=g) for h in torch.randperm(heads, generator=g).tolist()])
    s = 0.3 * torch.rand(heads * d, heads * d, generator=g)
    s[torch.arange(heads * d), true] += 1.0
    (p,) = head_assignment([s], heads)
    assert torch.equal(p, true)


def test_head_partners_share_the_head_pairing():
    eye = torch.eye(2)

    def blocks(same: float, swapped: float) -> torch.Tensor:
        return torch.cat([torch.cat([same * eye, swapped * eye], 1), torch.cat([swapped * eye, same * eye], 1)])

    qk, v = blocks(0.6, 0.5), blocks(0.1, 0.9)  # alone, Q/K keeps the heads (1.2 vs 1.0); V swaps (1.8 vs 0.2)
    assert head_map(head_assignment([qk], 2)[0], 2).tolist() == [0, 1]
    p_qk, p_v = head_assignment([qk, v], 2)  # jointly: 1.2 + 0.2 < 1.0 + 1.8, so both swap
    assert head_map(p_qk, 2).tolist() == head_map(p_v, 2).tolist() == [1, 0]
    assert p_qk.tolist() == [2, 3, 0, 1]
    assert [p.tolist() for p in solve([qk, v], heads=2)] == [p_qk.tolist(), p_v.tolist()]


TWO = PermutationSpec("two", (Group("a", 2, (Slot("x", 0),)), Group("b", 2, (Slot("y", 0),))), {"x": (2,), "y": (2,)})


def test_coordinate_descent_stops_after_tol_sweeps_without_progress():
    s = {"a": torch.tensor([[0.1, 0.9], [0.8, 0.2]]), "b": torch.eye(2)}
    out = coordinate_descent(TWO, lambda name, perm: s[name], identity_permutation(TWO), max_sweeps=100, tol=3, seed=0)
    assert out.permutation["a"].tolist() == [1, 0] and out.permutation["b"].tolist() == [0, 1]
    assert out.sweeps == 1 + 3 and out.history == pytest.approx([0.925] * 4)
    capped = coordinate_descent(TWO, lambda name, perm: s[name], identity_permutation(TWO), max_sweeps=2, tol=3, seed=0)
    assert capped.sweeps == 2


def test_coordinate_descent_keeps_the_best_sweep():
    calls = {"n": 0}

    def worsening(name: str, perm) -> torch.Tensor:  # the first sweep sees the best similarities
        calls["n"] += 1
        return torch.eye(2) if calls["n"] <= 2 else torch.tensor([[0.0, 0.5], [0.5, 0.0]])

    out = coordinate_descent(TWO, worsening, identity_permutation(TWO), max_sweeps=10, tol=2, seed=0)
    assert out.history == pytest.approx([1.0, 0.5, 0.5])
    assert out.permutation["a"].tolist() == [0, 1] and out.permutation["b"].tolist() == [0, 1]
