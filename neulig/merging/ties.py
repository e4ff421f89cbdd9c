"""TIES-Merging (Yadav et al., NeurIPS 2023, arXiv 2306.01708): trim, elect sign, disjoint merge.

With TV the [T, P] matrix of task vectors tau_t = theta_t - theta_0 flattened over the whole model
(docs/methods.md §4, reference ``src/utils/merge_utils.py``, code string "topk20_mass_dis-mean"):
1. trim: per task, keep the top-k |tau| of its *entire* flattened vector (a global threshold per task,
   not per tensor), k = ``density`` * P, zero the rest -> tau_hat;
2. elect: gamma_p = sign(sum_t tau_hat[t, p]); gamma_p = 0 takes the global majority sign(sum_p gamma_p);
3. disjoint merge over A_p = {t : tau_hat[t, p] != 0, sign(tau_hat[t, p]) = gamma_p}:
   ``mean``: sum_{A_p} tau_hat / max(|A_p|, 1);  ``sum``: sum_{A_p} tau_hat;  ``max``: gamma_p max_{A_p} |tau_hat|;
4. theta = theta_0 + lambda * tau_m, lambda = ``scaling``.
Trim count: ``exact`` keeps floor(density * P) entries per task (mergekit's count; ties at the
threshold broken by index order); ``reference`` keeps |tau| >= the kthvalue threshold at
kk = P - int(P * density), i.e. one entry more than nominal without ties (the authors' and MergeLM's
off-by-one). Defaults: density 0.2 (k = 20%), mean, lambda = 1 (the paper's no-validation choice).
Order of experts does not matter. BatchNorm statistics are pooled, integer buffers copied (finish_merge).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict, check_compatible, finish_merge
from neulig.merging.task_vectors import apply, param_keys, stack_task_vectors, unflatten

TRIMS = ("exact", "reference")
MERGE_FNS = ("mean", "sum", "max")


def keep_count(density: float, numel: int) -> int:
    """floor(density * numel), robust to float error in the product (0.29 * 100 -> 29)."""
    return int(math.floor(density * numel + 1e-12 * max(numel, 1)))


def _kth_smallest(values: Tensor, k: int) -> Tensor:
    """The k-th smallest entry (1-based) of a 1-D tensor: a radix sort on CUDA (kthvalue runs one thread
    block per slice there, seconds for 1e8 entries), quickselect (kthvalue) on the CPU."""
    if values.is_cuda:
        return values.sort().values[k - 1]
    return values.kthvalue(k).values


def _trim_row(row: Tensor, k: int, rule: str) -> Tensor:
    num = row.numel()
    if k >= num:
        return row.clone()
    magnitude = row.abs()
    if rule == "reference":  # kk-th smallest |value|, keep >= it (reference merge_utils.topk_values_mask)
        return row * (magnitude >= _kth_smallest(magnitude, num - k))
    if k == 0:
        return torch.zeros_like(row)
    threshold = _kth_smallest(magnitude, num - k + 1)  # the k-th largest
    keep = magnitude >= threshold
    excess = int(keep.sum()) - k
    if excess > 0:  # ties at the threshold: keep the first ones in index order, drop the last `excess`
        tied = magnitude == threshold
        keep &= ~(tied & (tied.cumsum(0) > int(tied.sum()) - excess))
    return row * keep


def trim(tv: Tensor, density: float, rule: str = "exact") -> Tensor:
    """Zero all but the largest-|tau| entries of each row of ``tv`` [T, P] (global top-k per task).

    Rows are processed one at a time, so the peak memory is ``tv``, the result and O(P) temporaries.
    """
    if rule not in TRIMS:
        raise NeuligError(f"TIES trim must be one of {TRIMS}, got {rule!r}")
    if not 0.0 <= density <= 1.0:
        raise NeuligError(f"TIES density must lie in [0, 1], got {density}")
    k = keep_count(density, tv.shape[1])
    out = torch.empty_like(tv)
    for t in range(tv.shape[0]):
        out[t] = _trim_row(tv[t], k, rule)
    return out


def elect(trimmed: Tensor) -> Tensor:
    """gamma = sign of the summed trimmed mass; zeros take the global majority sign."""
    gamma = torch.sign(trimmed.sum(dim=0))
    majority = torch.sign(gamma.sum())
    return torch.where(gamma == 0, majority, gamma)


def disjoint_merge(trimmed: Tensor, gamma: Tensor, merge_fn: str = "mean") -> Tensor:
    """Combine only the entries that agree with the elected sign (nonzero, same sign as gamma)."""
    if merge_fn not in MERGE_FNS:
        raise NeuligError(f"TIES merge_fn must be one of {MERGE_FNS}, got {merge_fn!r}")
    total = torch.zeros_like(gamma, dtype=trimmed.dtype)
    count = torch.zeros_like(total)
    for row in trimmed:  # one task at a time: O(P) temporaries
        selected = torch.where(row * gamma > 0, row, 0.0)
        if merge_fn == "max":
            total = torch.maximum(total, selected.abs())
        else:
            total += selected
            count += selected != 0
    if merge_fn == "max":
        return total * gamma
    if merge_fn == "sum":
        return total
    return total / count.clamp_min(1)


def ties_vector(tv: Tensor, density: float = 0.2, merge_fn: str = "mean", trim_rule: str = "exact") -> Tensor:
    """The merged task vector tau_m [P] of a [T, P] task-vector matrix."""
    trimmed = trim(tv, density, trim_rule)
    return disjoint_merge(trimmed, elect(trimmed), merge_fn)


def merge(base: StateDict, experts: Sequence[StateDict], density: float = 0.2, scaling: float = 1.0,
          merge_fn: str = "mean", trim: str = "exact") -> StateDict:
    check_compatible(base, experts)
    keys = param_keys(base)
    tau_m = ties_vector(stack_task_vectors(base, experts, keys), density, merge_fn, trim)
    return finish_merge(apply(base, unflatten(tau_m, base, keys), scaling), base, experts)
