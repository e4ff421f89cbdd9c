"""The Portland Lightning module trains on the loss the merging tests check (``merging.portland.loss_sums``)."""
import pytest
import torch

from neulig.lit.portland import PortlandModule
from neulig.merging.portland import offset_statistics, portland_loss, regularizer_statistic


@pytest.mark.parametrize("loss,regularizer", [("sup", "reference"), ("semi", "exact")])
def test_module_batch_loss_is_the_tested_portland_loss(loss, regularizer):
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(6, 2, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
    head = torch.randn(3, 4, generator=g)
    eps_star, gram = offset_statistics(torch.randn(2, 10, generator=g))
    module = PortlandModule({"a": (features, labels)}, {"a": (features, labels)}, {"a": head}, feature_dim=4,
                            loss=loss, scaling=50.0, regularizer=regularizer, eps_star=eps_star, gram=gram)
    module._prepare_device()
    got, _ = module._batch_loss("a", features, labels, global_size=6)
    expected, _ = portland_loss(module.portland, features, labels, head, loss, 50.0, regularizer,
                                regularizer_statistic(regularizer, eps_star, gram))
    torch.testing.assert_close(got, expected)
    half, _ = module._batch_loss("a", features[:3], labels[:3], global_size=6)  # one DDP rank's share
    rest, _ = module._batch_loss("a", features[3:], labels[3:], global_size=6)
    torch.testing.assert_close(half + rest, expected)
