"""The Portland CoopVec generator (arXiv 2503.01268, docs/neural_ligand.md §2, §4) for one
combination or for C combinations stacked, and the frozen heads' logits on its ensembled features.

Portland: beta(x) = softmax(W [z_1(x); ...; z_T(x)] + b), a Linear(T*d -> T) with bias over the raw
(un-normalised) features of the T frozen experts. The same CoopVec beta combines
 - features (ensemble):  y_ens = h_k( sum_t beta_t z_t )    (``level: features``, the paper's code), or
   sum_t beta_t h_k(z_t)                                     (``level: logits``);
 - parameters (merge):   theta(beta) = sum_t beta_t theta_t  (``merging.flat.FlatStack.combine``).
Combination c has its own generator, so C of them stack into ``W [C, T, T*d]`` and ``b [C, T]`` and
one batched matmul evaluates them all.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Portland(nn.Module):
    """Linear(T*d -> T) + softmax over the concatenated expert features: the CoopVec generator."""

    def __init__(self, num_experts: int, feature_dim: int):
        super().__init__()
        self.num_experts = num_experts
        self.linear = nn.Linear(num_experts * feature_dim, num_experts)

    def forward(self, features: Tensor) -> Tensor:
        """features [B, T, d] (expert t's raw feature of each input) -> CoopVecs beta [B, T]."""
        return torch.softmax(self.linear(features.flatten(1)), dim=-1)


def initial_state(num_experts: int, feature_dim: int, seed: int) -> dict[str, Tensor]:
    """Portland's initialisation after ``torch.manual_seed(seed)`` (the global RNG is left untouched):
    the same for every combination of one T and d."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # the CPU part of torch.manual_seed (CUDA's untouched)
        return Portland(num_experts, feature_dim).state_dict()


def ensemble_features(beta: Tensor, features: Tensor) -> Tensor:
    """sum_t beta_t z_t per sample: [..., T] x [..., T, d] -> [..., d]."""
    return (beta.unsqueeze(-1) * features).sum(-2)


def batched_beta(weight: Tensor, bias: Tensor, features: Tensor) -> Tensor:
    """CoopVecs of A Portlands: weight [A, T, T*d], bias [A, T], features [A, B, T, d] -> beta [A, B, T]."""
    logits = torch.baddbmm(bias.unsqueeze(1), features.flatten(2), weight.transpose(1, 2))
    return torch.softmax(logits, dim=-1)


HeadGroup = tuple[Tensor, Tensor]  # (members [n] int64, ascending rows of the batch; their heads [n, K, d])


def batched_head_logits(features: Tensor, heads: Tensor) -> Tensor:
    """Logits of each combination's frozen head on raw features: [A, ..., d] x heads [A, K, d] -> [A, ..., K]
    (``models.heads.head_logits`` per combination: cosine to the head's class rows)."""
    a, d = features.shape[0], features.shape[-1]
    flat = F.normalize(features.float(), dim=-1).reshape(a, -1, d)
    return torch.bmm(flat, heads.transpose(1, 2)).view(*features.shape[:-1], heads.shape[1])


def grouped(tensors: Sequence[Tensor | None], groups: Sequence[HeadGroup], fn: Callable) -> Tensor:
    """``fn(*rows of a group's members of each tensor, their heads)`` -> [n, ...] for each group, scattered
    back to the members' rows (heads of different class counts stay in separate groups: no padding)."""
    rows = len(tensors[0])
    if len(groups) == 1 and len(groups[0][0]) == rows:  # every row, in order
        return fn(*tensors, groups[0][1])
    out = None
    for members, heads in groups:
        part = fn(*(None if t is None else t.index_select(0, members) for t in tensors), heads)
        out = part.new_zeros((rows, *part.shape[1:])) if out is None else out
        out = out.index_copy(0, members, part)
    return out


def ensembled_logits(beta: Tensor, features: Tensor, heads: Tensor, level: str) -> Tensor:
    """The ensemble's logits [A, B, K] of CoopVecs beta [A, B, T] on features [A, B, T, d] with each
    combination's head [A, K, d]: h(sum_t beta_t z_t) (``features``) or sum_t beta_t h(z_t) (``logits``)."""
    if level == "features":
        return batched_head_logits(ensemble_features(beta, features), heads)
    if level == "logits":
        return (beta.unsqueeze(-1) * batched_head_logits(features, heads)).sum(-2)
    raise ValueError(f"ensemble.level must be 'features' or 'logits', got {level!r}")


@torch.no_grad()
def batched_predictions(weight: Tensor, bias: Tensor, features: Tensor, groups: Sequence[HeadGroup],
                        level: str) -> Tensor:
    """Ensembled predictions [A, B] of A Portlands (docs/neural_ligand.md §4) at ``level``."""
    beta = batched_beta(weight, bias, features)
    return grouped([beta, features], groups, lambda b, z, heads: ensembled_logits(b, z, heads, level).argmax(-1))
