"""Neural Ligand (Li, Yu, Wang, arXiv 2503.01268) for C combinations at once: pure tensor code.

Combination c has its own Portland ``beta_c(x) = softmax(W_c [z_1(x); ...; z_T(x)] + b_c)``
(docs/neural_ligand.md §2), so the C generators stack into ``W [C, T, T*d]`` and ``b [C, T]`` and one
batched matmul evaluates them all. Each batch row of combination c is a sample of one of its datasets;
the loss L_b + L_a / scaling (§6) is that of ``merging.portland.loss_sums``, kept per sample so that
padding rows (a short last batch) weigh zero. The frozen heads differ in class count from dataset to
dataset, so the combinations of a batch are grouped by it (one batched matmul per class count).

Adam (§7: lr 1e-3, default betas and eps, no weight decay) is the batched functional form of
``torch.optim.Adam``'s update, with one step count per combination: the caller passes, per
combination, the step size and the bias correction of its own count, so combinations that take no
step this round are simply left out (their moments and counts do not move).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as the reference code (docs/neural_ligand.md §7)
EPS = 1e-8


def batched_beta(weight: Tensor, bias: Tensor, features: Tensor) -> Tensor:
    """CoopVecs of C Portlands: weight [A, T, T*d], bias [A, T], features [A, B, T, d] -> beta [A, B, T]."""
    logits = torch.baddbmm(bias.unsqueeze(1), features.flatten(2), weight.transpose(1, 2))
    return torch.softmax(logits, dim=-1)


def batched_ensemble(beta: Tensor, features: Tensor) -> Tensor:
    """sum_t beta_t z_t per sample (docs/neural_ligand.md §4): [A, B, T] x [A, B, T, d] -> [A, B, d]."""
    return (beta.unsqueeze(-1) * features).sum(2)


HeadGroup = tuple[Tensor, Tensor]  # (members [n] int64, ascending rows of the batch; their heads [n, K, d])


def batched_head_logits(features: Tensor, heads: Tensor) -> Tensor:
    """Logits of each combination's frozen head on raw features: [A, B, d] x heads [A, K, d] -> [A, B, K]
    (``models.heads.head_logits`` per combination)."""
    return torch.bmm(F.normalize(features.float(), dim=-1), heads.transpose(1, 2))


def grouped(tensors: Sequence[Tensor | None], groups: Sequence[HeadGroup], fn) -> Tensor:
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


def batched_loss_terms(beta: Tensor, features: Tensor, groups: Sequence[HeadGroup], labels: Tensor | None, loss: str,
                       regularizer: str, statistic: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample L_b and L_a [A, B] of ``merging.portland.loss_sums`` (which sums them over a batch);
    ``groups`` cover the A combinations (see :func:`grouped`).

    ``statistic``: eps* [A, T] (``reference``) or the normalised Gram matrix [A, T, T] (``exact``)."""
    if loss not in ("sup", "semi"):
        raise ValueError(f"loss must be 'sup' or 'semi', got {loss!r}")

    def l_b_of(ens: Tensor, y: Tensor | None, heads: Tensor) -> Tensor:
        logits = batched_head_logits(ens, heads)
        if loss == "sup":
            return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
        p = torch.softmax(logits, dim=-1)
        return -(p * torch.log(p + 1e-6)).sum(-1)

    l_b = grouped([batched_ensemble(beta, features), labels], groups, l_b_of)
    statistic = statistic.to(beta)
    if regularizer == "exact":
        l_a = torch.einsum("abt,atu,abu->ab", beta, statistic, beta)
    elif regularizer == "reference":
        l_a = torch.bmm(beta, statistic.unsqueeze(-1)).squeeze(-1) ** 2
    else:
        raise ValueError(f"regularizer must be 'reference' or 'exact', got {regularizer!r}")
    return l_b, l_a


def batched_loss(beta: Tensor, features: Tensor, groups: Sequence[HeadGroup], labels: Tensor | None, mask: Tensor,
                 length: Tensor, loss: str, regularizer: str, statistic: Tensor, scaling: float) -> Tensor:
    """Each combination's step loss [A]: (sum_b L_b + sum_b L_a / scaling) / length over its real rows
    (``mask`` [A, B] 1/0, ``length`` [A] their count), as ``PortlandModule`` divides a batch's sums."""
    l_b, l_a = batched_loss_terms(beta, features, groups, labels, loss, regularizer, statistic)
    return ((l_b * mask).sum(-1) + (l_a * mask).sum(-1) / scaling) / length


@torch.no_grad()
def batched_predictions(weight: Tensor, bias: Tensor, features: Tensor, groups: Sequence[HeadGroup]) -> Tensor:
    """Ensembled predictions [A, B] (docs/neural_ligand.md §4, ``ensemble_features`` then the head)."""
    ens = torch.einsum("abt,abtd->abd", batched_beta(weight, bias, features), features)
    return grouped([ens], groups, lambda part, heads: batched_head_logits(part, heads).argmax(-1))


# ---- Adam --------------------------------------------------------------------------------------------


def adam_scalars(steps: int, lr: float, betas: tuple[float, float] = BETAS) -> tuple[np.ndarray, np.ndarray]:
    """For step counts 1..steps: ``-lr / (1 - beta1^s)`` and ``sqrt(1 - beta2^s)`` as float32, computed
    in Python floats exactly as ``torch.optim.Adam`` computes its scalars (index 0 is unused)."""
    beta1, beta2 = betas
    neg_step = np.zeros(steps + 1, dtype=np.float32)
    bc2_sqrt = np.ones(steps + 1, dtype=np.float32)
    neg_step[1:] = [-(lr / (1 - beta1**s)) for s in range(1, steps + 1)]
    bc2_sqrt[1:] = [(1 - beta2**s) ** 0.5 for s in range(1, steps + 1)]
    return neg_step, bc2_sqrt


@torch.no_grad()
def adam_step(params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor],
              exp_avg_sqs: Sequence[Tensor], neg_step: Tensor, bc2_sqrt: Tensor,
              betas: tuple[float, float] = BETAS, eps: float = EPS) -> None:
    """One Adam update, in place, of A combinations' parameters (each tensor [A, ...], usually a view of
    the first A rows of the full stack): ``neg_step`` [A] = -lr / (1 - beta1^s_a) and ``bc2_sqrt`` [A] =
    sqrt(1 - beta2^s_a) for each combination's own step count s_a (see :func:`adam_scalars`).

    The operations are those of ``torch.optim.Adam`` (single-tensor path): lerp of the first moment,
    mul + addcmul of the second, ``denom = sqrt(v) / bc2_sqrt + eps``, ``p += (-step_size * m) / denom``."""
    beta1, beta2 = betas
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        shape = (-1,) + (1,) * (p.dim() - 1)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / bc2_sqrt.view(shape)).add_(eps)
        p.add_(neg_step.view(shape) * m / denom)


def rounds_of(sizes: Sequence[int], batch_size: int) -> int:
    """Rounds per global epoch of a combination (docs/neural_ligand.md §7): min_k ceil(n_k / batch)."""
    return min(math.ceil(n / batch_size) for n in sizes)
