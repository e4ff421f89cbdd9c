"""align(): exact recovery of known permutations, merging invariance, identities, errors."""
from __future__ import annotations

import pytest
import torch

from neulig.alignment import (
    align,
    check_permutation,
    identity_permutation,
    inverse_permutation,
    permute_state,
    random_permutation,
    spec_for,
)
from neulig.alignment.activations import collect_moments
from neulig.alignment.similarity import WeightSimilarity, activation_similarity, blend
from neulig.alignment.solvers import coordinate_descent, matched_similarity, solve_once
from neulig.config.align import AlignConfig
from neulig.errors import NeuligError
from tests.alignment.towers import TOWERS, build, features, images, lively_state


def shuffled(tower, name: str, seed: int = 1):
    """(visual, spec, state, a shuffled copy of the state, the shuffle)."""
    visual, state = tower(name)
    spec = spec_for(visual)
    perm = random_permutation(spec, torch.Generator().manual_seed(seed))
    return visual, spec, state, permute_state(state, spec, perm), perm


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["activation", "mudsc"])
@pytest.mark.parametrize("name", TOWERS)
def test_recovers_the_inverse_permutation_exactly(tower, name, method):
    visual, spec, state, copy, perm = shuffled(tower, name)
    result = align(state, [copy], visual, method, images(visual, batches=2, batch=8))
    inverse = inverse_permutation(perm)
    wrong = [g for g in inverse if not torch.equal(result.permutations[0][g], inverse[g])]
    assert wrong == []
    assert same_state(result.states[1], state)  # bit-identical: un-shuffling only moves values
    assert all(r.similarity > 0.99 for r in result.reports[0].values())
    # MuDSC starts from the exact matching: one sweep scores it, then tol sweeps bring no progress
    assert result.sweeps == ((0,) if method == "activation" else (1 + AlignConfig(method=method).tol,))
    assert result.seconds > 0


@pytest.mark.parametrize("name", TOWERS)
def test_weight_matching_reaches_the_true_objective(tower, name):
    visual, spec, state, copy, perm = shuffled(tower, name)
    result = align(state, [copy], visual, "weight")
    s_w = WeightSimilarity(state, spec)
    true = inverse_permutation(perm)

    def objective(p):
        return sum(matched_similarity(s_w(copy, g.name, p), p[g.name]) for g in spec.groups) / len(spec.groups)

    found = result.permutations[0]
    assert objective(found) >= objective(true) - 1e-6
    assert objective(true) > 0.999 > objective(inverse_permutation(true))  # the objective can tell them apart
    assert sum(r.similarity for r in result.reports[0].values()) / len(spec.groups) == pytest.approx(objective(found))


@pytest.mark.parametrize("method", ["weight", "mudsc"])
@pytest.mark.parametrize("name", TOWERS)
def test_aligning_an_unrelated_model_keeps_its_function(tower, name, method):
    visual, state = tower(name)
    spec = spec_for(visual)
    other = lively_state(build(name, seed=7), seed=7)  # an independent random init
    x = images(visual, batches=1, batch=8, seed=9)
    result = align(state, [other], visual, method, x, AlignConfig(method=method, tol=2))
    check_permutation(spec, result.permutations[0])  # whole heads, Q/K and V paired alike
    assert sum(r.unmoved for r in result.reports[0].values()) < 0.5 * len(spec.groups)  # it did move units
    assert (features(visual, result.states[1], x[0]) - features(visual, other, x[0])).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["rn50", "tiny"])
def test_averaging_with_the_aligned_copy_gives_the_model_back(tower, name):
    visual, spec, state, copy, _ = shuffled(tower, name, seed=4)
    (aligned,) = align(state, [copy], visual, "mudsc", images(visual, batches=1, batch=16)).aligned
    merged = {k: (v + aligned[k]) / 2 if v.is_floating_point() else v.clone() for k, v in state.items()}
    assert same_state(merged, state)  # BatchNorm running statistics included
    naive = {k: (v + copy[k]) / 2 if v.is_floating_point() else v for k, v in state.items()}
    assert not same_state(naive, state)


@pytest.mark.parametrize("method", ["weight", "activation", "mudsc"])
def test_reference_and_an_identical_model_come_back_bit_identical(tower, method):
    visual, state = tower("rn50")
    before = {k: v.clone() for k, v in state.items()}
    twin = {k: v.clone() for k, v in state.items()}
    result = align(state, [twin], visual, method, images(visual, batches=1, batch=8))
    assert same_state(result.states[0], before) and same_state(state, before)  # not modified in place
    assert same_state(result.states[1], before)
    assert all(torch.equal(p, torch.arange(p.numel())) for p in result.permutations[0].values())
    assert all(r.unmoved == 1.0 for r in result.reports[0].values())


def test_each_other_model_is_aligned_on_its_own(tower):
    visual, spec, state, copy1, perm1 = shuffled(tower, "vit_b32", seed=1)
    perm2 = random_permutation(spec, torch.Generator().manual_seed(2))
    copy2 = permute_state(state, spec, perm2)
    result = align(state, [copy1, copy2], visual, "mudsc", images(visual, batches=2, batch=8),
                   AlignConfig(method="mudsc", fix_rate=0.3, tol=2))
    for got, perm in zip(result.permutations, (perm1, perm2)):
        assert all(torch.equal(got[g], p) for g, p in inverse_permutation(perm).items())
    assert len(result.states) == 3 and all(same_state(s, state) for s in result.aligned)
    for report, perm in zip(result.reports, (perm1, perm2)):
        group = "transformer.resblocks.0.mlp"
        assert report[group].unmoved == pytest.approx(float((torch.argsort(perm[group]) == torch.arange(256))
                                                             .double().mean()))


def test_cosine_similarity_also_recovers(tower):
    visual, spec, state, copy, perm = shuffled(tower, "tiny", seed=5)
    options = AlignConfig(method="mudsc", similarity="cosine")
    result = align(state, [copy], visual, "mudsc", images(visual, batches=1, batch=8), options)
    assert same_state(result.states[1], state)


def test_errors_are_one_line(tower):
    visual, state = tower("tiny")
    x = images(visual, batches=1, batch=2)
    cases = [
        (lambda: align(state, [state], visual, "zip", x), "align.method=zip: one of null, weight, activation, mudsc"),
        (lambda: align(state, [], visual, "weight"), "at least one model"),
        (lambda: align(state, [state], visual, "mudsc", None), "needs unlabeled images"),
        (lambda: align(state, [{k: v for k, v in state.items() if k != "proj"}], visual, "weight"), "model 1"),
        (lambda: align(state, [state], torch.nn.Conv2d(3, 3, 1), "weight"), "cannot align a Conv2d"),
        (lambda: align(state, [state], visual, "mudsc", [], AlignConfig(method="mudsc")), "no activations"),
        (lambda: align(state, [state], visual, "weight", None, AlignConfig(method="weight", fix_rate=1.5)),
         "align.fix_rate=1.5"),
        (lambda: align(state, [state], visual, "weight", None, AlignConfig(method="weight", tol=0)), "align.tol=0"),
        (lambda: align(state, [state], visual, "weight", None, AlignConfig(method="weight", similarity="l1")),
         "align.similarity=l1"),
    ]
    for call, message in cases:
        with pytest.raises(NeuligError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["tiny", "rn50"])
def test_cached_similarities_change_nothing(tower, name):
    """align() reuses S and the LAP solution of a group whose neighbours did not move; recomputing every
    similarity on every visit must give the same sweeps and permutations."""
    visual, state = tower(name)
    spec = spec_for(visual)
    other = lively_state(build(name, seed=11), seed=11)
    x = images(visual, batches=1, batch=8, seed=2)
    result = align(state, [other], visual, "mudsc", x)
    (moments,) = collect_moments(visual, spec, state, [other], x)
    s_act = {g: activation_similarity(sites) for g, sites in moments.items()}
    s_w = WeightSimilarity(state, spec)

    def fresh(group: str, perm) -> torch.Tensor:  # a new tensor on every call: nothing is reused
        return blend(s_w(other, group, perm), s_act[group], 0.5)

    start = solve_once(spec, lambda group, _: s_act[group], identity_permutation(spec))
    plain = coordinate_descent(spec, fresh, start, max_sweeps=100, tol=5, seed=0)
    assert result.sweeps[0] == plain.sweeps > 1 + 5  # some sweeps did make progress
    assert result.sweep_scores[0] == pytest.approx(plain.history, abs=1e-6)
    assert all(torch.equal(result.permutations[0][g], p) for g, p in plain.permutation.items())
