"""Datasets as seen by the pipeline: a spec (class names, templates) and three splits."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class DatasetSpec:
    """What a zero-shot head needs: class names and CLIP prompt templates ("... {} ...")."""

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


class TensorImages(Dataset):
    """In-memory uint8 images [N, 3, H, W] with labels; yields CLIP-normalised float tensors."""

    def __init__(self, images: Tensor, labels: Tensor, image_size: int | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 [N, 3, H, W] images, got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels.long()
        self.image_size = image_size or images.shape[-1]
        self._mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self._std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        images, labels = self.batch(torch.tensor([index]))
        return images[0], labels[0]

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised images [B, 3, S, S] and labels [B] of ``indices`` in one vectorised step."""
        images = self.images[indices].float().div_(255)
        if images.shape[-1] != self.image_size:
            images = torch.nn.functional.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        return (images - self._mean) / self._std, self.labels[indices]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """Batched fetch used by DataLoader (paired with :func:`collate_batched`)."""
        return self.batch(torch.as_tensor(indices))


def fetch_images(dataset: Dataset, indices: Tensor) -> Tensor:
    """Normalised images of ``indices`` (vectorised for :class:`TensorImages`); labels are discarded."""
    if hasattr(dataset, "batch"):
        return dataset.batch(indices)[0]
    return torch.stack([dataset[int(i)][0] for i in indices])


def collate_batched(batch):
    """Collate for datasets whose ``__getitems__`` already returns a stacked batch."""
    return batch if isinstance(batch, tuple) else torch.utils.data.default_collate(batch)


@dataclass
class LoadedDataset:
    spec: DatasetSpec
    train: Dataset
    val: Dataset
    test: Dataset
    split_note: str = field(default="")
    origin: str = ""  # where a real dataset's files came from (hub:<repo> or torchvision); "" when generated

    @property
    def name(self) -> str:
        return self.spec.name
