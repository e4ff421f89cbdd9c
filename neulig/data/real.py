"""The paper's real datasets: files under ``<data_dir>/<name>``, or a hub repository, fetched when missing.

Datasets (lower-case names): the paper's seven ``gtsrb``, ``cifar100``, ``resisc45``, ``cifar10``,
``mnist``, ``stl10``, ``svhn`` and the 8-task benchmark's ``sun397``, ``cars``, ``dtd``, ``eurosat``
(with ``resisc45``, ``svhn``, ``gtsrb``, ``mnist``). Where they come from (``data.source``: torchvision's
files under ``root=<data_dir>/<name>``, or FusionBench's parquet repositories on the hub) and when they
are fetched is :mod:`neulig.data.sources`; the table of sizes, class orders and provenance is
docs/datasets.md. RESISC45 has no torchvision class: as files it is an image folder,
``<data_dir>/resisc45/<class>/*.jpg`` (45 folders named as the classes, with ``_`` or spaces; a single
``NWPU-RESISC45/`` level in between is accepted too). Labels are always in neulig's class order
(neulig/data/classnames.py): a source ordering the same names differently is mapped by name.

Split protocol, the same whichever source delivered the official splits (a hub repository's ``train``
and ``test`` are its official ones):

(``seed`` = the data group's ``split_seed``, 0 by default)

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
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from neulig.data.base import CLIP_MEAN, CLIP_STD, DatasetSpec, LoadedDataset
from neulig.data.classnames import CLASSNAMES_AND_TEMPLATES
from neulig.data.hub import HubCopy, ParquetImages, fetch_copy
from neulig.data.sources import SOURCES, fetch_failed_message, missing_message, plan, resisc45_folder, where_to_get
from neulig.errors import NeuligError

VAL_FRACTION = 0.1        # of the official train split ...
VAL_CAP = 5000            # ... at most this many images
TEST_FRACTION = 0.2       # of all images, where a dataset has no official test split

REAL_SPECS: dict[str, DatasetSpec] = {
    name: DatasetSpec(name, classes, templates) for name, (classes, templates) in CLASSNAMES_AND_TEMPLATES.items()
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


def whole(dataset: Dataset, label_map: np.ndarray | None = None) -> Part:
    """All of ``dataset``; ``label_map[source label]`` is neulig's label where the source orders classes
    differently (:func:`class_order`)."""
    labels = base_labels(dataset)
    return Part(dataset, labels if label_map is None else label_map[labels], np.arange(len(labels)))


def class_order(source_names: list[str] | None, ours: tuple[str, ...] | list[str]) -> np.ndarray | None:
    """``map[source label] = neulig label`` when a source names the same classes in another order
    (torchvision's SUN397 sorts ``jail/indoor`` before ``jail_cell``); None when the orders agree or the
    names cannot be matched one to one (then the source's label order is taken as neulig's)."""
    if not source_names:
        return None
    theirs, mine = [_class_key(n) for n in source_names], [_class_key(n) for n in ours]
    if theirs == mine or sorted(theirs) != sorted(mine) or len(set(mine)) != len(mine):
        return None
    index = {key: i for i, key in enumerate(mine)}
    return np.asarray([index[key] for key in theirs], dtype=np.int64)


MATCHED_BY_NAME = frozenset({"sun397"})  # torchvision's class order differs from neulig's: labels mapped by name


def check_class_names(name: str, root: Path, classes: list[str]) -> None:
    """A one-line error unless ``classes`` are neulig's class names of ``name`` in some order."""
    unknown = sorted(set(map(_class_key, classes)) - set(map(_class_key, REAL_SPECS[name].classnames)))
    if unknown or len(classes) != REAL_SPECS[name].num_classes:
        raise NeuligError(f"dataset {name} under {root} has {len(classes)} classes, not neulig's "
                          f"{REAL_SPECS[name].num_classes} (unknown: {', '.join(unknown[:3]) or 'none'}); check its files")


def open_torchvision(name: str, root: Path, transform: Callable, download: bool = False) -> dict[str, Part]:
    """The official splits of a torchvision dataset as Parts (keys: train, and test / val if official),
    labels in neulig's class order."""
    import torchvision.datasets as tvd

    src = SOURCES[name]
    cls = getattr(tvd, src.torchvision_class)
    parts = {}
    for split, kwargs in (("train", src.train), ("test", src.test), ("val", src.val)):
        if kwargs is not None:
            dataset = cls(root=str(root), transform=transform, download=download and src.downloadable, **kwargs)
            classes = getattr(dataset, "classes", None)
            if name in MATCHED_BY_NAME:
                check_class_names(name, root, classes)
            parts[split] = whole(dataset, class_order(classes, REAL_SPECS[name].classnames))
    return parts


def fetch_torchvision(name: str, root: Path) -> None:
    """Let torchvision download ``name`` into ``.<name>.partial`` beside ``root`` (kept between runs, so
    an interrupted download resumes from the archives it finished) and publish it as ``root`` only when
    complete; an incomplete ``root`` left by an older run is moved aside, never deleted."""
    import time

    from neulig.data.sources import torchvision_complete

    partial = root.with_name(f".{root.name}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    open_torchvision(name, partial, to_rgb, download=True)
    if not torchvision_complete(name, partial):
        raise FileNotFoundError(f"torchvision's download of {name} left incomplete files in {partial}")
    if root.exists():
        root.rename(root.with_name(f"{root.name}.incomplete-{int(time.time())}"))
    partial.rename(root)


def _class_key(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").replace("/", " ").strip().lower()


def open_resisc45(root: Path, transform: Callable) -> dict[str, Part]:
    """RESISC45 as an image folder; official train/val/test when the torchgeo split lists are present."""
    from torchvision.datasets import ImageFolder

    folder = resisc45_folder(root)
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


def open_hub(name: str, copy: HubCopy, transform: Callable) -> dict[str, Part]:
    """The train and test splits of a hub repository's parquet files, labels in neulig's class order."""
    ours = REAL_SPECS[name].classnames
    if copy.classnames is not None and len(copy.classnames) != len(ours):
        raise NeuligError(f"dataset {name} from {copy.provenance} has {len(copy.classnames)} classes, expected "
                          f"{len(ours)}; check the repository")
    label_map = class_order(copy.classnames, ours)
    return {split: whole(ParquetImages(files, transform, label_map)) for split, files in copy.files.items()}


def open_parts(name: str, root: Path, transform: Callable, download: bool = False, source: str = "auto"
               ) -> tuple[dict[str, Part], str, str]:
    """Open the files of ``name`` (fetching them first where :func:`~neulig.data.sources.plan` says so):
    its official splits, where they came from (for people) and the source's identity (for cache keys:
    ``hub:<repo>`` or ``torchvision``, the same whether fetched, cached or copied). Any failure is a
    one-line NeuligError."""
    how = plan(name, root, source, download)
    if how is None:
        raise NeuligError(missing_message(name, root, download, source))
    origin = how.repo if how.kind == "hub" else f"torchvision {SOURCES[name].torchvision_class}"
    try:
        if how.kind == "hub":
            copy = how.copy if how.copy is not None else fetch_copy(how.repo)
            return open_hub(name, copy, transform), copy.provenance, f"hub:{how.repo}"
        if how.fetch:
            fetch_torchvision(name, root)
        opened = open_resisc45(root, transform) if name == "resisc45" else open_torchvision(name, root, transform)
        return opened, f"{'torchvision' if name != 'resisc45' else 'image folder'} files in {root}", "torchvision"
    except NeuligError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, archive and file errors alike become one line
        if how.fetch:
            raise NeuligError(fetch_failed_message(name, root, origin, source, exc)) from exc
        raise NeuligError(f"dataset {name}: the files under {root} cannot be read ({exc}); "
                          f"put {where_to_get(name, root, source)} there") from exc


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
    sizes: dict | None = None, source: str = "auto",
) -> LoadedDataset:
    """Load real dataset ``name`` (files under ``<data_dir>/<name>``, or a hub repository, ``source``)
    with the split protocol of this module."""
    if name not in REAL_SPECS:
        raise NeuligError(f"unknown real dataset {name!r}; available: {', '.join(available_real())}")
    root = Path(data_dir) / name
    parts, provenance, origin = open_parts(name, root, clip_transform(image_size), download, source)
    check_labels(name, root, parts)
    splits, notes = make_splits(parts, seed)
    splits, capped = cap_splits(splits, sizes, seed)
    note = f"{name} from {provenance} (split seed {seed}): " + "; ".join(notes + ([capped] if capped else []))
    return LoadedDataset(REAL_SPECS[name], splits["train"].view(), splits["val"].view(), splits["test"].view(), note,
                         origin)
