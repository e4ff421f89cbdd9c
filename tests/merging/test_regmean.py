"""RegMean: docs/methods.md §8 oracle, Gram collection with hooks, and merge properties."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neulig.errors import NeuligError
from neulig.merging import average, regmean
from neulig.merging.state_dict import normalized
from tests.merging.merge_toys import (
    DTYPES,
    assert_close,
    assert_params_close,
    assert_params_differ,
    check_buffers,
    make_family,
)

G1, G2 = [[2.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [0.0, 3.0]]


def oracle(dtype):
    base = {"fc.weight": torch.zeros(1, 2, dtype=dtype), "fc.bias": torch.zeros(1, dtype=dtype)}
    experts = [{"fc.weight": torch.tensor([[1.0, 0.0]], dtype=dtype), "fc.bias": torch.tensor([1.0], dtype=dtype)},
               {"fc.weight": torch.tensor([[0.0, 1.0]], dtype=dtype), "fc.bias": torch.tensor([3.0], dtype=dtype)}]
    grams = [{"fc.weight": torch.tensor(G1)}, {"fc.weight": torch.tensor(G2)}]
    return base, experts, grams


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,expected", [(1.0, [[4 / 11, 10 / 11]]), (0.5, [[0.531915, 0.808511]]), (0.0, [[2 / 3, 0.75]])])
def test_oracle(dtype, alpha, expected):
    base, experts, grams = oracle(dtype)
    out = regmean.merge(base, experts, grams, alpha=alpha)
    assert out["fc.weight"].dtype == dtype
    assert_close(out["fc.weight"], expected, atol=1e-6)
    assert out["fc.bias"].tolist() == [2.0]  # biases are averaged


def test_shrink_keeps_the_diagonal():
    assert regmean.shrink(torch.tensor(G1), 0.5).tolist() == [[2.0, 0.5], [0.5, 1.0]]


def spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.t() / d + 0.1 * torch.eye(d, dtype=torch.float64)


def family_grams(experts, same: bool = False):
    return [{"attnpool.c_proj.weight": spd(3, 0 if same else i), "layer2.0.conv1.weight": spd(4, 10 if same else 10 + i)}
            for i in range(len(experts))]


def test_equal_grams_give_the_weighted_average():
    base, experts = make_family(3, torch.float64)
    grams = family_grams(experts, same=True)
    for weights in (None, [2.0, 1.0, 1.0]):
        out = regmean.merge(base, experts, grams, weights=weights)
        assert_params_close(out, average.merge(base, experts, weights=weights), atol=1e-6)
        check_buffers(out, base, experts, normalized(weights, 3))


def test_properties():
    base, experts = make_family(3, torch.float64)
    grams = family_grams(experts)
    out = regmean.merge(base, experts, grams)
    assert_params_differ(out, average.merge(base, experts))
    assert_params_close(out, regmean.merge(base, experts[::-1], grams[::-1]), atol=1e-6)
    assert_params_close(regmean.merge(base, experts[:1], grams[:1]), experts[0], atol=1e-6)
    assert_params_close(regmean.merge(base, [experts[0]] * 3, grams), experts[0], atol=1e-6)


def test_singular_gram_gets_a_ridge_toward_the_average():
    base, experts, _ = oracle(torch.float32)
    experts[0]["fc.weight"] = torch.tensor([[1.0, 2.0]])
    singular = [{"fc.weight": torch.tensor([[1.0, 0.0], [0.0, 0.0]])}, {"fc.weight": torch.tensor([[3.0, 0.0], [0.0, 0.0]])}]
    out = regmean.merge(base, experts, singular)  # input 2 never active
    # active input: Gram-weighted (1*1 + 3*0) / 4; dead input: the plain average (2 + 1) / 2
    assert_close(out["fc.weight"], [[0.25, 1.5]], atol=1e-5)
    with pytest.raises(NeuligError, match="ridge"):
        regmean.merge(base, experts, singular, ridge=0.0)
    # fewer rows than inputs (rank-deficient but equal Grams) still gives exactly the average
    x = torch.randn(3, 5, dtype=torch.float64)
    w = [torch.randn(2, 5, dtype=torch.float64) for _ in range(2)]
    assert_close(regmean.regmean_weight(w, [x.t() @ x / 3] * 2), (w[0] + w[1]) / 2, atol=1e-6)


def test_well_conditioned_grams_get_no_ridge():
    base, experts, grams = oracle(torch.float64)
    exact = regmean.merge(base, experts, grams, ridge=0.0)["fc.weight"]
    assert_close(regmean.merge(base, experts, grams, ridge=1e-3)["fc.weight"], exact, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16])
def test_buffers_and_dtype(dtype):
    base, experts = make_family(2, dtype)
    check_buffers(regmean.merge(base, experts, family_grams(experts)), base, experts)


def test_bad_grams_raise():
    base, experts, grams = oracle(torch.float32)
    with pytest.raises(NeuligError, match="RegMean does not apply"):
        regmean.merge(base, experts, [{}, {}])
    with pytest.raises(NeuligError):
        regmean.merge(base, experts, grams[:1])
    with pytest.raises(NeuligError):
        regmean.merge(base, experts, [{"fc.weight": torch.eye(3)}] * 2)
    with pytest.raises(NeuligError):
        regmean.merge(base, experts, [{"fc.bias": torch.eye(1)}] * 2)


class Block(nn.Module):
    """Linear -> MultiheadAttention (out_proj used by weight only) -> Linear, on [B, T, d] tokens."""

    def __init__(self):
        super().__init__()
        self.fc_in = nn.Linear(3, 4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.fc_out = nn.Linear(4, 2)

    def forward(self, x):
        h = self.fc_in(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.fc_out(h)


def test_collect_grams_running_mean_over_rows():
    torch.manual_seed(0)
    block = Block().eval()
    batches = [torch.randn(2, 5, 3), (torch.randn(3, 5, 3), torch.tensor([0, 1, 2]))]
    grams = regmean.collect_grams(block, batches)
    assert sorted(grams) == ["fc_in.weight", "fc_out.weight"]  # attn.out_proj is never called as a module
    rows = torch.cat([batches[0].reshape(-1, 3), batches[1][0].reshape(-1, 3)])
    assert_close(grams["fc_in.weight"], rows.t() @ rows / rows.shape[0], atol=1e-6)
    with torch.no_grad():
        hidden = [block.fc_in(x) for x in (batches[0], batches[1][0])]
        hidden = torch.cat([(h + block.attn(h, h, h, need_weights=False)[0]).reshape(-1, 4) for h in hidden])
    assert_close(grams["fc_out.weight"], hidden.t() @ hidden / hidden.shape[0], atol=1e-5)
    assert_close(regmean.collect_grams(block, batches, num_batches=1)["fc_in.weight"],
                 batches[0].reshape(-1, 3).t() @ batches[0].reshape(-1, 3) / 10, atol=1e-6)
    assert not block.fc_in._forward_pre_hooks  # hooks removed


class FunctionalPool(nn.Module):
    """Like open_clip's ModifiedResNet: convs, BatchNorm and a Linear used only through its weight."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.proj = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x):
        return F.linear(self.bn(self.conv(x)).mean((2, 3)), self.proj.weight, self.proj.bias)


def test_backbone_without_called_linear_raises():
    with pytest.raises(NeuligError, match="RegMean does not apply"):
        regmean.collect_grams(FunctionalPool().eval(), [torch.randn(2, 3, 4, 4)])
