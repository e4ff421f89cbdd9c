"""Neural Ligand (Li, Yu, Wang, ICCV 2025, arXiv 2503.01268): the Portland module and its loss.

Portland: beta(x) = softmax(W [z_1(x); ...; z_T(x)] + b), a Linear(T*d -> T) with bias over the raw
(un-normalised) features of the T frozen experts (paper.md §3.2). The same CoopVec beta combines
 - features (ensemble):  y_ens = h_k( sum_t beta_t z_t )                         (paper.md §3.4)
 - parameters (merge):   theta(beta) = sum_t beta_t theta_t                       (paper.md §3.3)
Loss = L_b + L_a / scaling (code: alpha = 1/scaling = 0.01, beta_loss = 1; paper.md §3.6):
 - L_b: cross-entropy (``sup``) or mean prediction entropy with +1e-6 inside the log (``semi``);
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


def consistency_loss(beta: Tensor, eps_star: Tensor | None = None, gram: Tensor | None = None) -> Tensor:
    """L_a: ``reference`` with eps_star (batch mean of (beta . eps*)^2) or ``exact`` with gram."""
    if gram is not None:
        g = gram / gram.diagonal().mean().clamp_min(1e-30)
        return torch.einsum("bt,tu,bu->b", beta, g.to(beta), beta).mean()
    return ((beta @ eps_star.to(beta)) ** 2).mean()


def alignment_loss(logits: Tensor, labels: Tensor | None, alignment: str) -> Tensor:
    """L_b: ``sup`` cross-entropy, or ``semi`` mean entropy -sum p log(p + 1e-6) (reference code)."""
    if alignment == "sup":
        return F.cross_entropy(logits, labels)
    if alignment == "semi":
        p = torch.softmax(logits, dim=-1)
        return -(p * torch.log(p + 1e-6)).sum(-1).mean()
    raise ValueError(f"alignment must be 'sup' or 'semi', got {alignment!r}")


def portland_loss(portland: Portland, features: Tensor, labels: Tensor, head_weight: Tensor, alignment: str,
                  scaling: float, eps_star: Tensor | None = None, gram: Tensor | None = None) -> tuple[Tensor, dict]:
    """L_b + L_a / scaling on one dataset-pure batch with that dataset's head."""
    beta = portland(features)
    logits = head_logits(ensemble_features(beta, features), head_weight)
    l_b = alignment_loss(logits, labels, alignment)
    l_a = consistency_loss(beta, eps_star, gram)
    return l_b + l_a / scaling, {"l_b": l_b.detach(), "l_a": l_a.detach()}
