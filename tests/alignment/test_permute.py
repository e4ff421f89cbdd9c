"""Applying, inverting and checking permutations (hand-sized toy specs)."""
from __future__ import annotations

import pytest
import torch

from neulig.alignment import (
    Group,
    PermutationSpec,
    Slot,
    check_permutation,
    identity_permutation,
    inverse_permutation,
    permute_state,
    random_permutation,
)
from neulig.alignment.permute import head_map
from neulig.errors import NeuligError

# x -> fc1 (3 hidden) -> fc2 (1 output); a packed "qkv"-like tensor whose rows 0:4 and 4:8 are two groups
SHAPES = {"fc1.weight": (3, 2), "fc1.bias": (3,), "fc2.weight": (1, 3), "packed": (8, 3), "count": ()}
HIDDEN = Group("hidden", 3, (Slot("fc1.weight", 0), Slot("fc1.bias", 0), Slot("fc2.weight", 1), Slot("packed", 1)))
QK = Group("qk", 4, (Slot("packed", 0, 0),), heads=2, head_partner="v")
V = Group("v", 4, (Slot("packed", 0, 4),), heads=2, head_partner="qk")
SPEC = PermutationSpec("toy", (HIDDEN, QK, V), SHAPES, fixed=("count",))


def toy_state() -> dict[str, torch.Tensor]:
    state = {k: torch.arange(float(torch.Size(s).numel())).reshape(s) for k, s in SHAPES.items() if k != "count"}
    state["count"] = torch.tensor(7)
    return state


def test_unit_i_becomes_unit_p_i_on_every_slot():
    state = toy_state()
    p = torch.tensor([2, 0, 1])
    perm = dict(identity_permutation(SPEC), hidden=p)
    out = permute_state(state, SPEC, perm)
    assert torch.equal(out["fc1.weight"], state["fc1.weight"][[2, 0, 1]])
    assert torch.equal(out["fc1.bias"], torch.tensor([2.0, 0.0, 1.0]))
    assert torch.equal(out["fc2.weight"], state["fc2.weight"][:, [2, 0, 1]])
    assert torch.equal(out["packed"], state["packed"][:, [2, 0, 1]])
    assert out["count"] == 7 and out["count"].dtype == torch.int64


def test_slices_of_one_axis_move_separately():
    state = toy_state()
    perm = dict(identity_permutation(SPEC), qk=torch.tensor([2, 3, 0, 1]), v=torch.tensor([3, 2, 1, 0]))
    out = permute_state(state, SPEC, perm)
    assert torch.equal(out["packed"], state["packed"][[2, 3, 0, 1, 7, 6, 5, 4]])


def test_permute_is_pure_and_inverse_undoes_it():
    state = toy_state()
    before = {k: v.clone() for k, v in state.items()}
    perm = random_permutation(SPEC, torch.Generator().manual_seed(0))
    out = permute_state(state, SPEC, perm)
    assert all(torch.equal(state[k], before[k]) for k in state)
    assert all(out[k].data_ptr() != state[k].data_ptr() for k in state)  # new tensors, even the untouched
    back = permute_state(out, SPEC, inverse_permutation(perm))
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert not torch.equal(out["packed"], state["packed"])


def test_random_permutations_respect_heads_and_partners():
    for seed in range(20):
        perm = random_permutation(SPEC, torch.Generator().manual_seed(seed))
        check_permutation(SPEC, perm)
        assert torch.equal(head_map(perm["qk"], 2), head_map(perm["v"], 2))


@pytest.mark.parametrize("bad, message", [
    ({"hidden": torch.tensor([0, 0, 1])}, "not a permutation"),
    ({"qk": torch.tensor([0, 2, 1, 3]), "v": torch.tensor([0, 2, 1, 3])}, "splits an attention head"),
    ({"qk": torch.tensor([2, 3, 0, 1])}, "pair the heads differently"),
])
def test_check_permutation_rejects(bad, message):
    with pytest.raises(NeuligError, match=message):
        check_permutation(SPEC, dict(identity_permutation(SPEC), **bad))
