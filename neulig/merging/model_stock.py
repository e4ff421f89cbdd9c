"""Model Stock (Jang, Yun, Han, ECCV 2024, arXiv 2403.19522): move the average back toward the anchor.

Per tensor k (each state-dict entry is its own unit, as the reference notebook), delta_i = theta_i - theta_0:
  c = <delta_i, delta_j> / (||delta_i|| ||delta_j|| + 1e-8), clamped to [-1, 1]  (one pair when N = 2),
  t = N c / ((N - 1) c + 1 + 1e-8),
  theta_H = t * (1/N) sum_i theta_i + (1 - t) * theta_0.
N > 2 is not specified by the authors (docs/methods.md §1): ``reduce: cosine`` (default, mergekit) takes the
mean of the pairwise clamped cosines; ``reduce: angle`` (fusion_bench) the cosine of the mean pairwise
angle. t is not clamped (reference parity); tensors with c <= 0 are logged.
Keys listed in ``ignore`` and tensors whose task vectors are all zero (frozen, e.g. an untouched text
tower) get the plain average of the experts, as the notebook, which first fills every key with the
average and only overwrites those that have a ratio (oracle C). Needs N >= 2 experts, all fine-tuned
from theta_0. The result does not depend on the expert order. Buffers follow finish_merge.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import torch
from torch import Tensor

from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict, check_compatible, classify_keys, finish_merge
from neulig.utils.log import log

EPS = 1e-8
REDUCES = ("cosine", "angle")


def pair_cosine(a: Tensor, b: Tensor) -> Tensor:
    """The reference's cosine: dot / (|a| |b| + 1e-8), clamped to [-1, 1]."""
    a, b = a.reshape(-1), b.reshape(-1)
    return (torch.dot(a, b) / (a.norm() * b.norm() + EPS)).clamp(-1.0, 1.0)


def cosine(deltas: Sequence[Tensor], reduce: str = "cosine") -> Tensor:
    """One cosine per tensor from the pairwise cosines of the deltas (mean of cosines or of angles)."""
    if reduce not in REDUCES:
        raise NeuligError(f"Model Stock reduce must be one of {REDUCES}, got {reduce!r}")
    cosines = torch.stack([pair_cosine(a, b) for a, b in combinations(deltas, 2)])
    if reduce == "cosine":
        return cosines.mean()
    angles = torch.rad2deg(torch.arccos(cosines))  # the notebook's degree round trip
    return torch.cos(torch.deg2rad(angles.mean()))


def ratio(c: Tensor, num_models: int) -> Tensor:
    """t = N c / ((N - 1) c + 1 + 1e-8)."""
    return num_models * c / ((num_models - 1) * c + 1 + EPS)


def merge(base: StateDict, experts: Sequence[StateDict], reduce: str = "cosine",
          ignore: Sequence[str] = ()) -> StateDict:
    check_compatible(base, experts)
    n = len(experts)
    if n < 2:
        raise NeuligError(f"Model Stock needs at least 2 fine-tuned experts, got {n}; use the expert itself")
    merged, non_positive = {}, []
    for key in classify_keys(base).params:
        theta_0 = base[key].float()
        thetas = [e[key].float() for e in experts]
        average = sum(thetas) / n
        deltas = [t - theta_0 for t in thetas]
        if key in ignore or all(not bool(d.any()) for d in deltas):
            merged[key] = average
            continue
        c = cosine(deltas, reduce)
        if c <= 0:
            non_positive.append(f"{key} (cos {float(c):.3f})")
        t = ratio(c, n)
        merged[key] = t * average + (1 - t) * theta_0
    if non_positive:
        log.warning("model_stock: %d tensor(s) with cos <= 0 extrapolate past theta_0: %s",
                    len(non_positive), ", ".join(non_positive[:5]))
    return finish_merge(merged, base, experts)
