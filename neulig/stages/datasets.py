"""The datasets of a run: every split loaded (generated ones cached), sized and checked non-empty."""
from __future__ import annotations

from dataclasses import asdict

from neulig.data.base import LoadedDataset


def load_datasets(config) -> dict[str, LoadedDataset]:
    from neulig.data.registry import load_dataset

    data = config.data
    sizes = asdict(data.sizes) if data.sizes is not None else None
    return {d: load_dataset(d, sizes, config.model.image_size, data.split_seed, data_dir=data.root,
                            download=data.download, cache_dir=str(config.paths.cache_dir), source=data.source)
            for d in data.names}


def data_key(config, dataset: LoadedDataset) -> dict:
    """What identifies a dataset's splits in the cache keys of the stages that read it."""
    data = config.data
    sizes = asdict(data.sizes) if data.sizes is not None else None
    key = {"name": dataset.name, "sizes": sizes, "split_seed": data.split_seed, "classes": list(dataset.spec.classnames)}
    if dataset.origin:  # a hub repository and torchvision's files split some datasets differently
        key["origin"] = dataset.origin
    return key
