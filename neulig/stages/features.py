"""Stage 4, expert features: every frozen encoder's raw image features on every split, computed once.

Because experts are frozen, every ensemble, every fine-tuned reference accuracy and Portland's
training read these instead of re-encoding. ``views`` adds random resized crops of the train split
(Portland's augmented views): their boxes come from a generator seeded by (seed, dataset, view) and
never by the expert, so the T experts' features of one crop stay aligned.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from neulig.data.base import LoadedDataset
from neulig.stages.stage import CachedStage
from neulig.utils.cache import config_hash

FEATURES = CachedStage("features", "features", "features.safetensors")
VIEWS = CachedStage("features", "views", "views.safetensors")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitFeatures:
    """One encoder's raw features on one dataset: [N, d] per split, and [views * N, d] of the train
    split's augmented views (view-major) when they were computed."""

    train: Tensor
    val: Tensor
    test: Tensor
    train_views: Tensor | None = None

    def split(self, name: str) -> Tensor:
        return getattr(self, name)


@torch.no_grad()
def encode(encoder: nn.Module, dataset, batch_size: int, device: torch.device, num_workers: int = 0) -> Tensor:
    """Raw image features [N, d] of ``encoder`` on ``dataset`` (eval mode, fixed order), images decoded by
    ``num_workers`` worker processes (:func:`~neulig.data.loaders.loader_options`)."""
    from neulig.data.loaders import loader

    encoder = encoder.to(device).eval()
    return torch.cat([encoder(x.to(device, non_blocking=True)).float().cpu()
                      for x, _ in loader(dataset, batch_size, num_workers=num_workers, device=device)])


def expert_features(encoder: nn.Module, owner_key: str, dataset: LoadedDataset, data_key: dict, cache_dir: Path,
                    device: torch.device, batch_size: int = 256, dtype: torch.dtype = torch.float32,
                    num_workers: int = 0) -> dict[str, Tensor]:
    """Cached features of one frozen encoder on every split of ``dataset``: {split: [N, d]}, computed in
    float32 and kept (on disk too) in ``dtype``."""
    def compute() -> tuple[dict, dict]:
        return {split: encode(encoder, getattr(dataset, split), batch_size, device, num_workers).to(dtype)
                for split in SPLITS}, {}

    parts = (owner_key, data_key) if dtype == torch.float32 else (owner_key, data_key, str(dtype))
    return FEATURES.fetch(cache_dir, parts, compute).tensors


def view_generator(seed: int, dataset_name: str, view: int) -> torch.Generator:
    """The crop generator of one augmented view: seeded by (seed, dataset, view) and never by the
    expert, so every expert encodes exactly the same crops and their features stay aligned."""
    return torch.Generator().manual_seed(int(config_hash("view", seed, dataset_name, view), 16) % (2**63))


@torch.no_grad()
def encode_views(encoder: nn.Module, dataset, dataset_name: str, views: int, scale: tuple[float, float], seed: int,
                 batch_size: int, device: torch.device, num_workers: int = 0) -> Tensor:
    """Features [views * N, d] of ``views`` random resized crops of every image of ``dataset``
    (view-major: rows v*N .. (v+1)*N - 1 are view v of images 0 .. N-1). Each view's boxes are drawn
    for the whole split at once, so they depend on neither the expert nor the batch size."""
    from neulig.data.augment import crop_boxes, resized_crop
    from neulig.data.loaders import loader

    encoder = encoder.to(device).eval()
    out = []
    for view in range(views):
        boxes = None
        for x, _ in loader(dataset, batch_size, num_workers=num_workers, device=device):
            if boxes is None:
                boxes = iter(crop_boxes(len(dataset), x.shape[-1], scale, (3 / 4, 4 / 3),
                                        view_generator(seed, dataset_name, view)).split(batch_size))
            out.append(encoder(resized_crop(x.to(device, non_blocking=True), next(boxes))).float().cpu())
    return torch.cat(out)


def view_features(encoder: nn.Module, owner_key: str, dataset: LoadedDataset, data_key: dict, views: int,
                  scale: tuple[float, float], seed: int, cache_dir: Path, device: torch.device,
                  batch_size: int = 256, dtype: torch.dtype = torch.float32, num_workers: int = 0) -> Tensor:
    """Cached features of ``views`` augmented views of the train split (``encode_views``), kept in ``dtype``."""
    scale = (float(scale[0]), float(scale[1]))

    def compute() -> tuple[dict, dict]:
        feats = encode_views(encoder, dataset.train, dataset.name, views, scale, seed, batch_size, device,
                             num_workers).to(dtype)
        return {"train": feats}, {"views": views, "scale": list(scale)}

    parts = (owner_key, data_key, views, scale, seed) + (() if dtype == torch.float32 else (str(dtype),))
    return VIEWS.fetch(cache_dir, parts, compute).tensors["train"]


class StackedView:
    """A combination's experts' features on one dataset, stacked [N, T, d] (float32) when read: each read
    of ``train`` / ``val`` / ``test`` / ``train_views`` makes a new float32 copy of that split (the caller
    holds it while it needs it), so the run's features stay held once (:class:`RunFeatures`) and no
    combination keeps a copy of its own. Training reads rows from the stores instead (Portland)."""

    def __init__(self, features: RunFeatures, group: list[str], dataset: str):
        self._features, self._group, self._dataset = features, list(group), dataset

    def split(self, name: str) -> Tensor:
        return torch.stack([self._features.experts[e][self._dataset].split(name) for e in self._group], 1).float()

    @property
    def train(self) -> Tensor:
        return self.split("train")

    @property
    def val(self) -> Tensor:
        return self.split("val")

    @property
    def test(self) -> Tensor:
        return self.split("test")

    @property
    def train_views(self) -> Tensor | None:
        return None if self._features.views == 0 else self.split("train_views")


class RunFeatures:
    """Every frozen encoder's features of a run, each held once: the zero-shot backbone of each dataset's
    origin on that dataset (``pretrained``), and every expert on every dataset in one
    :class:`~neulig.portland.features.FeatureStore` per split (``stores``; the train store holds each
    dataset's clean rows then its augmented views', as Portland trains on them). ``experts[e][d]`` are
    views into the stores; ``dtype`` (``feature_dtype``) is how they are held, float32 or float16."""

    def __init__(self, names: list[str], sizes: dict[str, dict[str, int]], views: int, dim: int, dtype: torch.dtype):
        from neulig.portland.features import FeatureStore

        self.names, self.views, self.pretrained = list(names), views, {}
        rows = {"train": {d: n["train"] * (1 + views) for d, n in sizes.items()},
                "val": {d: n["val"] for d, n in sizes.items()}, "test": {d: n["test"] for d, n in sizes.items()}}
        self.stores = {split: FeatureStore(names, rows[split], dim, dtype) for split in SPLITS}
        self._sizes = sizes

    def put(self, expert: str, dataset: str, splits: dict[str, Tensor], train_views: Tensor | None) -> None:
        for split in SPLITS:
            self.stores[split].put(expert, dataset, splits[split])
        if train_views is not None:
            self.stores["train"].put(expert, dataset, train_views, start=self._sizes[dataset]["train"])

    def put_labels(self, dataset: str, labels: dict[str, Tensor]) -> None:
        self.stores["train"].put_labels(dataset, labels["train"].long().repeat(1 + self.views))
        for split in ("val", "test"):
            self.stores[split].put_labels(dataset, labels[split])

    @property
    def experts(self) -> dict[str, dict[str, SplitFeatures]]:
        """expert -> dataset -> its features (views into the stores)."""
        return {e: {d: self._split_features(e, d) for d in self.names} for e in self.names}

    def _split_features(self, expert: str, dataset: str) -> SplitFeatures:
        n = self._sizes[dataset]["train"]
        train = self.stores["train"].rows(expert, dataset)
        return SplitFeatures(train[:n], self.stores["val"].rows(expert, dataset), self.stores["test"].rows(expert, dataset),
                             train[n:] if self.views else None)

    def stacked(self, group: list[str], dataset: str) -> StackedView:
        """The group's experts' features on ``dataset``: [N, T, d] per split, stacked when read."""
        return StackedView(self, group, dataset)

    @property
    def nbytes(self) -> int:
        return sum(store.nbytes for store in self.stores.values())


def all_features(config, backbones: dict, origins: dict, experts: dict, datasets: dict[str, LoadedDataset]
                 ) -> RunFeatures:
    """Cached features of every expert on every dataset and of each dataset's pretrained backbone, with
    the augmented train views a method asks for (``MergeConfig.train_views``: Portland's), put into the
    run's stores one (expert, dataset) at a time, so no second copy is held."""
    import copy

    from neulig.stages.datasets import data_key

    cache, device, workers = config.paths.cache_dir, config.trainer.device(), config.data.num_workers
    dtype = getattr(torch, config.feature_dtype)
    views = config.merge.train_views()
    names = list(datasets)
    keys = {d: data_key(config, datasets[d]) for d in names}
    batch = config.eval.batch_size  # speed only: not in the features' cache key
    pretrained = {d: SplitFeatures(**expert_features(backbones[origins[d]].visual, backbones[origins[d]].key,
                                                     datasets[d], keys[d], cache, device, batch, dtype,
                                                     num_workers=workers)) for d in names}
    sizes = {d: {s: len(getattr(datasets[d], s)) for s in SPLITS} for d in names}
    features = RunFeatures(names, sizes, views[0] if views else 0, pretrained[names[0]].test.shape[-1], dtype)
    features.pretrained = pretrained
    for d in names:
        features.put_labels(d, {s: getattr(datasets[d], s).labels for s in SPLITS})
    scratch = copy.deepcopy(backbones[origins[names[0]]].visual)
    for e in names:
        scratch.load_state_dict(experts[e].state)
        for d in names:
            splits = expert_features(scratch, experts[e].key, datasets[d], keys[d], cache, device, batch, dtype,
                                     num_workers=workers)
            train_views = view_features(scratch, experts[e].key, datasets[d], keys[d], views[0], views[1], config.seed,
                                        cache, device, batch, dtype, num_workers=workers) if views else None
            features.put(e, d, splits, train_views)
    return features


def reference_accuracies(features: RunFeatures, datasets: dict[str, LoadedDataset], heads: dict[str, Tensor]
                         ) -> dict[str, dict[str, float]]:
    """Test accuracy of the zero-shot backbone and of each dataset's own expert, from cached features."""
    from neulig.evaluate import feature_accuracy

    def acc(feats: SplitFeatures, d: str) -> float:
        return feature_accuracy(feats.test, datasets[d].test.labels, heads[d])

    return {"pretrained": {d: acc(features.pretrained[d], d) for d in datasets},
            "finetuned": {d: acc(features.experts[d][d], d) for d in datasets}}
