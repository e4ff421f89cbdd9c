"""Fisher merging (Matena & Raffel, NeurIPS 2022, arXiv 2111.09832): diagonal-Fisher-weighted average.

theta*[p] = sum_i lambda_i F_i[p] theta_i[p] / sum_i lambda_i F_i[p]  (docs/methods.md §7, reference mmatena
``model_merging/merging.py``), with lambda = ``weights`` normalised to sum 1 (uniform by default) and
- ``normalize`` (default on, as mmatena and MergeLM): lambda_i <- lambda_i / ||F_i||_2 over all of model
  i's Fisher entries (the raw Fisher, before the floor);
- ``floor`` (1e-6): with ``favor_target`` (default, mmatena) only the first expert's Fisher is floored,
  F_1 <- max(F_1, floor), so coordinates where every Fisher is 0 fall back to expert 1 (the "target"):
  the result then depends on which expert comes first, by design. ``favor_target: false`` floors every
  F_i, and such coordinates become the plain lambda-average.
A parameter with no entry in a Fisher dict counts as an all-zero Fisher there.
Estimation (``estimate_fisher``): F = (1/|D|) sum_x E_y[(d log p(y|x)/d theta)^2] with per-example
gradients; ``exact`` takes the expectation over all classes weighted by p(y|x) (mmatena fisher.py),
``sampled`` draws one y ~ p(.|x), ``empirical`` uses the gold label. Batch-level shortcuts (bloomberg
"hard", MergeLM's sqrt(p) trick) are not the Fisher and are not offered.
Buffers follow finish_merge, with BatchNorm statistics pooled by the weights lambda (not by the Fisher).
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict, check_compatible, classify_keys, finish_merge, normalized

MODES = ("empirical", "exact", "sampled")
LogitsFn = Callable[[nn.Module, Tensor], Tensor]


def merge(base: StateDict, experts: Sequence[StateDict], fishers: Sequence[StateDict],
          weights: Sequence[float] | None = None, floor: float = 1e-6, favor_target: bool = True,
          normalize: bool = True) -> StateDict:
    check_compatible(base, experts)
    if len(fishers) != len(experts):
        raise NeuligError(f"got {len(fishers)} Fisher dicts for {len(experts)} experts; give one per expert")
    lam = normalized(weights, len(experts))
    keys = classify_keys(base).params
    coeffs = [float(lam[i]) for i in range(len(experts))]
    if normalize:
        norms = [math.sqrt(sum(float((f[k].double() ** 2).sum()) for k in keys if k in f)) for f in fishers]
        coeffs = [c / n if n > 0 else c for c, n in zip(coeffs, norms)]
    merged = {}
    for key in keys:
        num, den = 0.0, 0.0
        for i, (expert, fisher) in enumerate(zip(experts, fishers)):
            if key in fisher:
                diag = fisher[key].float().to(base[key].device)
            else:
                diag = torch.zeros_like(base[key], dtype=torch.float32)
            if not favor_target or i == 0:
                diag = diag.clamp_min(floor)
            weighted = coeffs[i] * diag
            num = num + weighted * expert[key].float()
            den = den + weighted
        merged[key] = num / den
    return finish_merge(merged, base, experts, lam)


def ensemble_weights(num_experts: int, weights: Sequence[float] | None = None, **_: object) -> list[float]:
    """The merge coefficients lambda (uniform by default)."""
    return normalized(weights, num_experts).tolist()


class _Logits(nn.Module):
    """Wrap ``logits_fn(model, images)`` as a module so torch.func.functional_call can swap its parameters."""

    def __init__(self, model: nn.Module, logits_fn: LogitsFn):
        super().__init__()
        self.model, self.logits_fn = model, logits_fn

    def forward(self, images: Tensor) -> Tensor:
        return self.logits_fn(self.model, images)


def _split(batch: object) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _targets(mode: str, probs: Tensor, labels: Tensor | None,
             generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
    """(target classes [B], weights [B]) pairs whose weighted squared gradients sum to the estimator."""
    ones = torch.ones(probs.shape[0], device=probs.device)
    if mode == "empirical":
        if labels is None:
            raise NeuligError("the empirical Fisher needs labels: give (images, labels) batches or use mode=exact")
        return [(labels.to(probs.device).long(), ones)]
    if mode == "sampled":
        drawn = torch.multinomial(probs.double().cpu(), 1, generator=generator).squeeze(1)
        return [(drawn.to(probs.device), ones)]
    return [(torch.full_like(ones, y, dtype=torch.long), probs[:, y]) for y in range(probs.shape[1])]


def _vmap_sq_grads(wrapper: _Logits, params: dict[str, Tensor], buffers: dict[str, Tensor], images: Tensor,
                   targets: Tensor, chunk_size: int | None) -> dict[str, Tensor]:
    """Per-example squared gradients [B, ...] of log p(target | x) via torch.func."""

    def log_prob(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(wrapper, (p, buffers), (x.unsqueeze(0),))
        return torch.log_softmax(logits.float(), dim=-1)[0].gather(0, y.reshape(1)).squeeze(0)

    with warnings.catch_warnings():  # torch notes that vmap loops over CPU flash attention: same values, slower
        warnings.filterwarnings("ignore", message=r"There is a performance drop because we have not yet implemented "
                                                  r"the batching rule", category=UserWarning)
        grads = vmap(grad(log_prob), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, images, targets)
    return {k: g.float() ** 2 for k, g in grads.items()}


def _loop_sq_grads(model: nn.Module, logits_fn: LogitsFn, names: list[str], images: Tensor,
                   pairs: list[tuple[Tensor, Tensor]], sums: dict[str, Tensor]) -> None:
    """Accumulate sum_b w_b g_b^2 one example at a time (one forward, one backward per target)."""
    params = [dict(model.named_parameters())[n] for n in names]
    for b in range(images.shape[0]):
        log_probs = torch.log_softmax(logits_fn(model, images[b : b + 1]).float(), dim=-1)[0]
        for j, (targets, weights) in enumerate(pairs):
            grads = torch.autograd.grad(log_probs[targets[b]], params, retain_graph=j + 1 < len(pairs),
                                        allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    sums[n] += weights[b] * g.float() ** 2


def estimate_fisher(model: nn.Module, logits_fn: LogitsFn, batches: Iterable[object], mode: str = "empirical",
                    num_batches: int | None = None, vectorize: bool = True, chunk_size: int | None = 16,
                    seed: int = 0) -> StateDict:
    """Diagonal Fisher of every parameter of ``model`` (keys = ``model.named_parameters()`` names).

    ``logits_fn(model, images) -> logits [B, C]``; ``batches`` yields ``(images, labels)`` (labels only
    needed for ``empirical``) or bare image tensors; at most ``num_batches`` are used. The model runs
    in eval mode (restored afterwards). ``vectorize`` computes per-example gradients with
    torch.func.vmap(grad) (``chunk_size`` examples at a time: one P-sized gradient each, so 16 x 350 MB
    for ViT-B/32), otherwise with a loop over examples.
    ``exact`` costs one backward pass per class and example.
    """
    if mode not in MODES:
        raise NeuligError(f"Fisher mode must be one of {MODES}, got {mode!r}")
    names = [n for n, _ in model.named_parameters()]
    first = next(model.parameters())
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(int(seed))
    wrapper = _Logits(model, logits_fn)
    params = {f"model.{n}": p.detach() for n, p in model.named_parameters()}
    buffers = {f"model.{n}": b.detach() for n, b in model.named_buffers()}
    was_training = model.training
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    count = 0
    model.eval()
    try:
        for batch in itertools.islice(batches, num_batches):
            images, labels = _split(batch)
            images = images.to(first.device)
            with torch.no_grad():
                probs = torch.softmax(logits_fn(model, images).float(), dim=-1)
            pairs = _targets(mode, probs, labels, generator)
            if vectorize:
                for targets, weights in pairs:
                    sq = _vmap_sq_grads(wrapper, params, buffers, images, targets, chunk_size)
                    for n in names:
                        sums[n] += torch.einsum("b,b...->...", weights, sq[f"model.{n}"])
            else:
                for p in model.parameters():
                    p.requires_grad_(True)
                with torch.enable_grad():
                    _loop_sq_grads(model, logits_fn, names, images, pairs, sums)
            count += images.shape[0]
    finally:
        model.train(was_training)
        for n, p in model.named_parameters():
            p.requires_grad_(requires[n])
    if count == 0:
        raise NeuligError("estimate_fisher got no examples; pass a non-empty iterable of batches")
    return {n: s / count for n, s in sums.items()}
