"""The paper's real datasets, read from files under ``<data_dir>/<name>`` (never fetched implicitly).

Datasets (lower-case names): the paper's seven ``gtsrb``, ``cifar100``, ``resisc45``, ``cifar10``,
``mnist``, ``stl10``, ``svhn`` and the 8-task benchmark's ``sun397``, ``cars``, ``dtd``, ``eurosat``
(with ``resisc45``, ``svhn``, ``gtsrb``, ``mnist``). All but RESISC45 are torchvision classes called
with ``root=<data_dir>/<name>`` and ``download=<data.download>``; RESISC45 has no torchvision class
and is an image folder, ``<data_dir>/resisc45/<class>/*.jpg`` (45 folders named as the classes, with
``_`` or spaces; a single ``NWPU-RESISC45/`` level in between is accepted too).

Split protocol (``seed`` = the data group's ``split_seed``, 0 by default):

- **test** = the official test split: torchvision's ``train=False`` / ``split="test"`` (GTSRB,
  CIFAR10/100, MNIST, STL10, SVHN, Stanford Cars, DTD partition 1). RESISC45 uses the torchgeo lists
  ``resisc45-test.txt`` (6,300) when they sit in its folder. Datasets without an official test split
  (EuroSAT, SUN397 as torchvision ships them, RESISC45 without lists) hold out a seeded 20% of all
  images as test (EuroSAT 5,400, SUN397 ~21,750, RESISC45 6,300).
- **val** = a seeded hold-out of the official train split: 10% of it, capped at 5,000 images
  (e.g. CIFAR 5,000, GTSRB 2,664, STL10 500, Cars 814). DTD and RESISC45-with-lists have an official
  validation split, which is used instead (DTD ``val1``, 1,880; ``resisc45-val.txt``, 6,300).
- **train** = the rest of the official train split.

``sizes = {train, val, test}`` optionally caps each split with a seeded subset (``None`` = full).
This deviates from the paper's code (docs/neural_ligand.md §9), which evaluates NeuLig on a
held-out half of the training set; here every number is reported on the official test split and
every selection uses val, as the embedded datasets do.

Images get the CLIP evaluation preprocessing: RGB conversion (grey MNIST becomes 3 channels), bicubic
resize of the short side to ``image_size``, centre crop, ``ToTensor`` and CLIP normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from neulig.data.base import CLIP_MEAN, CLIP_STD, DatasetSpec, LoadedDataset
from neulig.data.classnames import CLASSNAMES_AND_TEMPLATES
from neulig.errors import NeuligError

VAL_FRACTION = 0.1        # of the official train split ...
VAL_CAP = 5000            # ... at most this many images
TEST_FRACTION = 0.2       # of all images, where a dataset has no official test split

REAL_SPECS: dict[str, DatasetSpec] = {
    name: DatasetSpec(name, classes, templates) for name, (classes, templates) in CLASSNAMES_AND_TEMPLATES.items()
}


@dataclass(frozen=True)
class Source:
    """Where a dataset's files come from: a torchvision class with its per-split keyword arguments.

    ``test`` / ``val`` are None where there is no official split of that kind; ``files`` says what
    must lie under ``<data_dir>/<name>`` (for the error message).
    """

    torchvision_class: str
    files: str
    train: dict[str, Any]
    test: dict[str, Any] | None = None
    val: dict[str, Any] | None = None
    downloadable: bool = True


SOURCES: dict[str, Source] = {
    "gtsrb": Source("GTSRB", "gtsrb/GTSRB/Training/, gtsrb/GTSRB/Final_Test/Images/, gtsrb/GT-final_test.csv",
                    {"split": "train"}, {"split": "test"}),
    "cifar10": Source("CIFAR10", "cifar-10-batches-py/", {"train": True}, {"train": False}),
    "cifar100": Source("CIFAR100", "cifar-100-python/", {"train": True}, {"train": False}),
    "mnist": Source("MNIST", "MNIST/raw/ with the four *-idx?-ubyte files", {"train": True}, {"train": False}),
    "stl10": Source("STL10", "stl10_binary/", {"split": "train"}, {"split": "test"}),
    "svhn": Source("SVHN", "train_32x32.mat, test_32x32.mat", {"split": "train"}, {"split": "test"}),
    "sun397": Source("SUN397", "SUN397/ with ClassName.txt and the image folders", {}),
    "cars": Source("StanfordCars", "stanford_cars/ with devkit/, cars_train/, cars_test/, "
                   "cars_test_annos_withlabels.mat", {"split": "train"}, {"split": "test"}, downloadable=False),
    "dtd": Source("DTD", "dtd/dtd/ with images/ and labels/", {"split": "train"}, {"split": "test"}, {"split": "val"}),
    "eurosat": Source("EuroSAT", "eurosat/2750/<class>/*.jpg", {}),
    "resisc45": Source("ImageFolder", "<class>/*.jpg, one folder per class (45), optionally the "
                       "resisc45-{train,val,test}.txt split lists", {}, downloadable=False),
}

PAPER7 = ("gtsrb", "cifar100", "resisc45", "cifar10", "mnist", "stl10", "svhn")
TA8 = ("sun397", "cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd")


def available_real() -> list[str]:
    return sorted(REAL_SPECS)


# ---- preprocessing -------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Grey, palette and RGBA images become 3-channel RGB (a module function, so workers can pickle it)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def clip_transform(image_size: int) -> Callable[[Image.Image], Tensor]:
    """CLIP evaluation preprocessing: RGB, bicubic resize, centre crop, ToTensor, CLIP normalisation."""
    from torchvision import transforms as T

    return T.Compose([
        to_rgb,
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ])


# ---- datasets ------------------------------------------------------------------------------------


class LabelledView(Dataset):
    """Items ``index`` of ``base`` with their labels as a LongTensor ``labels`` (read without decoding)."""

    def __init__(self, base: Dataset, index: np.ndarray, labels: np.ndarray):
        self.base = base
        self.index = [int(i) for i in index]
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, _ = self.base[self.index[i]]
        return image, self.labels[i]


@dataclass
class Part:
    """A subset ``index`` of a base dataset whose labels (all items) are ``labels``."""

    base: Dataset
    labels: np.ndarray
    index: np.ndarray

    def view(self) -> LabelledView:
        return LabelledView(self.base, self.index, self.labels[self.index])

    def take(self, index: np.ndarray) -> Part:
        return Part(self.base, self.labels, index)


def base_labels(dataset: Dataset) -> np.ndarray:
    """Every label of a torchvision dataset, from its metadata (no image is decoded)."""
    for attr in ("targets", "labels", "_labels"):
        values = getattr(dataset, attr, None)
        if values is not None:
            return np.asarray(values, dtype=np.int64).reshape(-1)
    samples = getattr(dataset, "_samples", None)
    if samples is not None:
        return np.asarray([label for _, label in samples], dtype=np.int64)
    raise TypeError(f"cannot read the labels of {type(dataset).__name__}")


def whole(dataset: Dataset) -> Part:
    labels = base_labels(dataset)
    return Part(dataset, labels, np.arange(len(labels)))


def missing_message(name: str, root: Path, download: bool) -> str:
    """One line: which dataset, where it was looked for, and how to get it."""
    src = SOURCES[name]
    if name == "resisc45":
        how = f"there is no automatic download; put the NWPU-RESISC45 images there ({src.files})"
    elif not src.downloadable:
        how = (f"torchvision cannot download it any more; put the torchvision {src.torchvision_class} files "
               f"there ({src.files})")
    elif download:
        return (f"dataset {name} could not be downloaded into {root}: check the internet connection, or put "
                f"the torchvision {src.torchvision_class} files there ({src.files})")
    else:
        how = (f"run once with data.download=true on a machine with internet, or put the torchvision "
               f"{src.torchvision_class} files there ({src.files})")
    return f"dataset {name} not found under {root}: {how}"


def open_torchvision(name: str, root: Path, transform: Callable, download: bool) -> dict[str, Part]:
    """The official splits of a torchvision dataset as Parts (keys: train, and test / val if official)."""
    import torchvision.datasets as tvd

    src = SOURCES[name]
    cls = getattr(tvd, src.torchvision_class)
    parts = {}
    for split, kwargs in (("train", src.train), ("test", src.test), ("val", src.val)):
        if kwargs is not None:
            dl = download and src.downloadable
            parts[split] = whole(cls(root=str(root), transform=transform, download=dl, **kwargs))
    return parts


def _class_key(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").strip().lower()


def _resisc45_folder(root: Path) -> Path:
    nested = root / "NWPU-RESISC45"
    return nested if nested.is_dir() else root


def open_resisc45(root: Path, transform: Callable) -> dict[str, Part]:
    """RESISC45 as an image folder; official train/val/test when the torchgeo split lists are present."""
    from torchvision.datasets import ImageFolder

    folder = _resisc45_folder(root)
    if not folder.is_dir():
        raise FileNotFoundError(folder)
    dataset = ImageFolder(str(folder), transform=transform)
    expected = [_class_key(c) for c in REAL_SPECS["resisc45"].classnames]
    found = [_class_key(c) for c in dataset.classes]
    if found != expected:
        odd = sorted(set(found) ^ set(expected))[:3]
        raise NeuligError(f"dataset resisc45 under {folder} has {len(found)} class folders, expected the 45 "
                          f"RESISC45 classes (first differences: {', '.join(odd) or 'order'})")
    everything = whole(dataset)
    lists = {s: root / f"resisc45-{s}.txt" for s in ("train", "val", "test")}
    if not all(p.is_file() for p in lists.values()):
        return {"train": everything}
    basenames = np.asarray([Path(path).name for path, _ in dataset.samples])
    parts = {}
    for split, path in lists.items():
        wanted = {line.strip() for line in path.read_text().splitlines() if line.strip()}
        parts[split] = everything.take(np.flatnonzero(np.isin(basenames, list(wanted))))
    return parts


def open_parts(name: str, root: Path, transform: Callable, download: bool) -> dict[str, Part]:
    """Open the files of ``name``; any failure to find them becomes a one-line NeuligError."""
    try:
        if name == "resisc45":
            return open_resisc45(root, transform)
        return open_torchvision(name, root, transform, download)
    except NeuligError:
        raise
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as exc:
        raise NeuligError(missing_message(name, root, download)) from exc


# ---- splits --------------------------------------------------------------------------------------


def _rng(seed: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose])


def hold_out(index: np.ndarray, n_out: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` into (kept, held out) with ``n_out`` seeded picks; both keep ascending order."""
    picked = np.zeros(len(index), dtype=bool)
    picked[rng.permutation(len(index))[:n_out]] = True
    return index[~picked], index[picked]


def val_count(n_train: int) -> int:
    return min(int(round(VAL_FRACTION * n_train)), VAL_CAP)


def make_splits(parts: dict[str, Part], seed: int) -> tuple[dict[str, Part], list[str]]:
    """train / val / test Parts from the official ones, carving test and val where missing."""
    train, notes = parts["train"], []
    if "test" in parts:
        test = parts["test"]
        notes.append(f"test = official test split ({len(test.index)})")
    else:
        kept, held = hold_out(train.index, int(round(TEST_FRACTION * len(train.index))), _rng(seed, 1))
        train, test = train.take(kept), train.take(held)
        notes.append(f"test = seeded {TEST_FRACTION:.0%} hold-out of all images ({len(held)}; no official test split)")
    if "val" in parts:
        val = parts["val"]
        notes.append(f"val = official validation split ({len(val.index)})")
    else:
        kept, held = hold_out(train.index, val_count(len(train.index)), _rng(seed, 2))
        train, val = train.take(kept), train.take(held)
        notes.append(f"val = seeded {VAL_FRACTION:.0%} hold-out of the train split, capped at {VAL_CAP} ({len(held)})")
    notes.append(f"train = the rest ({len(train.index)})")
    return {"train": train, "val": val, "test": test}, notes


def cap_splits(splits: dict[str, Part], sizes: dict | None, seed: int) -> tuple[dict[str, Part], str]:
    """Seeded subsets of at most ``sizes[split]`` items (None or a missing key: the whole split)."""
    if not sizes:
        return splits, ""
    out = {}
    for k, (split, part) in enumerate(splits.items()):
        cap = sizes.get(split)
        if cap is None or int(cap) >= len(part.index):
            out[split] = part
        else:
            _, kept = hold_out(part.index, int(cap), _rng(seed, 10 + k))
            out[split] = part.take(kept)
    counts = "/".join(str(len(p.index)) for p in out.values())
    return out, f"capped by sizes to {counts}"


def check_labels(name: str, root: Path, parts: dict[str, Part]) -> None:
    num_classes = REAL_SPECS[name].num_classes
    for split, part in parts.items():
        classes = getattr(part.base, "classes", None)
        if classes is not None and len(classes) != num_classes:
            raise NeuligError(f"dataset {name} under {root} has {len(classes)} classes in its {split} split, "
                              f"expected {num_classes}; check its files")
        if len(part.index) and int(part.labels[part.index].max()) >= num_classes:
            raise NeuligError(f"dataset {name} under {root} has labels >= {num_classes}; check its files")
        if len(part.index) == 0:
            raise NeuligError(f"dataset {name} under {root} has an empty {split} split; check its files")


def load_real_dataset(
    name: str, data_dir: str | Path, image_size: int, seed: int = 0, download: bool = False,
    sizes: dict | None = None,
) -> LoadedDataset:
    """Load real dataset ``name`` from ``<data_dir>/<name>`` with the split protocol of this module."""
    if name not in REAL_SPECS:
        raise NeuligError(f"unknown real dataset {name!r}; available: {', '.join(available_real())}")
    root = Path(data_dir) / name
    if not root.is_dir() and not (download and SOURCES[name].downloadable):
        raise NeuligError(missing_message(name, root, download))  # fast path: no torchvision import
    parts = open_parts(name, root, clip_transform(image_size), download)
    check_labels(name, root, parts)
    splits, notes = make_splits(parts, seed)
    splits, capped = cap_splits(splits, sizes, seed)
    note = f"{name} (split seed {seed}): " + "; ".join(notes + ([capped] if capped else []))
    return LoadedDataset(REAL_SPECS[name], splits["train"].view(), splits["val"].view(), splits["test"].view(), note)
