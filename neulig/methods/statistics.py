"""Per-expert statistics that data-dependent static merges need, behind one signature:
``fn(encoder, head, batches, *, seed, **options) -> state dict`` (a method's yaml names it as
``statistics.fn`` and the merge keyword that receives one per expert as ``statistics.argument``)."""
from __future__ import annotations

from typing import Iterable

from torch import Tensor, nn

from neulig.merging.state_dict import StateDict


def fisher(encoder: nn.Module, head: Tensor, batches: Iterable, *, seed: int, num_batches: int,
           mode: str) -> StateDict:
    """Diagonal Fisher of the expert with its zero-shot head (Matena & Raffel, arXiv 2111.09832)."""
    from neulig.merging.fisher import estimate_fisher
    from neulig.models.heads import head_logits

    return estimate_fisher(encoder, lambda m, x: head_logits(m(x), head), batches, seed=seed,
                           num_batches=num_batches, mode=mode)


def grams(encoder: nn.Module, head: Tensor, batches: Iterable, *, seed: int, num_batches: int) -> StateDict:
    """Input Gram matrices of the expert's linear layers (RegMean, arXiv 2212.09849); no head needed."""
    from neulig.merging.regmean import collect_grams

    return collect_grams(encoder, batches, num_batches=num_batches)
