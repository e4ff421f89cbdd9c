"""Fetching with torchvision publishes a complete folder or nothing; SUN397's labels follow our class order."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd

from neulig.data.real import REAL_SPECS, load_real_dataset
from neulig.data.sources import plan, torchvision_complete
from neulig.errors import NeuligError
from tests.data.test_real import write_idx, write_images

REAL_MNIST = tvd.MNIST


def write_mnist(root: Path, n: int = 30) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.zeros((n, 28, 28), np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


class DroppedMNIST:
    """torchvision's MNIST whose download dies halfway, after writing one of its files."""

    def __init__(self, root, transform=None, download=False, **kwargs):
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "train-images-idx3-ubyte").write_bytes(b"half")
        raise RuntimeError("connection reset by peer")


def completing_mnist(root, transform=None, download=False, **kwargs):
    """torchvision's MNIST whose download (stubbed) writes every file, then reads them as usual."""
    if download:
        write_mnist(Path(root))
    return REAL_MNIST(root, transform=transform, download=False, **kwargs)


def test_an_interrupted_download_publishes_nothing_and_the_next_run_completes_it(tmp_path, monkeypatch, online):
    root = tmp_path / "mnist"
    monkeypatch.setattr(tvd, "MNIST", DroppedMNIST)
    with pytest.raises(NeuligError) as info:
        load_real_dataset("mnist", tmp_path, 16, download=True, source="torchvision")
    assert "fetching it from torchvision MNIST failed (RuntimeError: connection reset by peer)" in str(info.value)
    assert "\n" not in str(info.value) and not root.exists(), "nothing published under data.root/mnist"
    assert plan("mnist", root, "torchvision", download=False) is None, "the next offline run still misses it"
    monkeypatch.setattr(tvd, "MNIST", completing_mnist)
    data = load_real_dataset("mnist", tmp_path, 16, download=True, source="torchvision")
    assert (len(data.train), len(data.val), len(data.test)) == (27, 3, 30)
    assert torchvision_complete("mnist", root) and not (tmp_path / ".mnist.partial").exists()
    assert "torchvision files in" in data.split_note and data.origin == "torchvision"


def test_an_incomplete_folder_is_moved_aside_not_deleted(tmp_path, monkeypatch, online):
    (tmp_path / "mnist" / "MNIST").mkdir(parents=True)
    (tmp_path / "mnist" / "mine.txt").write_text("a user's file")
    monkeypatch.setattr(tvd, "MNIST", completing_mnist)
    load_real_dataset("mnist", tmp_path, 16, download=True, source="torchvision")
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("mnist.incomplete-")]
    assert len(aside) == 1 and (aside[0] / "mine.txt").read_text() == "a user's file"


def sun397_class_file(names: list[str]) -> list[str]:
    """ClassName.txt as SUN397 ships it: '/<letter>/<path>' lines in sorted order; 'jail indoor' is the
    sub-folder jail/indoor, so it sorts before jail_cell (torchvision's order, not neulig's)."""
    def path(name: str) -> str:
        return "jail/indoor" if name == "jail indoor" else name.replace(" ", "_")
    return sorted(f"/{path(n)[0]}/{path(n)}" for n in names)


def test_sun397_labels_follow_our_class_order_whatever_torchvision_sorts(tmp_path):
    ours = list(REAL_SPECS["sun397"].classnames)
    assert ours.index("jail cell") < ours.index("jail indoor")
    lines = sun397_class_file(ours)
    assert lines.index("/j/jail/indoor") < lines.index("/j/jail_cell"), "torchvision's order differs"
    base = tmp_path / "sun397" / "SUN397"
    base.mkdir(parents=True)
    (base / "ClassName.txt").write_text("\n".join(lines) + "\n")
    write_images(base / "j" / "jail" / "indoor", "sun_indoor", 10, (0, 0, 0))
    write_images(base / "j" / "jail_cell", "sun_cell", 10, (255, 255, 255))
    data = load_real_dataset("sun397", tmp_path, 16)
    for split in (data.train, data.val, data.test):
        for row, label in zip(split.index, split.labels.tolist()):
            folder = Path(split.base._image_files[row]).parent.name
            assert ours[label] == ("jail indoor" if folder == "indoor" else "jail cell")


def test_sun397_with_unknown_class_names_is_refused(tmp_path):
    base = tmp_path / "sun397" / "SUN397"
    base.mkdir(parents=True)
    (base / "ClassName.txt").write_text("/a/abbey\n/z/zebra_crossing\n")
    write_images(base / "a" / "abbey", "sun_a", 5, (0, 0, 0))
    with pytest.raises(NeuligError, match="has 2 classes, not neulig's 397"):
        load_real_dataset("sun397", tmp_path, 16)
