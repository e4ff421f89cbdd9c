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
def encode(encoder: nn.Module, dataset, batch_size: int, device: torch.device) -> Tensor:
    """Raw image features [N, d] of ``encoder`` on ``dataset`` (eval mode, fixed order)."""
    from neulig.data.loaders import loader

    encoder = encoder.to(device).eval()
    return torch.cat([encoder(x.to(device)).float().cpu() for x, _ in loader(dataset, batch_size)])


def expert_features(encoder: nn.Module, owner_key: str, dataset: LoadedDataset, data_key: dict, cache_dir: Path,
                    device: torch.device, batch_size: int = 256) -> dict[str, Tensor]:
    """Cached features of one frozen encoder on every split of ``dataset``: {split: [N, d]}."""
    def compute() -> tuple[dict, dict]:
        return {split: encode(encoder, getattr(dataset, split), batch_size, device) for split in SPLITS}, {}

    return FEATURES.fetch(cache_dir, (owner_key, data_key), compute).tensors


def view_generator(seed: int, dataset_name: str, view: int) -> torch.Generator:
    """The crop generator of one augmented view: seeded by (seed, dataset, view) and never by the
    expert, so every expert encodes exactly the same crops and their features stay aligned."""
    return torch.Generator().manual_seed(int(config_hash("view", seed, dataset_name, view), 16) % (2**63))


@torch.no_grad()
def encode_views(encoder: nn.Module, dataset, dataset_name: str, views: int, scale: tuple[float, float], seed: int,
                 batch_size: int, device: torch.device) -> Tensor:
    """Features [views * N, d] of ``views`` random resized crops of every image of ``dataset``
    (view-major: rows v*N .. (v+1)*N - 1 are view v of images 0 .. N-1). Each view's boxes are drawn
    for the whole split at once, so they depend on neither the expert nor the batch size."""
    from neulig.data.augment import crop_boxes, resized_crop
    from neulig.data.loaders import loader

    encoder = encoder.to(device).eval()
    out = []
    for view in range(views):
        boxes = None
        for x, _ in loader(dataset, batch_size):
            if boxes is None:
                boxes = iter(crop_boxes(len(dataset), x.shape[-1], scale, (3 / 4, 4 / 3),
                                        view_generator(seed, dataset_name, view)).split(batch_size))
            out.append(encoder(resized_crop(x.to(device), next(boxes))).float().cpu())
    return torch.cat(out)


def view_features(encoder: nn.Module, owner_key: str, dataset: LoadedDataset, data_key: dict, views: int,
                  scale: tuple[float, float], seed: int, cache_dir: Path, device: torch.device,
                  batch_size: int = 256) -> Tensor:
    """Cached features of ``views`` augmented views of the train split (``encode_views``)."""
    scale = (float(scale[0]), float(scale[1]))

    def compute() -> tuple[dict, dict]:
        feats = encode_views(encoder, dataset.train, dataset.name, views, scale, seed, batch_size, device)
        return {"train": feats}, {"views": views, "scale": list(scale)}

    return VIEWS.fetch(cache_dir, (owner_key, data_key, views, scale, seed), compute).tensors["train"]


@dataclass(frozen=True)
class RunFeatures:
    """Every frozen encoder's features of a run: the zero-shot backbone of each dataset's origin on that
    dataset, and every expert on every dataset."""

    pretrained: dict[str, SplitFeatures]
    experts: dict[str, dict[str, SplitFeatures]]  # expert -> dataset -> features

    def stacked(self, group: list[str], dataset: str) -> SplitFeatures:
        """The group's experts' features on ``dataset``, stacked: [N, T, d] per split."""
        parts = [self.experts[e][dataset] for e in group]
        views = None if parts[0].train_views is None else torch.stack([p.train_views for p in parts], 1)
        return SplitFeatures(*(torch.stack([p.split(s) for p in parts], 1) for s in SPLITS), train_views=views)


def all_features(config, backbones: dict, origins: dict, experts: dict, datasets: dict[str, LoadedDataset]
                 ) -> RunFeatures:
    """Cached features of every expert on every dataset and of each dataset's pretrained backbone, with
    the augmented train views a method asks for (``MergeConfig.train_views``: Portland's)."""
    import copy

    from neulig.stages.datasets import data_key

    cache, device = config.paths.cache_dir, config.trainer.device()
    views = config.merge.train_views()
    names = list(datasets)
    keys = {d: data_key(config, datasets[d]) for d in names}
    pretrained = {d: SplitFeatures(**expert_features(backbones[origins[d]].visual, backbones[origins[d]].key,
                                                     datasets[d], keys[d], cache, device)) for d in names}
    scratch = copy.deepcopy(backbones[origins[names[0]]].visual)
    per_expert: dict[str, dict[str, SplitFeatures]] = {}
    for e in names:
        scratch.load_state_dict(experts[e].state)
        per_expert[e] = {d: SplitFeatures(
            **expert_features(scratch, experts[e].key, datasets[d], keys[d], cache, device),
            train_views=view_features(scratch, experts[e].key, datasets[d], keys[d], views[0], views[1], config.seed,
                                      cache, device) if views else None) for d in names}
    return RunFeatures(pretrained, per_expert)


def reference_accuracies(features: RunFeatures, datasets: dict[str, LoadedDataset], heads: dict[str, Tensor]
                         ) -> dict[str, dict[str, float]]:
    """Test accuracy of the zero-shot backbone and of each dataset's own expert, from cached features."""
    from neulig.evaluate import feature_accuracy

    def acc(feats: SplitFeatures, d: str) -> float:
        return feature_accuracy(feats.test, datasets[d].test.labels, heads[d])

    return {"pretrained": {d: acc(features.pretrained[d], d) for d in datasets},
            "finetuned": {d: acc(features.experts[d][d], d) for d in datasets}}
