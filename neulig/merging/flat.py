"""Experts held once as a flat [N, P] buffer: a merge is one vector-matrix product.

``FlatStack`` keeps the floating parameters of N state dicts as rows of one float32 matrix on the
device (keys in sorted order, as the reference flattens them). ``combine(c)`` returns a state dict
whose parameters are *views* into ``c @ theta``: feed it to ``torch.func.functional_call`` and the
merged forward runs without a CPU round trip or a copy per tensor (docs/neural_ligand.md §12, "vectorised GPU
merging"). BatchNorm statistics are pooled by the rule of ``state_dict.pool_batchnorm`` with the
same coefficients; integer buffers (incl. ``num_batches_tracked``) come from the first state dict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from neulig.merging.state_dict import (
    BN_COUNT,
    BN_MEAN,
    BN_VAR,
    StateDict,
    check_compatible,
    classify_keys,
    mixture,
    mixture_weights,
)

# flat [P] -> views shaped like each template, consecutive (what torch._utils._unflatten_dense_tensors
# calls); optional: FlatStack falls back to split + view without it.
_unflatten_views = getattr(getattr(torch._C, "_nn", None), "unflatten_dense_tensors", None)


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
        # Hot-path tables (per-batch merges, docs/neural_ligand.md §12): split sizes for one-call unflattening, and
        # the BN statistics of all layers side by side so that pooling is a handful of kernels, not
        # ~8 per BN layer (RN50 has 50+). Channel c belongs to BN layer ``_bn_layer[c]``.
        self._numels = [s.numel for s in self.slots]
        self._param_keys = [s.key for s in self.slots]
        self._templates = [torch.empty(s.shape, device="meta") for s in self.slots]  # shapes only
        self._all_float32 = all(s.dtype == torch.float32 for s in self.slots)
        self._bn_sizes = [self.bn_mean[p].shape[1] for p in self.bn_prefixes]
        if self.bn_prefixes:
            self._bn_mean_t = torch.cat([self.bn_mean[p] for p in self.bn_prefixes], 1).t().contiguous()  # [C, N]
            self._bn_var_t = torch.cat([self.bn_var[p] for p in self.bn_prefixes], 1).t().contiguous()  # [C, N]
            self._bn_counts = torch.stack([self.bn_count[p] for p in self.bn_prefixes])  # [L, N]
            self._bn_layer = torch.repeat_interleave(
                torch.arange(len(self.bn_prefixes), device=device), torch.tensor(self._bn_sizes, device=device))

    @property
    def num_models(self) -> int:
        return self.theta.shape[0]

    def flat_combination(self, coeffs: Tensor) -> Tensor:
        """sum_i coeffs[i] * theta_i as one [P] vector (coefficients are not normalised)."""
        return coeffs.to(self.theta) @ self.theta

    def unflatten(self, flat: Tensor) -> StateDict:
        """Views of a [P] vector as named tensors (no copy for float32 storage)."""
        if self._all_float32 and flat.dtype == torch.float32 and _unflatten_views is not None:
            # the slots tile [0, P) in order: every view in one C++ call (~150 per ViT-B/32 merge)
            return dict(zip(self._param_keys, _unflatten_views(flat, self._templates)))
        pieces = flat.split(self._numels)
        return {s.key: piece.view(s.shape).to(s.dtype) for s, piece in zip(self.slots, pieces)}

    def combine(self, coeffs: Tensor, pool_weights: Tensor | None = None) -> StateDict:
        """State dict of sum_i coeffs[i] theta_i, BN statistics pooled with ``pool_weights`` (default coeffs)."""
        coeffs = coeffs.to(self.theta)
        state = self.unflatten(self.flat_combination(coeffs))
        if self.bn_prefixes:
            state.update(self.pool_batchnorm(coeffs if pool_weights is None else pool_weights.to(self.theta)))
        for key, value in self.fixed.items():
            state.setdefault(key, value)
        return state

    def pool_batchnorm(self, weights: Tensor) -> StateDict:
        """Every BN layer's running mean/var pooled with ``weights`` [N] (``state_dict.mixture_weights``
        and ``state_dict.mixture``), all layers at once."""
        if not self.bn_prefixes:
            return {}
        w = mixture_weights(self._bn_counts, weights)[self._bn_layer]  # [C, N]: each channel's layer weights
        mu, var = mixture(self._bn_mean_t, self._bn_var_t, w)
        out: StateDict = {}
        for prefix, m, v in zip(self.bn_prefixes, mu.split(self._bn_sizes), var.split(self._bn_sizes)):
            out[prefix + BN_MEAN], out[prefix + BN_VAR] = m, v
        return out
