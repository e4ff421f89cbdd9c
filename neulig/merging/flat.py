"""Experts held once as a flat [N, P] buffer: a merge is one vector-matrix product.

``FlatStack`` keeps the floating parameters of N state dicts as rows of one float32 matrix on the
device (keys in sorted order, as the reference flattens them). ``combine(c)`` returns a state dict
whose parameters are *views* into ``c @ theta``: feed it to ``torch.func.functional_call`` and the
merged forward runs without a CPU round trip or a copy per tensor (paper.md §7.2 "vectorised GPU
merging"). BatchNorm statistics are pooled by the rule of ``state_dict.pool_batchnorm`` with the
same coefficients; integer buffers (incl. ``num_batches_tracked``) come from the first state dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from neulig.merging.state_dict import BN_COUNT, BN_MEAN, BN_VAR, StateDict, check_compatible, classify_keys


@dataclass(frozen=True)
class Slot:
    key: str
    shape: torch.Size
    offset: int
    numel: int
    dtype: torch.dtype


class FlatStack:
    """N same-architecture state dicts as one [N, P] float32 matrix plus pooled-buffer tables."""

    def __init__(self, states: Sequence[StateDict], device: torch.device | str | None = None):
        check_compatible(states[0], states[1:]) if len(states) > 1 else None
        first = states[0]
        device = torch.device(device) if device is not None else first[next(iter(first))].device
        classes = classify_keys(first)
        self.keys = list(first)
        self.slots: list[Slot] = []
        offset = 0
        for key in classes.params:
            numel = first[key].numel()
            self.slots.append(Slot(key, first[key].shape, offset, numel, first[key].dtype))
            offset += numel
        self.num_params = offset
        self.theta = torch.empty(len(states), offset, dtype=torch.float32, device=device)
        for row, state in enumerate(states):
            for slot in self.slots:
                self.theta[row, slot.offset : slot.offset + slot.numel] = state[slot.key].reshape(-1).float()
        self.bn_prefixes = classes.bn_prefixes
        self.bn_mean = {p: torch.stack([s[p + BN_MEAN].float() for s in states]).to(device) for p in self.bn_prefixes}
        self.bn_var = {p: torch.stack([s[p + BN_VAR].float() for s in states]).to(device) for p in self.bn_prefixes}
        self.bn_count = {
            p: torch.tensor([float(s[p + BN_COUNT]) if p + BN_COUNT in s else 1.0 for s in states], device=device)
            for p in self.bn_prefixes
        }
        self.fixed = {k: first[k].to(device) for k in classes.fixed}

    @property
    def num_models(self) -> int:
        return self.theta.shape[0]

    def flat_combination(self, coeffs: Tensor) -> Tensor:
        """sum_i coeffs[i] * theta_i as one [P] vector (coefficients are not normalised)."""
        return coeffs.to(self.theta) @ self.theta

    def unflatten(self, flat: Tensor) -> StateDict:
        """Views of a [P] vector as named tensors (no copy for float32 storage)."""
        return {s.key: flat[s.offset : s.offset + s.numel].view(s.shape).to(s.dtype) for s in self.slots}

    def combine(self, coeffs: Tensor, pool_weights: Tensor | None = None) -> StateDict:
        """State dict of sum_i coeffs[i] theta_i, BN statistics pooled with ``pool_weights`` (default coeffs)."""
        coeffs = coeffs.to(self.theta)
        state = self.unflatten(self.flat_combination(coeffs))
        pool = (coeffs if pool_weights is None else pool_weights.to(self.theta)).clamp_min(0)
        for prefix in self.bn_prefixes:
            weight = pool * self.bn_count[prefix]
            weight = weight / weight.sum().clamp_min(1e-12)
            mu_i, var_i = self.bn_mean[prefix], self.bn_var[prefix]
            mu = weight @ mu_i
            state[prefix + BN_MEAN] = mu
            state[prefix + BN_VAR] = weight @ (var_i + (mu_i - mu) ** 2)
        for key, value in self.fixed.items():
            state.setdefault(key, value)
        return state
