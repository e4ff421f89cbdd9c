import pytest
import torch

from neulig.errors import NeuligError
from neulig.merging import average


def sd(w, b=None, count=None):
    out = {"w": torch.tensor(w)}
    if b is not None:
        out["b"] = torch.tensor(b)
    if count is not None:
        out["n"] = torch.tensor(count)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_average_oracle_mtda_midpoint(dtype):
    # docs/methods.md §3: theta_1 = [1, 3], theta_2 = [3, -1] -> midpoint [2, 1]
    e1, e2 = {"w": torch.tensor([1.0, 3.0], dtype=dtype)}, {"w": torch.tensor([3.0, -1.0], dtype=dtype)}
    out = average.merge({"w": torch.zeros(2, dtype=dtype)}, [e1, e2])
    assert out["w"].dtype == dtype
    torch.testing.assert_close(out["w"], torch.tensor([2.0, 1.0], dtype=dtype))


def test_weighted_average_and_validation():
    out = average.merge(sd([0.0]), [sd([1.0]), sd([3.0])], weights=[3, 1])
    torch.testing.assert_close(out["w"], torch.tensor([1.5]))
    with pytest.raises(NeuligError, match="2 experts"):
        average.merge(sd([0.0]), [sd([1.0]), sd([3.0])], weights=[1, 1, 1])
    with pytest.raises(NeuligError, match="non-negative"):
        average.merge(sd([0.0]), [sd([1.0]), sd([3.0])], weights=[1, -1])


def test_integer_buffers_copied_from_base_and_order_invariance():
    base = sd([0.0, 0.0], count=7)
    a, b = sd([1.0, 2.0], count=9), sd([3.0, 4.0], count=11)
    ab, ba = average.merge(base, [a, b]), average.merge(base, [b, a])
    assert ab["n"].item() == 7 and ab["n"].dtype == torch.int64
    torch.testing.assert_close(ab["w"], ba["w"])


def test_single_expert_returns_it_and_mismatch_fails():
    e = sd([1.5, -2.0], [0.25])
    out = average.merge(sd([0.0, 0.0], [0.0]), [e])
    torch.testing.assert_close(out["w"], e["w"])
    with pytest.raises(NeuligError, match="shape"):
        average.merge(sd([0.0, 0.0]), [sd([1.0, 2.0, 3.0])])
    with pytest.raises(NeuligError, match="key 'b' is missing"):
        average.merge(sd([0.0], [0.0]), [sd([1.0])])
