"""Portland's evaluation: which CoopVec a test batch is merged with; the training set the runner stacks."""
import pytest
import torch
from torch import nn

from neulig.data.base import DatasetSpec, LoadedDataset, TensorImages
from neulig.merging.flat import FlatStack
from neulig.methods.combination import Combination
from neulig.portland.evaluation import merged_batch_accuracy
from neulig.stages.features import SplitFeatures
from tests.methods.toys import method


class FixedBeta(nn.Module):
    """A stand-in Portland: β of sample i is row i of ``betas`` (read from the feature's first entry)."""

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        self.betas = betas

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.betas[z[:, 0, 0].long()]


def _toy(n: int = 6):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 2, 2), dtype=torch.uint8)
    labels = torch.randint(0, 2, (n,))
    split = TensorImages(images, labels)
    data = LoadedDataset(DatasetSpec("toy", ("a", "b"), ("{}",)), split, split, split)
    visual = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    experts = [{k: torch.randn_like(v) for k, v in visual.state_dict().items()} for _ in range(2)]
    features = torch.arange(n, dtype=torch.float).view(n, 1, 1).expand(n, 2, 3).contiguous()  # sample ids
    combo = Combination(names=["toy"], datasets={"toy": data}, heads={"toy": torch.randn(2, 3)}, base=experts[0],
                        experts=experts, features={"toy": SplitFeatures(features, features, features)}, visual=visual,
                        device=torch.device("cpu"))
    return combo, FlatStack(experts, device=torch.device("cpu"))


def _accuracy_with(combo: Combination, flat: FlatStack, coeffs_per_batch: list[torch.Tensor], batch_size: int) -> float:
    from torch.func import functional_call

    from neulig.models.heads import head_logits

    dataset, correct = combo.datasets["toy"].test, 0
    for b, coeffs in enumerate(coeffs_per_batch):
        idx = torch.arange(b * batch_size, min((b + 1) * batch_size, len(dataset)))
        images, labels = dataset.batch(idx)
        logits = head_logits(functional_call(combo.visual, flat.combine(coeffs), (images,)), combo.heads["toy"])
        correct += int((logits.argmax(-1) == labels).sum())
    return 100.0 * correct / len(dataset)


@pytest.mark.parametrize("weights", ["first", "mean"])
def test_batch_is_merged_with_first_or_mean_coopvec(weights):
    combo, flat = _toy()
    betas = torch.tensor([[1.0, 0.0], [0.2, 0.8], [0.4, 0.6], [0.0, 1.0], [0.9, 0.1], [0.5, 0.5]])
    config = method("portland", f"merge.batch_weights={weights}", "merge.merged_batch_size=3", "merge.eval_shuffle=false")
    got = merged_batch_accuracy(combo, flat, FixedBeta(betas), "toy", config, seed=0)
    pick = (lambda rows: rows[0]) if weights == "first" else (lambda rows: rows.mean(0))
    assert got == pytest.approx(_accuracy_with(combo, flat, [pick(betas[:3]), pick(betas[3:])], 3))


def test_first_and_mean_differ_when_the_first_sample_routes_elsewhere():
    combo, flat = _toy(40)
    betas = torch.tensor([[1.0, 0.0]] + [[0.0, 1.0]] * 39)
    first = _accuracy_with(combo, flat, [betas[0]], 40)
    mean = _accuracy_with(combo, flat, [betas.mean(0)], 40)
    assert first != mean  # the toy can tell the two rules apart, so the test above can fail
    for rule, expected in (("first", first), ("mean", mean)):
        config = method("portland", f"merge.batch_weights={rule}", "merge.merged_batch_size=40", "merge.eval_shuffle=false")
        assert merged_batch_accuracy(combo, flat, FixedBeta(betas), "toy", config, seed=0) == pytest.approx(expected)


def test_training_features_append_views_with_repeated_labels():
    from neulig.portland.runner import training_features

    combo, _ = _toy(4)
    clean, views = torch.randn(4, 2, 5), torch.randn(8, 2, 5)
    combo.features["toy"] = SplitFeatures(clean, clean, clean)
    features, labels = training_features(combo, "toy")
    assert torch.equal(features, clean) and torch.equal(labels, combo.datasets["toy"].train.labels)
    combo.features["toy"] = SplitFeatures(clean, clean, clean, train_views=views)
    features, labels = training_features(combo, "toy")
    assert torch.equal(features, torch.cat([clean, views]))
    assert labels.tolist() == combo.datasets["toy"].train.labels.tolist() * 3
