"""Alignment inside a combination (``align=``): untouched for one origin or align=none, exact on a permuted
copy, activation images drawn from the train splits only."""
import pytest
import torch

from neulig.alignment import permute_state, random_permutation, spec_for
from neulig.config.align import AlignConfig
from neulig.data.base import DatasetSpec, LoadedDataset, TensorImages
from neulig.methods.align import align_experts, unlabeled_images
from tests.alignment.towers import build, lively_state


def datasets(n: int = 2) -> list[LoadedDataset]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        split = lambda offset: TensorImages(  # noqa: E731 - distinct pixels per split, to tell them apart
            torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g) // 4 + 64 * offset,
            torch.zeros(12, dtype=torch.long))
        out.append(LoadedDataset(DatasetSpec(f"d{i}", ("a",), ("{}",)), split(0), split(1), split(2)))
    return out


@pytest.fixture(scope="module")
def tower():
    visual = build("tiny")
    return visual, lively_state(visual)


def config(method, **kw) -> AlignConfig:
    return AlignConfig(method=method, images=16, batch_size=8, **kw)


@pytest.mark.parametrize("method,origins", [(None, ["0", "1"]), ("mudsc", ["0", "0"])])
def test_none_or_one_origin_leaves_the_experts_untouched(tower, method, origins):
    visual, state = tower
    other = {k: v + 0.01 for k, v in state.items()}
    result = align_experts([state, other], origins, visual, datasets(), config(method))
    assert result.experts[0] is state and result.experts[1] is other and result.metrics == {}


@pytest.mark.parametrize("method", ["activation", "mudsc"])
def test_a_permuted_copy_from_another_origin_is_aligned_back_exactly(tower, method):
    visual, state = tower
    spec = spec_for(visual)
    permuted = permute_state(state, spec, random_permutation(spec, torch.Generator().manual_seed(1)))
    assert any(not torch.equal(permuted[k], state[k]) for k in state)
    result = align_experts([state, permuted], ["0", "1"], visual, datasets(), config(method))
    assert all(torch.equal(result.experts[1][k], state[k]) for k in state)
    assert result.metrics["align/avg/unmoved"] < 1.0  # the permutation moved units, and alignment undid it
    assert set(result.metrics) >= {"align/avg/similarity", "align/avg/unmoved", "align/seconds"}


def test_activation_images_come_from_the_train_splits_only():
    data = datasets(3)
    batches = unlabeled_images(data, 10, 4, seed=0)
    images = torch.cat(batches)
    assert [len(b) for b in batches] == [4, 4, 2]
    train = torch.cat([d.train.batch(torch.arange(12))[0] for d in data])
    others = torch.cat([getattr(d, s).batch(torch.arange(12))[0] for d in data for s in ("val", "test")])
    assert all((train == x).flatten(1).all(1).any() for x in images)
    assert not any((others == x).flatten(1).all(1).any() for x in images)
