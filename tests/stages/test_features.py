"""Augmented-view features for Portland: aligned across experts, cached, appended to the train set."""
import torch
from torch import nn

from neulig.data.base import DatasetSpec, LoadedDataset, TensorImages
from neulig.stages.features import encode_views, view_features


def _dataset(n: int = 10, seed: int = 0) -> LoadedDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    split = TensorImages(images, torch.arange(n) % 3)
    return LoadedDataset(DatasetSpec("toy", ("a", "b", "c"), ("{}",)), split, split, split)


def test_every_expert_sees_the_same_crops_and_views_differ():
    data, flatten = _dataset(), nn.Flatten()
    a = encode_views(flatten, data.train, "toy", 2, (0.5, 0.9), seed=0, batch_size=4, device=torch.device("cpu"))
    b = encode_views(nn.Sequential(nn.Flatten()), data.train, "toy", 2, (0.5, 0.9), seed=0, batch_size=7,
                     device=torch.device("cpu"))
    assert a.shape == (20, 3 * 8 * 8)
    torch.testing.assert_close(a, b)  # another expert, another batch size: the same crops
    clean = flatten(data.train.batch(torch.arange(10))[0])
    assert not torch.allclose(a[:10], clean) and not torch.allclose(a[:10], a[10:])
    c = encode_views(flatten, data.train, "toy", 2, (0.5, 0.9), seed=1, batch_size=4, device=torch.device("cpu"))
    assert not torch.allclose(a, c)  # the seed changes the crops


def test_view_features_are_cached_and_verified(tmp_path):
    data, calls = _dataset(), []

    class Counting(nn.Flatten):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    first = view_features(Counting(), "owner", data, {"sizes": None}, 1, (0.8, 1.0), 0, tmp_path, torch.device("cpu"))
    again = view_features(Counting(), "owner", data, {"sizes": None}, 1, (0.8, 1.0), 0, tmp_path, torch.device("cpu"))
    assert sum(calls) == 10 and torch.equal(first, again)
