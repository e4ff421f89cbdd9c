"""BatchNorm pooling (docs/methods.md §3 oracles) and the on-device flat merge vs a per-key reference."""
import torch
from torch import nn
from torch.func import functional_call

from neulig.merging.flat import FlatStack
from neulig.merging.state_dict import pool_batchnorm


def test_pool_unequal_counts():
    mu, var, n = pool_batchnorm([torch.tensor([0.0]), torch.tensor([2.0])], [torch.tensor([1.0]), torch.tensor([3.0])],
                                [torch.tensor(100), torch.tensor(300)])
    torch.testing.assert_close(mu, torch.tensor([1.5]))
    torch.testing.assert_close(var, torch.tensor([3.25]))
    assert n.item() == 400 and n.dtype == torch.int64


def test_pool_equal_counts_is_not_the_naive_variance_average():
    mu, var, n = pool_batchnorm([torch.tensor([0.0]), torch.tensor([2.0])], [torch.tensor([1.0]), torch.tensor([3.0])],
                                [torch.tensor(50), torch.tensor(50)])
    torch.testing.assert_close((mu, var), (torch.tensor([1.0]), torch.tensor([3.0])))
    assert n.item() == 100


def test_pool_three_models_two_channels():
    means = [torch.tensor([0.0, 1.0]), torch.tensor([2.0, 1.0]), torch.tensor([4.0, 1.0])]
    variances = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0])]
    mu, var, n = pool_batchnorm(means, variances, [torch.tensor(1), torch.tensor(1), torch.tensor(2)])
    torch.testing.assert_close(mu, torch.tensor([2.5, 1.0]))
    torch.testing.assert_close(var, torch.tensor([3.75, 2.25]))
    assert n.item() == 4


def _bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    net.train()
    for _ in range(seed + 1):  # give every copy different running statistics and counts
        net(torch.randn(8, 3, 8, 8) * (seed + 1) + seed)
    return net.eval()


def test_flat_combine_equals_per_key_reference():
    nets = [_bn_net(s) for s in range(3)]
    states = [n.state_dict() for n in nets]
    flat = FlatStack(states)
    coeffs = torch.tensor([0.2, 0.5, 0.3])
    merged = flat.combine(coeffs)
    for key, value in states[0].items():
        if not value.is_floating_point():
            assert torch.equal(merged[key], value)
        elif "running" not in key:
            ref = sum(float(c) * s[key].double() for c, s in zip(coeffs, states))
            torch.testing.assert_close(merged[key].double(), ref, atol=1e-6, rtol=0)
    counts = [s["1.num_batches_tracked"] for s in states]
    mu, var, _ = pool_batchnorm([s["1.running_mean"] for s in states], [s["1.running_var"] for s in states], counts, coeffs)
    torch.testing.assert_close(merged["1.running_mean"], mu, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(merged["1.running_var"], var, atol=1e-5, rtol=1e-6)
    x = torch.randn(4, 3, 8, 8)
    reference_net = _bn_net(0)
    reference_net.load_state_dict({k: v.clone() for k, v in merged.items()})
    torch.testing.assert_close(functional_call(nets[0], merged, (x,)), reference_net(x), atol=1e-6, rtol=1e-6)


def test_flat_params_are_views_of_one_buffer():
    states = [_bn_net(s).state_dict() for s in range(2)]
    flat = FlatStack(states)
    merged = flat.combine(torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(merged["0.weight"], states[0]["0.weight"])
    assert merged["0.weight"].untyped_storage().data_ptr() == merged["4.weight"].untyped_storage().data_ptr()
