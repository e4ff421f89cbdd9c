"""Per-expert statistics that data-dependent merges need, behind one signature:
``fn(encoder, head, batches, *, seed, **options) -> state dict`` (a static method's yaml names it as
``statistics.fn`` and the merge keyword that receives one per expert as ``statistics.argument``;
Portland's ``fisher_variance`` reads :func:`fisher`), and :func:`estimate`, which runs one on each expert."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from torch import Tensor, nn

from neulig.merging.state_dict import StateDict

if TYPE_CHECKING:
    from neulig.methods.combination import Combination


def estimate(combination: Combination, fn: Callable[..., StateDict], options: dict, batch_size: int, seed: int,
             indices: Sequence[int] | None = None) -> list[StateDict]:
    """``fn(encoder, head, batches, seed=seed, **options)`` of each expert (``indices``: these only, in that
    order; default all) on its own dataset's train split in seeded batches of ``batch_size``, on the
    combination's device; the results are moved to the CPU."""
    from neulig.data.loaders import loader

    encoder = copy.deepcopy(combination.visual).to(combination.device).eval()
    device = combination.device
    out = []
    for index in range(len(combination.experts)) if indices is None else indices:
        name = combination.names[index]
        encoder.load_state_dict(combination.experts[index])
        batches = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                   for x, y in loader(combination.datasets[name].train, batch_size, shuffle=True, seed=seed,
                                      num_workers=combination.num_workers, device=device))
        stat = fn(encoder, combination.heads[name].to(device), batches, seed=seed, **options)
        out.append({k: v.cpu() for k, v in stat.items()})
    return out


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
