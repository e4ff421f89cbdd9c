"""Loader options: workers decode files (never in-memory tensors), pinned memory only towards CUDA, and the
features computed with workers are exactly those computed in the main process."""
from __future__ import annotations

import torch

from neulig.data.base import TensorImages
from neulig.data.loaders import loader_options
from neulig.data.real import REAL_SPECS, load_real_dataset
from neulig.stages.features import encode
from tests.data.test_hub import hub_repo, place


def test_in_memory_images_never_get_workers():
    images = TensorImages(torch.zeros(10, 3, 8, 8, dtype=torch.uint8), torch.zeros(10, dtype=torch.long), 8)
    options = loader_options(images, 4, num_workers=4, device=torch.device("cuda"))
    assert options["num_workers"] == 0 and options["pin_memory"] and options["collate_fn"] is not None


def test_workers_are_capped_by_the_batches_and_pinning_needs_cuda(tmp_path):
    data = file_dataset(tmp_path)
    assert loader_options(data.test, 8, num_workers=4)["num_workers"] == 2  # 10 images, 2 batches
    assert loader_options(data.test, 8, num_workers=4, device=torch.device("cpu"))["pin_memory"] is False


def file_dataset(tmp_path):
    classes = list(REAL_SPECS["eurosat"].classnames)
    place(hub_repo(tmp_path, "tanganke/eurosat", classes, {"train": 30, "test": 10}), tmp_path / "data" / "eurosat")
    return load_real_dataset("eurosat", tmp_path / "data", 16, source="hub")


def test_features_with_workers_equal_those_without(tmp_path):
    data = file_dataset(tmp_path)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
    alone = encode(encoder, data.train, 8, torch.device("cpu"))
    with_workers = encode(encoder, data.train, 8, torch.device("cpu"), num_workers=2)
    assert alone.shape == (len(data.train), 5) and torch.equal(alone, with_workers)
