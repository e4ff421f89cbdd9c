"""Every registered dataset (embedded, synthetic, real) has a consistent spec; generated ones load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neulig.data import procedural as proc
from neulig.data.real import REAL_SPECS
from neulig.data.registry import BUILDERS, SPECS, available, load_dataset
from neulig.errors import NeuligError

KNOWN_CLASS_COUNTS = {
    "gtsrb": 43, "cifar10": 10, "cifar100": 100, "resisc45": 45, "mnist": 10, "stl10": 10, "svhn": 10,
    "sun397": 397, "cars": 196, "dtd": 47, "eurosat": 10,
    "digits": 10, "mnist5k": 10, "shapes": 8, "textures": 8, "glyphs": 10,
    "synthetic_shapes": 8, "synthetic_textures": 8,
}
SMALL = {"train": 16, "val": 8, "test": 8}


def test_every_dataset_is_registered_with_a_spec():
    assert set(available()) == set(KNOWN_CLASS_COUNTS)
    assert set(available()) == set(SPECS)
    assert set(REAL_SPECS) <= set(SPECS) and not set(REAL_SPECS) & set(BUILDERS)


@pytest.mark.parametrize("name", sorted(KNOWN_CLASS_COUNTS))
def test_spec_has_one_name_per_class_and_prompt_templates(name):
    spec = SPECS[name]
    assert spec.name == name
    assert spec.num_classes == KNOWN_CLASS_COUNTS[name]
    assert len(set(spec.classnames)) == spec.num_classes, "class names must be distinct"
    assert all(isinstance(c, str) and c.strip() == c and c for c in spec.classnames)
    assert spec.templates and all(t.count("{}") == 1 for t in spec.templates)
    assert len(set(spec.templates)) == len(spec.templates)


def test_unknown_dataset_and_missing_sizes_raise_one_line_errors():
    with pytest.raises(NeuligError, match="unknown dataset 'nope'"):
        load_dataset("nope", SMALL, 32)
    with pytest.raises(NeuligError, match="needs data.sizes") as info:
        load_dataset("synthetic_shapes", None, 32)
    assert "\n" not in str(info.value)


def test_real_names_dispatch_to_the_file_loader(tmp_path):
    with pytest.raises(NeuligError) as info:
        load_dataset("cifar10", None, 32, 0, 32, data_dir=str(tmp_path))
    assert str(tmp_path / "cifar10") in str(info.value)


@pytest.mark.parametrize("name", ["synthetic_shapes", "synthetic_textures"])
def test_synthetic_renders_at_the_model_resolution(name):
    data = load_dataset(name, SMALL, image_size=64)
    assert (len(data.train), len(data.val), len(data.test)) == (16, 8, 8)
    image, label = data.train[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert data.train.images.shape[-1] == 64, "rendered at image_size, not upsampled"
    assert 0 <= int(label) < SPECS[name].num_classes
    again = load_dataset(name, SMALL, image_size=64)
    assert torch.equal(data.test.images, again.test.images)
    assert torch.equal(data.test.labels, again.test.labels)


def test_embedded_textures_keep_their_generator_seed():
    # the embedded 'textures' keep the generator seed they had before the synthetic names existed
    data = load_dataset("textures", SMALL, image_size=32, seed=0)
    images, labels = proc.make_textures(32, 0 + 1000 * 5, size=32, style="task")
    order = torch.from_numpy(np.random.default_rng(0).permutation(32))
    assert torch.equal(data.train.images, images[order[:16]])
    assert torch.equal(data.train.labels, labels[order[:16]])


def test_scale_one_keeps_the_procedural_images():
    a, _ = proc.make_shapes(6, 3, size=32)
    b, _ = proc.make_shapes(6, 3, size=32, scale=1.0)
    assert torch.equal(a, b)
    big, labels = proc.make_textures(4, 3, size=96, scale=3.0)
    assert big.shape == (4, 3, 96, 96) and labels.tolist() == proc.make_textures(4, 3, size=32)[1].tolist()


def test_an_empty_split_is_a_one_line_error():
    from neulig.data.base import LoadedDataset, TensorImages
    from neulig.data.registry import check_not_empty, empty_split_message

    assert empty_split_message(SMALL) is None and empty_split_message({"train": None}) is None
    assert empty_split_message({**SMALL, "test": 0}) == (
        "data.sizes.test=0 leaves every dataset without test images; set it to 1 or more")
    with pytest.raises(NeuligError, match="data.sizes.train=0"):
        load_dataset("digits", {**SMALL, "train": 0}, 32)
    split = TensorImages(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), 32)
    empty = TensorImages(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), 32)
    full = LoadedDataset(SPECS["gtsrb"], split, split, split, "")
    assert check_not_empty(full) is full
    with pytest.raises(NeuligError, match="dataset 'gtsrb' has no val images; check its files or data.sizes.val"):
        check_not_empty(LoadedDataset(SPECS["gtsrb"], split, empty, split, ""))
