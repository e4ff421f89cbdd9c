"""LiNeS, layer-increasing network scaling (Wang et al., ICLR 2025, arXiv 2410.17146).

A merged task vector tau_MTL (``task_vector: sum`` = sum_t tau_t, the Task Arithmetic sum; or ``ties`` =
the TIES dis-``merge_fn`` vector with ``density``, dis-mean k = 20% as the reference) is rescaled per
residual block l = 0..L-1 (docs/methods.md §11, reference ``src/eval/eval.py`` LiNeS_scaling):
  lambda(l) = alpha + beta * l / (L - 1),   everything outside the blocks is scaled by alpha,
  theta = theta_0 + lambda(.) * tau_MTL   (no further scaling).
Multi-task alpha (default, ``alpha: null``): alpha = (||sum_t tau_t||_1 / ||tau_MTL||_1) / T, which is
exactly 1/T for the TA sum. beta has no fixed published value (the reference searches {0.1, ..., 1.0} for
TA, {0.1, ..., 1.5} for TIES on validation); the default 0.5 is the middle of the TA grid.
Single-task editing is ``alpha = lambda, beta = 1 - lambda`` with one expert.
Blocks come from an explicit name -> index map (not the reference's ".{l}." substring test, which
mis-assigns nested indices): open_clip ViT ``transformer.resblocks.<l>.``; open_clip ModifiedResNet
``layer1..layer4`` -> blocks 0..3 (stem and attention pool scale with alpha); generic ``blocks.<l>.``.
The first scheme that matches any key is used for the whole model; L = max index + 1 unless
``num_blocks`` is given (12 for ViT-B and 24 for ViT-L, the reference's hard-coded values).
The result does not depend on the expert order. Buffers follow finish_merge.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Sequence

from torch import Tensor

from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict, check_compatible, finish_merge
from neulig.merging.task_vectors import apply, param_keys, stack_task_vectors, unflatten
from neulig.merging.ties import ties_vector

# (description, pattern with the block number as group 1, number of the first block)
BLOCK_SCHEMES: tuple[tuple[str, re.Pattern[str], int], ...] = (
    ("open_clip ViT", re.compile(r"(?:^|\.)transformer\.resblocks\.(\d+)\."), 0),
    ("open_clip ModifiedResNet", re.compile(r"(?:^|\.)layer(\d+)\."), 1),
    ("generic", re.compile(r"(?:^|\.)blocks\.(\d+)\."), 0),
)
TASK_VECTORS = ("sum", "ties")


def block_map(keys: Iterable[str], num_blocks: int | None = None) -> tuple[dict[str, int], int]:
    """({key: 0-based block index} for the keys inside residual blocks, L) under the first matching scheme."""
    keys = list(keys)
    for _, pattern, first in BLOCK_SCHEMES:
        found = {k: int(m.group(1)) - first for k in keys if (m := pattern.search(k))}
        if not found:
            continue
        count = num_blocks if num_blocks is not None else max(found.values()) + 1
        if count < 2 or max(found.values()) >= count or min(found.values()) < 0:
            raise NeuligError(f"LiNeS needs >= 2 residual blocks with indices below num_blocks, found "
                              f"indices {sorted(set(found.values()))} with num_blocks={count}")
        return found, count
    raise NeuligError("LiNeS found no residual blocks (transformer.resblocks.<l>., layer<l>., blocks.<l>.) in this "
                      "backbone; it does not apply here")


def block_scales(blocks: Mapping[str, int], num_blocks: int, alpha: float, beta: float) -> dict[str, float]:
    """lambda(l) = alpha + beta * l / (L - 1) for every key inside a block."""
    return {k: alpha + beta * block / (num_blocks - 1) for k, block in blocks.items()}


def scale_task_vector(tau: Mapping[str, Tensor], alpha: float, beta: float, blocks: Mapping[str, int],
                      num_blocks: int) -> dict[str, Tensor]:
    """tau' = lambda(block of key) * tau[key]; keys outside the blocks get alpha."""
    scales = block_scales(blocks, num_blocks, alpha, beta)
    return {k: v * scales.get(k, alpha) for k, v in tau.items()}


def default_alpha(tv: Tensor, merged: Tensor) -> float:
    """(||sum_t tau_t||_1 / ||tau_MTL||_1) / T for a [T, P] matrix and the merged [P] vector (1/T if tau_MTL = 0)."""
    num_tasks = tv.shape[0]
    merged_norm = float(merged.abs().sum())
    if merged_norm == 0.0:
        return 1.0 / num_tasks
    return float(tv.sum(0).abs().sum()) / merged_norm / num_tasks


def merge(base: StateDict, experts: Sequence[StateDict], beta: float = 0.5, alpha: float | None = None,
          task_vector: str = "sum", density: float = 0.2, merge_fn: str = "mean", trim: str = "exact",
          num_blocks: int | None = None) -> StateDict:
    check_compatible(base, experts)
    if task_vector not in TASK_VECTORS:
        raise NeuligError(f"LiNeS task_vector must be one of {TASK_VECTORS}, got {task_vector!r}")
    keys = param_keys(base)
    blocks, count = block_map(keys, num_blocks)
    tv = stack_task_vectors(base, experts, keys)
    merged = tv.sum(0) if task_vector == "sum" else ties_vector(tv, density, merge_fn, trim)
    alpha = default_alpha(tv, merged) if alpha is None else float(alpha)
    tau = scale_task_vector(unflatten(merged, base, keys), alpha, beta, blocks, count)
    return finish_merge(apply(base, tau), base, experts)
