import pytest
import torch

from neulig.merging import task_arithmetic


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_oracle_addition(dtype):
    # docs/methods.md §6: theta_0 = [1, 2], tau_1 = [0.5, -1], tau_2 = [1, 1], lambda 0.3 -> [1.45, 2.0]
    base = {"w": torch.tensor([1.0, 2.0], dtype=dtype), "n": torch.tensor(7)}
    e1 = {"w": base["w"] + torch.tensor([0.5, -1.0], dtype=dtype), "n": torch.tensor(9)}
    e2 = {"w": base["w"] + torch.tensor([1.0, 1.0], dtype=dtype), "n": torch.tensor(9)}
    out = task_arithmetic.merge(base, [e1, e2], scaling=0.3)
    torch.testing.assert_close(out["w"], torch.tensor([1.45, 2.0], dtype=dtype))
    assert out["w"].dtype == dtype
    assert out["n"].item() == 7  # integer buffer stays the base's


def test_oracle_negation_and_zero_scale():
    base = {"w": torch.tensor([1.0, 2.0])}
    e1 = {"w": torch.tensor([1.5, 1.0])}
    out = task_arithmetic.merge(base, [e1], scaling=-0.5)  # negation with lambda 0.5
    torch.testing.assert_close(out["w"], torch.tensor([0.75, 2.5]))
    torch.testing.assert_close(task_arithmetic.merge(base, [e1], scaling=0.0)["w"], base["w"])
    torch.testing.assert_close(task_arithmetic.merge(base, [e1], scaling=1.0)["w"], e1["w"])


def test_batchnorm_statistics_pooled_not_extrapolated():
    base = {"bn.running_mean": torch.zeros(1), "bn.running_var": torch.ones(1), "bn.num_batches_tracked": torch.tensor(0)}
    a = {"bn.running_mean": torch.tensor([0.0]), "bn.running_var": torch.tensor([1.0]),
         "bn.num_batches_tracked": torch.tensor(50)}
    b = {"bn.running_mean": torch.tensor([2.0]), "bn.running_var": torch.tensor([3.0]),
         "bn.num_batches_tracked": torch.tensor(50)}
    out = task_arithmetic.merge(base, [a, b], scaling=-1.0)  # a negation would make var negative
    torch.testing.assert_close(out["bn.running_mean"], torch.tensor([1.0]))
    torch.testing.assert_close(out["bn.running_var"], torch.tensor([3.0]))
