"""DataLoaders over neulig's datasets (batched fetching for in-memory tensor datasets)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from neulig.data.base import TensorImages, collate_batched


def loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
           sampler=None) -> DataLoader:
    """A loader in a fixed order, or a seeded shuffle; in-memory images are fetched a batch at a time. A
    ``sampler`` with a ``generator`` (``lit.preemption.ResumableSampler``) replaces the seeded shuffle. Every
    loader draws its workers' base seed from its own generator, never from torch's global one, so that
    evaluating (a validation epoch) never moves the random stream of training (dropout)."""
    generator = sampler.generator if sampler is not None else torch.Generator().manual_seed(seed)
    collate = collate_batched if isinstance(dataset, TensorImages) else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=generator, collate_fn=collate, num_workers=num_workers, persistent_workers=num_workers > 0)
