"""Permutations of a spec's groups and applying them to a state dict.

A permutation of a group of n units is an index vector p (int64, length n): after applying it,
unit i of the model is what was unit p[i] (``index_select`` with p on every slot of the group).
Aligning model B to model A looks for p such that B's unit p[i] matches A's unit i; if B is A with
its units shuffled by q, the answer is the inverse of q.

For a head group (H heads of d units) p must map whole heads: p[h d + j] = pi(h) d + sigma_h(j), with
one head map pi shared by the group and its head partner and free within-head maps sigma_h.
"""
from __future__ import annotations

import torch
from torch import Tensor

from neulig.alignment.spec import PermutationSpec
from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict

Permutation = dict[str, Tensor]  # group name -> int64 index vector


def identity_permutation(spec: PermutationSpec) -> Permutation:
    return {g.name: torch.arange(g.size) for g in spec.groups}


def inverse_permutation(perm: Permutation) -> Permutation:
    return {name: torch.argsort(p) for name, p in perm.items()}


def head_map(p: Tensor, heads: int) -> Tensor:
    """The head each head of ``p`` takes its units from (``p`` must map whole heads)."""
    d = p.numel() // heads
    return p.view(heads, d)[:, 0] // d


def random_permutation(spec: PermutationSpec, generator: torch.Generator) -> Permutation:
    """A uniformly random valid permutation: whole heads, one head map per pair of head partners."""
    perm: Permutation = {}
    for step in spec.steps:
        first = spec.group(step[0])
        heads_order = torch.randperm(first.heads, generator=generator)
        for name in step:
            g = spec.group(name)
            within = [torch.randperm(g.head_dim, generator=generator) for _ in range(g.heads)]
            perm[name] = torch.cat([int(h) * g.head_dim + within[i] for i, h in enumerate(heads_order)])
    return perm


def check_permutation(spec: PermutationSpec, perm: Permutation) -> None:
    """Raise a one-line NeuligError unless ``perm`` is a valid permutation for every group of ``spec``."""
    for group in spec.groups:
        p = perm.get(group.name)
        if p is None or p.shape != (group.size,) or not torch.equal(torch.sort(p.cpu()).values,
                                                                     torch.arange(group.size)):
            raise NeuligError(f"permutation of group {group.name!r} is missing or not a permutation of {group.size}")
        if group.heads > 1:
            d = group.head_dim
            blocks = p.view(group.heads, d)
            if not torch.equal(blocks // d, head_map(p, group.heads)[:, None].expand(-1, d)):
                raise NeuligError(f"permutation of group {group.name!r} splits an attention head")
            if group.head_partner is not None and not torch.equal(
                    head_map(p, group.heads), head_map(perm[group.head_partner], group.heads)):
                raise NeuligError(f"groups {group.name!r} and {group.head_partner!r} pair the heads differently")


def axis_indices(spec: PermutationSpec, key: str, shape: tuple[int, ...], perm: Permutation,
                 skip_axis: int | None = None) -> dict[int, Tensor]:
    """Per axis of tensor ``key`` (of ``shape``), the full index vector that ``perm`` applies.

    Axes that no group moves are absent, and so is ``skip_axis`` (the axis a group's weight features index).
    """
    out: dict[int, Tensor] = {}
    for group, slot in spec.slots_by_key.get(key, ()):
        if slot.axis == skip_axis:
            continue
        index = out.get(slot.axis)
        if index is None:
            index = out[slot.axis] = torch.arange(shape[slot.axis])
        index[slot.start:slot.start + group.size] = slot.start + perm[group.name]
    return out


def permute_state(state: StateDict, spec: PermutationSpec, perm: Permutation) -> StateDict:
    """A new state dict with every group's slots permuted (new tensors; the input is not modified).

    Keys in no group (integer buffers, the embedding-side parameters) are copied unchanged.
    """
    out: StateDict = {}
    for key, value in state.items():
        moved = value
        for axis, index in axis_indices(spec, key, tuple(value.shape), perm).items():
            moved = moved.index_select(axis, index.to(value.device))
        out[key] = moved if moved is not value else value.clone()
    return out
