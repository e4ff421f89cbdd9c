"""Real-dataset loading, tested on fake files in tmp_path (no dataset is ever downloaded here)."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neulig.data.base import CLIP_MEAN, CLIP_STD
from neulig.data.hub import HUB_REPOS
from neulig.data.real import REAL_SPECS, load_real_dataset
from neulig.data.sources import SOURCES, fetch_failed_message, missing_message
from neulig.errors import NeuligError

RESISC_FOLDERS = [c.replace(" ", "_") for c in REAL_SPECS["resisc45"].classnames]
EUROSAT_FOLDERS = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake"]


def write_images(folder: Path, stem: str, n: int, colour: tuple[int, int, int], suffix: str = ".jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (12, 10), colour).save(folder / f"{stem}_{i}{suffix}")


def fake_resisc45(data_dir: Path, per_class: int = 4) -> Path:
    root = data_dir / "resisc45"
    for k, cls in enumerate(RESISC_FOLDERS):
        write_images(root / cls, cls, per_class, (k * 5, 0, 255 - k * 5))
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST idx-ubyte file (magic 0x0000080N, big-endian dims, uint8 data)."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fake_mnist(data_dir: Path, n_train: int = 60, n_test: int = 20) -> Path:
    raw = data_dir / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 4:24, 4:24] = (labels * 25)[:, None, None]
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw


def indices(view) -> list[int]:
    return list(view.index)


@pytest.mark.parametrize("name", sorted(REAL_SPECS))
def test_missing_dataset_names_the_place_and_the_fix_in_one_line(tmp_path, name, online):
    with pytest.raises(NeuligError) as info:
        load_real_dataset(name, tmp_path, 32)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"dataset {name} ")
    assert str(tmp_path / name) in message
    assert SOURCES[name].files in message and "data.download=false" in message
    if name in HUB_REPOS:
        assert (f"hf download {HUB_REPOS[name]} --repo-type dataset --include README.md 'data/train-*' 'data/test-*' "
                f"--local-dir {tmp_path / name}") in message
    assert not (tmp_path / name).exists(), "nothing is created without download"


@pytest.mark.parametrize("leftover", ["empty", "partial"])
def test_a_folder_counts_only_when_complete(tmp_path, leftover, online):
    """What a failed torchvision download leaves (an empty folder, or some of the files) is still missing."""
    (tmp_path / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    if leftover == "partial":
        (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    with pytest.raises(NeuligError, match="and data.download=false: put") as info:
        load_real_dataset("cifar10", tmp_path, 32)
    assert "cifar-10-batches-py/" in str(info.value) and "tanganke/cifar10" in str(info.value)


def test_torchvision_only_names_no_hub_repository(tmp_path, online):
    message = missing_message("sun397", tmp_path / "sun397", download=True, source="torchvision")
    assert "torchvision cannot fetch it" in message and "data.source=auto or hub" in message
    assert "hf download" not in message and "SUN397/ with ClassName.txt" in message


def test_fetch_failure_message_is_one_line():
    message = fetch_failed_message("svhn", Path("data/svhn"), "tanganke/svhn", "auto", OSError("reset\nby peer"))
    assert "\n" not in message and "data/svhn" in message and "fetching it from tanganke/svhn failed (OSError: reset)" in message


def test_unknown_real_name(tmp_path):
    with pytest.raises(NeuligError, match="unknown real dataset"):
        load_real_dataset("imagenet", tmp_path, 32)


def test_resisc45_image_folder_loads_and_splits_deterministically(tmp_path):
    fake_resisc45(tmp_path)
    data = load_real_dataset("resisc45", tmp_path, image_size=32)
    # 180 images: seeded 20% test hold-out (36), then 10% of the remaining 144 as val (14)
    assert (len(data.train), len(data.val), len(data.test)) == (130, 14, 36)
    split_sets = [set(indices(s)) for s in (data.train, data.val, data.test)]
    assert set.union(*split_sets) == set(range(180)) and sum(map(len, split_sets)) == 180
    again = load_real_dataset("resisc45", tmp_path, image_size=32)
    for a, b in zip((data.train, data.val, data.test), (again.train, again.val, again.test)):
        assert indices(a) == indices(b) and torch.equal(a.labels, b.labels)
    other = load_real_dataset("resisc45", tmp_path, image_size=32, seed=1)
    assert indices(other.test) != indices(data.test)
    image, label = data.test[0]
    assert image.shape == (3, 32, 32) and label.dtype == torch.long
    path, folder_label = data.test.base.samples[data.test.index[0]]
    assert int(label) == folder_label and Path(path).parent.name == RESISC_FOLDERS[folder_label]
    assert "20%" in data.split_note and "10%" in data.split_note


def test_resisc45_uses_split_lists_and_caps(tmp_path):
    root = fake_resisc45(tmp_path, per_class=3)
    names = {k: [f"{c}_{k}.jpg" for c in RESISC_FOLDERS] for k in range(3)}
    for k, split in enumerate(("train", "val", "test")):
        (root / f"resisc45-{split}.txt").write_text("\n".join(names[k]) + "\n")
    data = load_real_dataset("resisc45", tmp_path, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (45, 45, 45)
    assert sorted(data.test.labels.tolist()) == list(range(45))
    assert "official validation split" in data.split_note
    capped = load_real_dataset("resisc45", tmp_path, 32, sizes={"train": 10, "val": None, "test": 5})
    assert (len(capped.train), len(capped.val), len(capped.test)) == (10, 45, 5)
    assert set(indices(capped.test)) <= set(indices(data.test))


def test_resisc45_with_wrong_folders_is_rejected(tmp_path):
    fake_resisc45(tmp_path, per_class=1)
    (tmp_path / "resisc45" / RESISC_FOLDERS[3]).rename(tmp_path / "resisc45" / "cat")
    with pytest.raises(NeuligError, match="expected the 45"):
        load_real_dataset("resisc45", tmp_path, 32)


def test_resisc45_with_a_few_class_folders_is_missing(tmp_path):
    write_images(tmp_path / "resisc45" / "cat", "cat", 2, (0, 0, 0))
    with pytest.raises(NeuligError, match="dataset resisc45 not found under"):
        load_real_dataset("resisc45", tmp_path, 32)


def test_fake_mnist_loads_through_torchvision_as_rgb(tmp_path):
    fake_mnist(tmp_path)
    data = load_real_dataset("mnist", tmp_path, image_size=32)
    assert (len(data.train), len(data.val), len(data.test)) == (54, 6, 20)
    assert data.test.labels.tolist() == [i % 10 for i in range(20)], "official test split, in order"
    image, label = data.test[3]
    assert image.shape == (3, 32, 32)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    pixels = image * std + mean
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[0], pixels[2], atol=1e-5)
    grey = 3 * 25 / 255  # value inside the square, channel 0 after normalisation
    assert abs(float(image[0, 16, 16]) - (grey - CLIP_MEAN[0]) / CLIP_STD[0]) < 0.05
    assert "official test split (20)" in data.split_note


def test_fake_eurosat_has_a_seeded_test_hold_out(tmp_path):
    for k, cls in enumerate(EUROSAT_FOLDERS):
        write_images(tmp_path / "eurosat" / "eurosat" / "2750" / cls, cls, 5, (20 * k, 100, 0))
    data = load_real_dataset("eurosat", tmp_path, image_size=16, sizes=None)
    assert (len(data.train), len(data.val), len(data.test)) == (36, 4, 10)
    assert data.test[0][0].shape == (3, 16, 16)
    assert "no official test split" in data.split_note


def test_fake_dtd_uses_its_official_validation_split(tmp_path):
    base = tmp_path / "dtd" / "dtd" / "dtd"
    classes = REAL_SPECS["dtd"].classnames
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for k, cls in enumerate(classes):
        write_images(base / "images" / cls, cls, 3, (k * 5, 50, 50))
        for i, split in enumerate(lines):
            lines[split].append(f"{cls}/{cls}_{i}.jpg")
    (base / "labels").mkdir()
    for split, rows in lines.items():
        (base / "labels" / f"{split}1.txt").write_text("\n".join(rows) + "\n")
    data = load_real_dataset("dtd", tmp_path, image_size=16)
    assert (len(data.train), len(data.val), len(data.test)) == (47, 47, 47)
    assert data.val.labels.tolist() == list(range(47))
    assert "official validation split" in data.split_note and "official test split" in data.split_note
