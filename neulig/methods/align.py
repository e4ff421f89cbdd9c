"""Permutation alignment of a combination's experts before its method sees them (``align=``).

Every expert is aligned to the combination's first one, whose origin is the base's (theta_0), with
:func:`neulig.alignment.align`; the permuted experts compute the same functions, so their cached
features (and every ensemble) stay as they are, and only the weights a merge averages change. Experts
of one origin are returned untouched unless ``align.always``. Activations come from ``align.images``
unlabeled images of the combination's train splits, the same number from each (never val or test).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from neulig.config.align import AlignConfig
from neulig.data.base import LoadedDataset, fetch_images
from neulig.merging.state_dict import StateDict


@dataclass(frozen=True)
class Alignment:
    """The aligned experts and what alignment measured: per group, the mean matched similarity and the
    share of units left in place (averaged over the aligned experts), and the seconds it took."""

    experts: list[StateDict]
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def metrics(self) -> dict[str, float]:
        """``align/<group>/similarity``, ``align/<group>/unmoved``, their means and ``align/seconds``."""
        if not self.groups:
            return {}
        out = {f"align/{g}/{k}": v for g, values in self.groups.items() for k, v in values.items()}
        for key in ("similarity", "unmoved"):
            out[f"align/avg/{key}"] = sum(v[key] for v in self.groups.values()) / len(self.groups)
        return {**out, "align/seconds": self.seconds}


def unlabeled_images(datasets: list[LoadedDataset], count: int, batch_size: int, seed: int) -> list[Tensor]:
    """``count`` train images, an equal share from each dataset (seeded), in batches of ``batch_size``."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for i, dataset in enumerate(datasets):
        share = count // len(datasets) + (1 if i < count % len(datasets) else 0)
        index = torch.randperm(len(dataset.train), generator=generator)[:share]
        images.append(fetch_images(dataset.train, index))
    return list(torch.cat(images).split(batch_size))


def align_experts(experts: list[StateDict], origins: list[object], visual: nn.Module,
                  datasets: list[LoadedDataset], config: AlignConfig) -> Alignment:
    """The combination's experts aligned to its first one (``config.method``), or untouched."""
    from neulig.alignment import align

    if config.method is None or (len(set(map(str, origins))) == 1 and not config.always):
        return Alignment(list(experts))
    images = None if config.method == "weight" else unlabeled_images(datasets, config.images, config.batch_size,
                                                                     config.seed)
    result = align(experts[0], experts[1:], visual, config.method, images, config)
    groups = {name: {"similarity": sum(r[name].similarity for r in result.reports) / len(result.reports),
                     "unmoved": sum(r[name].unmoved for r in result.reports) / len(result.reports)}
              for name in result.reports[0]}
    return Alignment([experts[0], *result.aligned], groups, result.seconds)
