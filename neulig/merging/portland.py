"""Neural Ligand (Li, Yu, Wang, ICCV 2025, arXiv 2503.01268): the Portland module and its loss.

Portland: beta(x) = softmax(W [z_1(x); ...; z_T(x)] + b), a Linear(T*d -> T) with bias over the raw
(un-normalised) features of the T frozen experts (docs/neural_ligand.md §2). The same CoopVec beta combines
 - features (ensemble):  y_ens = h_k( sum_t beta_t z_t )                         (docs/neural_ligand.md §4)
 - parameters (merge):   theta(beta) = sum_t beta_t theta_t                       (docs/neural_ligand.md §3)
Loss = L_b + L_a / scaling (code: alpha = 1/scaling = 0.01, beta_loss = 1; docs/neural_ligand.md §6):
 - L_b: cross-entropy (``loss: sup``) or mean prediction entropy with +1e-6 inside the log (``semi``);
 - L_a ``reference``: mean_x (sum_t beta_t eps*_t)^2 with eps*_t the across-model z-score (unbiased
   std) of the coordinate sum of theta_t - mean_u theta_u;
 - L_a ``exact``: mean_x beta^T G beta, G_uv = <eps_u, eps_v> the Gram matrix of the offsets
   (normalised by its mean diagonal so ``scaling`` means the same for any model size).
Everything here is pure tensor code; training lives in ``neulig.lit.portland``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neulig.models.heads import head_logits


class Portland(nn.Module):
    """Linear(T*d -> T) + softmax over the concatenated expert features: the CoopVec generator."""

    def __init__(self, num_experts: int, feature_dim: int):
        super().__init__()
        self.num_experts = num_experts
        self.linear = nn.Linear(num_experts * feature_dim, num_experts)

    def forward(self, features: Tensor) -> Tensor:
        """features [B, T, d] (expert t's raw feature of each input) -> CoopVecs beta [B, T]."""
        return torch.softmax(self.linear(features.flatten(1)), dim=-1)


def ensemble_features(beta: Tensor, features: Tensor) -> Tensor:
    """sum_t beta_t z_t per sample: [B, T] x [B, T, d] -> [B, d]."""
    return torch.einsum("bt,btd->bd", beta, features)


def offset_statistics(theta: Tensor) -> tuple[Tensor, Tensor]:
    """From stacked flat checkpoints [T, P]: (eps* [T] z-scored offset sums, Gram [T, T] of offsets).

    eps_t = theta_t - mean_u theta_u; s_t = sum_p eps_t,p; eps*_t = (s_t - mean s) / std(s, unbiased).
    Computed in float64 to keep the coordinate sums exact enough for P ~ 1e8.
    """
    theta = theta.double()
    offsets = theta - theta.mean(0, keepdim=True)
    sums = offsets.sum(1)
    eps_star = (sums - sums.mean()) / sums.std(unbiased=True).clamp_min(1e-30)
    gram = offsets @ offsets.t()
    return eps_star.float(), gram.float()


def loss_sums(beta: Tensor, features: Tensor, head_weight: Tensor, labels: Tensor | None, loss: str,
              regularizer: str, statistic: Tensor) -> tuple[Tensor, Tensor]:
    """The two terms of the Portland loss, summed over a dataset-pure batch (not averaged):

    - L_b: cross-entropy (``sup``) or prediction entropy -sum p log(p + 1e-6) (``semi``, the reference's
      form) of h_k(sum_t beta_t z_t), with h_k the dataset's frozen head;
    - L_a: (beta . eps*)^2 (``reference``, ``statistic`` = eps* [T]) or beta^T G beta (``exact``,
      ``statistic`` = the Gram matrix normalised by :func:`normalized_gram`).

    Sums, so that data-parallel training can divide by the global batch size and all-reduce.
    """
    ens = (beta.unsqueeze(-1) * features).sum(1)  # = ensemble_features(beta, features), without einsum's overhead
    logits = head_logits(ens, head_weight)
    if loss == "sup":
        l_b = F.cross_entropy(logits, labels, reduction="sum")
    elif loss == "semi":
        p = torch.softmax(logits, dim=-1)
        l_b = -(p * torch.log(p + 1e-6)).sum()
    else:
        raise ValueError(f"loss must be 'sup' or 'semi', got {loss!r}")
    if regularizer == "exact":
        l_a = torch.einsum("bt,tu,bu->b", beta, statistic.to(beta), beta).sum()
    elif regularizer == "reference":
        l_a = ((beta @ statistic.to(beta)) ** 2).sum()
    else:
        raise ValueError(f"regularizer must be 'reference' or 'exact', got {regularizer!r}")
    return l_b, l_a


def normalized_gram(gram: Tensor) -> Tensor:
    """G divided by its mean diagonal, so ``scaling`` means the same for any model size."""
    return gram / gram.diagonal().mean().clamp_min(1e-30)


def regularizer_statistic(regularizer: str, eps_star: Tensor, gram: Tensor) -> Tensor:
    """What L_a reads: eps* (``reference``) or the normalised Gram matrix (``exact``)."""
    return normalized_gram(gram) if regularizer == "exact" else eps_star


def portland_loss(portland: Portland, features: Tensor, labels: Tensor | None, head_weight: Tensor, loss: str,
                  scaling: float, regularizer: str, statistic: Tensor) -> tuple[Tensor, dict]:
    """L_b + L_a / scaling, each the batch mean of :func:`loss_sums`, on one dataset-pure batch."""
    n = features.shape[0]
    l_b, l_a = loss_sums(portland(features), features, head_weight, labels, loss, regularizer, statistic)
    return (l_b + l_a / scaling) / n, {"l_b": l_b.detach() / n, "l_a": l_a.detach() / n}
