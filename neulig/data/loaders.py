"""DataLoaders over neulig's datasets: in-memory images batched in the main process, files decoded by
``data.num_workers`` worker processes into pinned memory when the batches go to a GPU."""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset

from neulig.data.base import TensorImages, collate_batched


def loader_options(dataset: Dataset, batch_size: int, num_workers: int = 0, device: torch.device | None = None,
                   persistent: bool = False) -> dict:
    """DataLoader keyword arguments: worker processes only for datasets decoded from files (in-memory tensors
    are fetched a batch at a time, where workers only add start-up and copies), never more workers than
    batches, kept between epochs when ``persistent`` (a loader iterated again); pinned memory when the
    batches are copied to CUDA (then ``.to(device, non_blocking=True)``)."""
    in_memory = isinstance(dataset, TensorImages)
    workers = 0 if in_memory else max(0, min(int(num_workers), math.ceil(len(dataset) / batch_size)))
    return {"collate_fn": collate_batched if in_memory else None, "num_workers": workers,
            "persistent_workers": persistent and workers > 0,
            "pin_memory": device is not None and torch.device(device).type == "cuda"}


def loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
           device: torch.device | None = None, persistent: bool | None = None, sampler=None) -> DataLoader:
    """A loader in a fixed order (one evaluation pass), or a seeded shuffle (training); its workers persist
    between epochs when ``persistent`` (default: when shuffled; a validation loader that a Trainer
    iterates every epoch asks for it too). A ``sampler`` with a ``generator``
    (``lit.preemption.ResumableSampler``) replaces the seeded shuffle. Every loader draws its workers' base
    seed from its own generator, never from torch's global one, so that evaluating (a validation epoch)
    never moves the random stream of training (dropout). :func:`loader_options` says how batches are made."""
    generator = sampler.generator if sampler is not None else torch.Generator().manual_seed(seed)
    keep = shuffle if persistent is None else persistent
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=generator, **loader_options(dataset, batch_size, num_workers, device, persistent=keep))
