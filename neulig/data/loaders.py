"""DataLoaders over neulig's datasets (batched fetching for in-memory tensor datasets)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from neulig.data.base import TensorImages, collate_batched


def loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A loader in a fixed order, or a seeded shuffle; in-memory images are fetched a batch at a time."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    collate = collate_batched if isinstance(dataset, TensorImages) else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate,
                      num_workers=num_workers, persistent_workers=num_workers > 0)
