"""RegMean (Jin, Ren, Preotiuc-Pietro, Cheng, ICLR 2023, arXiv 2212.09849): regression-mean merging.

For every ``nn.Linear`` with weight W_i [d_out, d_in] and mean input Gram G_i = X_i^T X_i / n_i
(docs/methods.md §8; bloomberg ``avg_merger.py regmean_mean_params``):
  G~_i = alpha G_i + (1 - alpha) diag(G_i)        (``alpha`` = reduce_non_diagonal_ratio, default 1),
  G~_i <- (c_i N) G~_i                              (optional ``weights`` c, normalised; uniform = no-op),
  W^T  = (sum_i G~_i)^-1 sum_i G~_i W_i^T           (torch.linalg.solve, never an explicit inverse).
The solve runs in float64. If the summed Gram is numerically singular (smallest eigenvalue below
eps = ``ridge`` * mean(diag): an input direction never active, or fewer rows than d_in) the system
(sum_i G~_i + eps I) W^T = sum_i G~_i W_i^T + eps W_avg^T is solved instead (logged): a ridge toward the
plain average, i.e. eps I / N added to every G~_i, so dead directions get the average, not 0.
Every other floating parameter (biases, LayerNorm, embeddings, convolutions, attention in-projections)
is the (weighted) mean. Buffers follow finish_merge.
The result does not depend on the expert order.

``collect_grams`` records G with forward pre-hooks on every ``nn.Linear`` that is *called as a module*,
inputs flattened to rows [-1, d_in], as a running mean over rows (the reference). open_clip's attention
is ``nn.MultiheadAttention``: its in-projection is a bare parameter and its ``out_proj`` (a Linear
subclass) is applied inside F.multi_head_attention_forward via ``out_proj.weight``, never called, so it is
skipped and plain-averaged; the same holds for the attention-pool projections of open_clip's
ModifiedResNet, which therefore has no RegMean layer at all (a NeuligError says so).
"""
from __future__ import annotations

import itertools
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict, check_compatible, classify_keys, finish_merge, normalized
from neulig.utils.log import log

NOT_APPLICABLE = ("RegMean does not apply to this backbone: none of its nn.Linear layers is called as a module "
                  "(e.g. open_clip ModifiedResNet); use another merge method")


def shrink(gram: Tensor, alpha: float) -> Tensor:
    """alpha * G + (1 - alpha) * diag(G): scale the off-diagonal entries by alpha."""
    return alpha * gram + (1.0 - alpha) * torch.diag(torch.diagonal(gram))


def solve(gram_sum: Tensor, rhs: Tensor, ridge: float, fallback: Tensor, key: str = "") -> Tensor:
    """X = gram_sum^-1 rhs in float64 by LU (torch.linalg.solve, no inverse).

    When gram_sum is numerically singular, i.e. its smallest eigenvalue is below eps = ``ridge`` *
    mean(diag) (some input direction is never active), solve (gram_sum + eps I) X = rhs + eps ``fallback``
    instead: the ridge pulls toward ``fallback`` (the weighted average of W_i^T), so a dead input
    direction gets the plain average, not 0, and equal Grams still give exactly the average.
    """
    a, b = gram_sum.double(), rhs.double()  # no-ops from regmean_weight
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    scale = float(torch.diagonal(a).mean())
    eps = ridge * (scale if scale > 0 else 1.0)
    if int(torch.linalg.cholesky_ex(a - eps * eye).info) == 0:  # lambda_min > eps: well posed
        solution, info = torch.linalg.solve_ex(a, b)
        if int(info) == 0 and bool(torch.isfinite(solution).all()):
            return solution.float()
    eigs = torch.linalg.eigvalsh(a)
    if eps <= 0:
        raise NeuligError(f"RegMean: the summed Gram of {key} is singular (smallest eigenvalue {float(eigs[0]):.3g}); "
                          "set merge.hparams.ridge > 0")
    log.warning("regmean: summed Gram of %s is near-singular (eigenvalues %.3g .. %.3g); ridge %.3g toward the average",
                key, float(eigs[0]), float(eigs[-1]), eps)
    return torch.linalg.solve(a + eps * eye, b + eps * fallback.double()).float()


def regmean_weight(weights: Sequence[Tensor], grams: Sequence[Tensor], alpha: float = 1.0, ridge: float = 1e-6,
                   coeffs: Sequence[float] | None = None, key: str = "") -> Tensor:
    """The RegMean solution W [d_out, d_in] from the experts' weights and mean Gram matrices."""
    n = len(weights)
    coeffs = [1.0 / n] * n if coeffs is None else list(coeffs)
    tilde = [c * n * shrink(g.double(), alpha) for c, g in zip(coeffs, grams)]
    rhs = sum(g @ w.double().t() for g, w in zip(tilde, weights))
    fallback = sum(c * w.double().t() for c, w in zip(coeffs, weights))
    return solve(sum(tilde), rhs, ridge, fallback, key).t()


def _check_grams(base: StateDict, grams: Sequence[Mapping[str, Tensor]], num_experts: int) -> list[str]:
    if len(grams) != num_experts:
        raise NeuligError(f"got {len(grams)} Gram dicts for {num_experts} experts; give one per expert")
    keys = sorted(grams[0])
    if not keys:
        raise NeuligError(NOT_APPLICABLE)
    for i, g in enumerate(grams):
        if sorted(g) != keys:
            raise NeuligError(f"expert {i}'s Gram matrices cover other layers than expert 0's; collect them with "
                              "the same backbone")
    for key in keys:
        if key not in base or base[key].dim() != 2:
            raise NeuligError(f"Gram key {key!r} is not a 2-D weight of the base; keys must be '<linear>.weight'")
        d_in = base[key].shape[1]
        if any(tuple(g[key].shape) != (d_in, d_in) for g in grams):
            raise NeuligError(f"Gram of {key!r} must be [{d_in}, {d_in}] (the layer's fan-in)")
    return keys


def merge(base: StateDict, experts: Sequence[StateDict], grams: Sequence[Mapping[str, Tensor]], alpha: float = 1.0,
          ridge: float = 1e-6, weights: Sequence[float] | None = None) -> StateDict:
    check_compatible(base, experts)
    linear_keys = set(_check_grams(base, grams, len(experts)))
    w = normalized(weights, len(experts))
    coeffs = None if weights is None else w.tolist()
    merged = {}
    for key in classify_keys(base).params:
        device = base[key].device
        if key in linear_keys:
            merged[key] = regmean_weight([e[key].to(device) for e in experts], [g[key].to(device) for g in grams],
                                         alpha, ridge, coeffs, key)
        else:
            merged[key] = sum(float(w[i]) * e[key].float() for i, e in enumerate(experts))
    return finish_merge(merged, base, experts, w)

def _skipped_linears(module: nn.Module) -> set[int]:
    """ids of the Linear modules that nn.MultiheadAttention uses by weight only (its out_proj)."""
    return {id(m.out_proj) for m in module.modules() if isinstance(m, nn.MultiheadAttention)}


@torch.no_grad()
def collect_grams(module: nn.Module, batches: Iterable[object], num_batches: int | None = None) -> dict[str, Tensor]:
    """Mean input Gram matrices {'<linear>.weight': X^T X / n} of ``module``'s nn.Linear layers.

    ``batches`` yields image tensors or ``(images, labels, ...)`` tuples (only the images are used);
    at most ``num_batches`` are run through ``module(images)``. Put the module in eval mode first.
    Raises NeuligError when no nn.Linear is ever called as a module (RegMean does not apply).
    """
    skipped = _skipped_linears(module)
    grams: dict[str, Tensor] = {}
    rows: dict[str, int] = {}

    def hook(name: str):
        def record(_: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            x = inputs[0].detach().float()
            x = x.reshape(-1, x.shape[-1])
            n, seen = x.shape[0], rows.get(name, 0)
            if n == 0:
                return
            batch_gram = x.t() @ x / n
            grams[name] = batch_gram if seen == 0 else grams[name] * (seen / (seen + n)) + batch_gram * (n / (seen + n))
            rows[name] = seen + n
        return record

    handles = [m.register_forward_pre_hook(hook(f"{name}.weight")) for name, m in module.named_modules()
               if isinstance(m, nn.Linear) and id(m) not in skipped]
    device = next(module.parameters()).device
    try:
        for batch in itertools.islice(batches, num_batches):
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            module(images.to(device))
    finally:
        for h in handles:
            h.remove()
    if not grams:
        raise NeuligError(NOT_APPLICABLE)
    return grams
