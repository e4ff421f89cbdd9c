"""Task vectors tau_t = theta_t - theta_0 as one flat [T, P] float32 matrix, and back.

Shared by the merges whose semantics are global over the whole model (TIES trims per task over the
entire flattened vector, docs/methods.md §4; LiNeS rescales a merged vector, §11). Keys are the floating
parameters of ``classify_keys`` in sorted order (as the TIES reference flattens them); BatchNorm
statistics and integer buffers never enter a task vector (they follow ``finish_merge``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from neulig.merging.state_dict import StateDict, classify_keys


def param_keys(base: StateDict) -> list[str]:
    """The floating parameters a task vector covers, sorted by name."""
    return classify_keys(base).params


def task_vector(base: StateDict, expert: StateDict, keys: Sequence[str]) -> dict[str, Tensor]:
    """tau = theta - theta_0 per key, in float32 on the base's device."""
    return {k: expert[k].float().to(base[k].device) - base[k].float() for k in keys}


def flatten(vectors: Sequence[Mapping[str, Tensor]], keys: Sequence[str]) -> Tensor:
    """Stack per-key tensors of T task vectors into a [T, P] float32 matrix."""
    return torch.stack([torch.cat([v[k].float().reshape(-1) for k in keys]) for v in vectors])


def unflatten(flat: Tensor, base: StateDict, keys: Sequence[str]) -> dict[str, Tensor]:
    """Split a [P] vector back into float32 tensors shaped like the base's entries."""
    out, offset = {}, 0
    for k in keys:
        n = base[k].numel()
        out[k] = flat[offset : offset + n].view(base[k].shape)
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries, the keys cover {offset}")
    return out


def stack_task_vectors(base: StateDict, experts: Sequence[StateDict], keys: Sequence[str]) -> Tensor:
    """[T, P] float32 matrix of the experts' task vectors (rows in expert order)."""
    return flatten([task_vector(base, e, keys) for e in experts], keys)


def apply(base: StateDict, tau: Mapping[str, Tensor], scaling: float = 1.0) -> dict[str, Tensor]:
    """theta_0 + scaling * tau per key, in float32."""
    return {k: base[k].float() + scaling * v for k, v in tau.items()}
