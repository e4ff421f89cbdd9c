"""Training-time augmentation on image batches, for cached augmented-view features.

The reference trains Portland on images passed through open_clip's *training* transform
(``RandomResizedCrop(scale=(0.9, 1.0))``, docs/neural_ligand.md §10), so every epoch sees fresh crops. neulig
caches expert features instead (the experts are frozen); ``merge.views`` extra views per training
image, each a random resized crop with that transform's parameters, keep that diversity at the
cost of encoding each image ``1 + views`` times once.

The crop acts on already normalised [B, 3, S, S] tensors: cropping and bilinear resizing commute
with the per-channel CLIP normalisation, so the result equals normalising a cropped image.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def crop_boxes(batch: int, size: int, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator) -> Tensor:
    """[B, 4] boxes (x1, y1, x2, y2) in pixels, as torchvision's RandomResizedCrop samples them:
    area fraction ~ U(scale), log aspect ratio ~ U(log ratio), clamped to the image, uniform position."""
    area = size * size * torch.empty(batch).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(batch).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    width = (area * aspect).sqrt().round().clamp(1, size)
    height = (area / aspect).sqrt().round().clamp(1, size)
    left = (torch.rand(batch, generator=generator) * (size - width + 1)).floor()
    top = (torch.rand(batch, generator=generator) * (size - height + 1)).floor()
    return torch.stack([left, top, left + width, top + height], 1)


def resized_crop(images: Tensor, boxes: Tensor) -> Tensor:
    """Crop image i of ``images`` [B, C, S, S] at ``boxes[i]`` (x1, y1, x2, y2) and resize it back to
    S×S, bilinearly, in one batched ``roi_align`` call. Inside its outermost ring of pixels this equals
    ``interpolate(crop, (S, S), mode="bilinear")``; the ring reads half a pixel of real context there."""
    from torchvision.ops import roi_align

    batch, _, size, width = images.shape
    if size != width:
        raise ValueError(f"expected square images, got {size}x{width}")
    rois = torch.cat([torch.arange(batch, dtype=boxes.dtype)[:, None], boxes], 1).to(images)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True)


def random_resized_crop(images: Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.9, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """Each image of ``images`` [B, C, S, S] cropped at a random box (``crop_boxes`` from ``generator``,
    on the CPU) and resized back to S×S."""
    return resized_crop(images, crop_boxes(images.shape[0], images.shape[-1], scale, ratio, generator))
