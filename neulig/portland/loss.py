"""Portland's loss (arXiv 2503.01268, docs/neural_ligand.md §6): L_b + L_a / scaling, the one
implementation for one combination and for many.

- L_b (``merge.loss``): cross-entropy (``sup``) or prediction entropy -sum p log(p + 1e-6) (``semi``,
  the reference's form) of the frozen head on the ensembled feature h_k(sum_t beta_t z_t);
- L_a (``merge.regularizer``): a :class:`Regularizer`, a pluggable pair of what it reads of the
  experts' offsets (``statistic``) and its per-sample term. ``reference``: (beta . eps*)^2 with eps*_t
  the across-model z-score (unbiased std) of the coordinate sum of theta_t - mean_u theta_u (the
  reference code); ``exact``: beta^T G beta, G_uv = <eps_u, eps_v> the Gram matrix of the offsets,
  normalised by its mean diagonal so that ``scaling`` means the same for any model size; ``variance``:
  the beta-weighted variance of the checkpoints, Var_beta(theta) = sum_t beta_t ||theta_t - theta_beta||^2
  = beta . diag(G) - beta^T G beta, the leading term of the merge-versus-ensemble gap under isotropic
  curvature (docs/neural_ligand.md §13), with the same normalisation (1 at uniform beta, 0 at a one-hot
  beta); ``fisher_variance``: the same variance in the metric of the experts' mean diagonal Fisher,
  sum_t beta_t (theta_t - theta_beta)^T diag(Fbar) (theta_t - theta_beta), the term under a Fisher
  stand-in for the curvature, normalised alike. Adding a regulariser is one entry of :data:`REGULARIZERS`.

Terms are per sample ([A, B] for A combinations of B rows each), so that padding rows (a short last
batch) weigh zero and data-parallel ranks can divide their sums by the global batch size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from neulig.portland.model import HeadGroup, batched_head_logits, ensemble_features, grouped
from neulig.portland.statistics import OffsetStatistics


@dataclass(frozen=True)
class Regularizer:
    """L_a: ``statistic(stats)`` is what it reads of one combination's expert offsets (a tensor whose
    first axis is not the combination's), ``term(beta [A, B, T], statistic [A, ...])`` its value per sample [A, B];
    ``reads_fisher``: the statistic needs the experts' diagonal Fishers (estimated by the runner)."""

    statistic: Callable[[OffsetStatistics], Tensor]
    term: Callable[[Tensor, Tensor], Tensor]
    reads_fisher: bool = False


def normalized_gram(gram: Tensor) -> Tensor:
    """G divided by its mean diagonal, so ``scaling`` means the same for any model size."""
    return gram / gram.diagonal().mean().clamp_min(1e-30)


def quadratic_form(beta: Tensor, gram: Tensor) -> Tensor:
    """beta^T G beta per sample: beta [A, B, T], G [A, T, T] -> [A, B]."""
    return torch.einsum("abt,atu,abu->ab", beta, gram, beta)


def beta_variance(beta: Tensor, gram: Tensor) -> Tensor:
    """Var_beta(theta) = beta . diag(G) - beta^T G beta per sample (beta [A, B, T], G [A, T, T] -> [A, B]):
    sum_t beta_t ||theta_t - theta_beta||^2 for any offsets eps_t = theta_t - m with Gram matrix G, since the
    spread about the merged point theta_beta does not depend on m (docs/neural_ligand.md §13)."""
    return torch.einsum("abt,at->ab", beta, gram.diagonal(dim1=-2, dim2=-1)) - quadratic_form(beta, gram)


REGULARIZERS: dict[str, Regularizer] = {
    "reference": Regularizer(lambda stats: stats.eps_star,
                             lambda beta, eps: torch.bmm(beta, eps.unsqueeze(-1)).squeeze(-1) ** 2),
    "exact": Regularizer(lambda stats: normalized_gram(stats.gram), quadratic_form),
    "variance": Regularizer(lambda stats: normalized_gram(stats.gram), beta_variance),
    "fisher_variance": Regularizer(lambda stats: normalized_gram(stats.require_fisher_gram()), beta_variance,
                                   reads_fisher=True),
}


def regularizer(name: str) -> Regularizer:
    if name not in REGULARIZERS:
        raise ValueError(f"regularizer must be one of {sorted(REGULARIZERS)}, got {name!r}")
    return REGULARIZERS[name]


def data_term(logits: Tensor, labels: Tensor | None, loss: str) -> Tensor:
    """L_b per sample of logits [..., K]: cross-entropy (``sup``) or prediction entropy (``semi``)."""
    if loss == "sup":
        return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="none").view(labels.shape)
    if loss == "semi":
        p = torch.softmax(logits, dim=-1)
        return -(p * torch.log(p + 1e-6)).sum(-1)
    raise ValueError(f"loss must be 'sup' or 'semi', got {loss!r}")


def loss_terms(beta: Tensor, features: Tensor, groups: Sequence[HeadGroup], labels: Tensor | None, loss: str,
               regularizer_name: str, statistic: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample L_b and L_a [A, B] of A combinations: CoopVecs beta [A, B, T], features [A, B, T, d],
    labels [A, B] (``sup``), ``groups`` the heads of the A combinations (see ``model.grouped``) and
    ``statistic`` [A, ...] what the regulariser reads of each."""
    l_b = grouped([ensemble_features(beta, features), labels], groups,
                  lambda ens, y, heads: data_term(batched_head_logits(ens, heads), y, loss))
    return l_b, regularizer(regularizer_name).term(beta, statistic.to(beta))


def step_loss(l_b: Tensor, l_a: Tensor, weight: Tensor, total: Tensor, scaling: float) -> Tensor:
    """Each combination's step loss [A]: (sum_b w L_b + sum_b w L_a / scaling) / total, with ``weight``
    [A, B] 1 for the rows counted here (0: padding, or another rank's rows) and ``total`` [A] the
    batch's real row count (the mean over a dataset-pure batch)."""
    return ((l_b * weight).sum(-1) + (l_a * weight).sum(-1) / scaling) / total


def portland_loss(beta: Tensor, features: Tensor, labels: Tensor | None, head: Tensor, loss: str, scaling: float,
                  regularizer_name: str, statistic: Tensor) -> tuple[Tensor, dict]:
    """L_b + L_a / scaling, each the batch mean, of one Portland's CoopVecs beta [B, T] on one dataset-pure
    batch (features [B, T, d], head [K, d]): :func:`loss_terms` of one combination."""
    groups = [(torch.zeros(1, dtype=torch.long, device=beta.device), head[None].to(beta))]
    l_b, l_a = loss_terms(beta[None], features[None], groups, None if labels is None else labels[None], loss,
                          regularizer_name, statistic[None])
    n = features.shape[0]
    return (l_b.sum() + l_a.sum() / scaling) / n, {"l_b": l_b.detach().sum() / n, "l_a": l_a.detach().sum() / n}
