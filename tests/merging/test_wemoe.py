"""WeMoE (arXiv 2402.00433) against the oracles of docs/methods.md §10, on toys and on the real tiny open_clip ViT."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from neulig.errors import NeuligError
from neulig.merging import task_arithmetic
from neulig.merging.wemoe import (
    Router,
    WeightEnsemblingMLP,
    WeMoE,
    ensemble_coefficients,
    mlp_prefixes,
    per_sample_linear,
    per_sample_weight,
)
from tests.merging.merge_toys import assert_close, tiny_visual


# -- router and per-sample weights ----------------------------------------------------------------------
def test_router_oracle():
    router = Router(2, 2, init_lambda=0.3, hidden_layers=1)
    with torch.no_grad():
        router.fc2.weight.copy_(torch.eye(2))
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # one sample, two tokens
    assert_close(router(tokens), [[[1.3, 0.3], [0.3, 1.3]]])
    r = router.routing_weights(tokens)
    assert_close(r, [[0.8, 0.8]])
    # scalar "MLP weight" W_0 = 1, tau_1 = 0.5, tau_2 = -1: W = 1 + 0.8 * 0.5 + 0.8 * (-1) = 0.6
    assert_close(per_sample_weight(torch.ones(1), torch.tensor([[0.5], [-1.0]]), r), [[0.6]])


def test_router_init_and_depths():
    torch.manual_seed(0)
    deep = Router(64, 3, init_lambda=0.3, hidden_layers=2)
    assert deep.fc1.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert deep.fc1.bias.abs().max() == 0 and torch.all(deep.fc2.bias == 0.3)
    assert deep.fc2.weight.std().item() == pytest.approx(0.01, rel=0.2)
    const = Router(8, 3, init_lambda=0.3, hidden_layers=0)
    assert_close(const.routing_weights(torch.randn(5, 4, 8)), torch.full((5, 3), 0.3))
    with pytest.raises(NeuligError, match="router_hidden_layers"):
        Router(8, 3, hidden_layers=3)


def test_batched_per_sample_linear_equals_a_loop_over_samples():
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(3, 5, 4, generator=g), torch.randn(3, 2, generator=g)
    w0, b0 = torch.randn(6, 4, generator=g), torch.randn(6, generator=g)
    tw, tb = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, generator=g)
    out = per_sample_linear(x, w0, b0, tw, tb, r)
    for i in range(3):
        w = w0 + r[i, 0] * tw[0] + r[i, 1] * tw[1]
        b = b0 + r[i, 0] * tb[0] + r[i, 1] * tb[1]
        assert_close(out[i], x[i] @ w.t() + b, atol=1e-5)


def test_per_sample_linear_gradients_match_autograd():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    w0, b0 = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    tw = torch.randn(2, 6, 4, generator=g, dtype=torch.float64)
    tb = torch.randn(2, 6, generator=g, dtype=torch.float64)
    grad_y = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    fused = torch.autograd.grad(per_sample_linear(x, w0, b0, tw, tb, r), (x, r), grad_y)
    w, b = per_sample_weight(w0, tw, r), per_sample_weight(b0, tb, r)  # plain autograd reference
    plain = torch.autograd.grad(torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)), (x, r), grad_y)
    for a, e in zip(fused, plain):
        assert_close(a, e, atol=1e-12)


def test_sequence_first_layout_is_transposed_around_the_moe():
    g = torch.Generator().manual_seed(1)
    base = {"c_fc.weight": torch.randn(8, 4, generator=g), "c_fc.bias": torch.randn(8, generator=g),
            "c_proj.weight": torch.randn(4, 8, generator=g), "c_proj.bias": torch.randn(4, generator=g)}
    taus = {k: torch.randn(2, *v.shape, generator=g) for k, v in base.items()}
    router = Router(4, 2, hidden_layers=2)
    first = WeightEnsemblingMLP(nn.GELU(), base, taus, router, batch_first=True)
    second = WeightEnsemblingMLP(nn.GELU(), base, taus, router, batch_first=False)
    x = torch.randn(3, 5, 4, generator=g)  # [B, L, D]
    assert_close(second(x.transpose(0, 1)).transpose(0, 1), first(x), atol=1e-6)


def test_ensemble_coefficients_clip_and_normalise():
    routing = torch.tensor([[[0.5, -0.1], [-1.0, -1.0]], [[0.3, 0.3], [0.0, -0.5]]])  # [layers=2, B=2, T=2]
    assert_close(ensemble_coefficients(routing), [[0.8, 0.2], [0.5, 0.5]])


# -- on the tiny open_clip ViT ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def family():
    visual = tiny_visual()
    g = torch.Generator().manual_seed(0)
    base = {k: v.detach().clone() for k, v in visual.state_dict().items()}
    experts = [{k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)]
    return visual, base, experts, torch.randn(4, 3, 32, 32, generator=g)


def test_replaces_every_vit_block_mlp(family):
    visual, base, experts, _ = family
    wemoe = WeMoE(visual, base, experts)
    assert wemoe.layer_names == [f"transformer.resblocks.{i}.mlp" for i in range(len(visual.transformer.resblocks))]
    assert all(isinstance(m, WeightEnsemblingMLP) for m in wemoe.layers)
    trainable = [p for p in wemoe.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in wemoe.router_parameters()}
    assert isinstance(visual.transformer.resblocks[0].mlp, nn.Sequential)  # the backbone is untouched


@pytest.mark.parametrize("hidden_layers", [0, 1, 2])
def test_zeroed_router_weights_give_task_arithmetic(family, hidden_layers):
    visual, base, experts, images = family
    wemoe = WeMoE(visual, base, experts, init_lambda=0.3, router_hidden_layers=hidden_layers).eval()
    with torch.no_grad():
        for layer in wemoe.layers:
            if hidden_layers:
                layer.router.fc2.weight.zero_()
        out = wemoe(images)
        expected = functional_call(visual, task_arithmetic.merge(base, experts, 0.3), (images,))
    assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert_close(wemoe.routing_weights(), torch.full((len(wemoe.layers), 4, 3), 0.3))


def test_gradients_reach_only_the_routers(family):
    visual, base, experts, images = family
    wemoe = WeMoE(visual, base, experts)
    wemoe(images).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in wemoe.router_parameters())
    assert all(p.grad is None for p in wemoe.encoder.parameters() if not p.requires_grad)


def test_resnet_backbone_is_refused_in_one_line():
    from open_clip.modified_resnet import ModifiedResNet

    resnet = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=8, heads=1, image_size=32, width=8)
    with pytest.raises(NeuligError, match="does not apply") as err:
        mlp_prefixes(resnet)
    assert "\n" not in str(err.value)


def test_batch_reduce_routes_a_batch_by_its_mean_vector(family):
    visual, base, experts, images = family
    wemoe = WeMoE(visual, base, experts)
    for layer in wemoe.layers:  # distinct per-sample routes
        torch.nn.init.normal_(layer.router.fc2.weight, std=1.0)
    with torch.no_grad():
        wemoe(images)
        own = wemoe.routing_weights()
        wemoe.set_batch_reduce(True)
        wemoe(images)
        reduced = wemoe.routing_weights()
    assert not torch.allclose(own[:, 0], own[:, 1])
    assert torch.allclose(reduced, reduced[:, :1].expand_as(reduced))  # one vector per layer for the whole batch
    # the first layer sees the same tokens either way: its vector is the mean of the per-sample ones
    assert torch.allclose(reduced[0, 0], own[0].mean(0), atol=1e-6)
