"""Hooked activations: recomputed Q/K/V, probe coverage, batching, and leaving the module as it was."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from neulig.alignment import spec_for
from neulig.alignment.activations import attention_projections, collect_moments, units_by_samples
from neulig.alignment.similarity import activation_similarity
from tests.alignment.towers import build, images, lively_state


def sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def attention_by_hand(q, k, v, heads: int, w_out, b_out):
    """softmax(q_h k_h^T / sqrt(d)) v_h per head, heads concatenated, then the output projection; [B, L, E] in."""
    batch, length, embed = q.shape
    d = embed // heads

    def split(t):
        return t.reshape(batch, -1, heads, d).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / d**0.5, dim=-1)
    return F.linear((weights @ split(v)).transpose(1, 2).reshape(batch, length, embed), w_out, b_out)


def test_vit_qkv_are_what_multihead_attention_uses(tower):
    visual, state = tower("tiny")
    path = "transformer.resblocks.1.attn"
    attn = visual.get_submodule(path)
    x = torch.randn(2, 17, attn.embed_dim)
    qkv = attention_projections(attn, path, state, (x, x, x), {}, ["q", "k", "v"])
    expected = functional_call(attn, sub_state(state, path), (x, x, x), {"need_weights": False})[0]
    got = attention_by_hand(qkv["q"], qkv["k"], qkv["v"], attn.num_heads, state[f"{path}.out_proj.weight"],
                            state[f"{path}.out_proj.bias"])
    assert (got - expected).abs().max() < 1e-5


def test_resnet_attention_pool_qkv_are_what_it_uses(tower):
    visual, state = tower("rn50")
    pool = visual.attnpool
    x = torch.randn(2, pool.k_proj.in_features, 2, 2)
    qkv = attention_projections(pool, "attnpool", state, (x,), {}, ["q", "k", "v"])
    assert qkv["q"].shape == (5, 2, pool.k_proj.in_features)  # (HW + 1) tokens, batch, channels
    tokens_first = {k: t.transpose(0, 1) for k, t in qkv.items()}
    got = attention_by_hand(tokens_first["q"], tokens_first["k"], tokens_first["v"], pool.num_heads,
                            state["attnpool.c_proj.weight"], state["attnpool.c_proj.bias"])[:, 0]
    expected = functional_call(pool, sub_state(state, "attnpool"), (x,))
    assert (got - expected).abs().max() < 1e-5


def test_units_by_samples_layouts():
    fmap = torch.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)
    assert torch.equal(units_by_samples(fmap)[1], torch.cat([fmap[0, 1].flatten(), fmap[1, 1].flatten()]))
    tokens = torch.arange(2 * 4 * 3.0).reshape(2, 4, 3)
    assert torch.equal(units_by_samples(tokens)[2], tokens[..., 2].flatten())


@pytest.mark.parametrize("name", ["tiny", "rn50"])
def test_every_group_is_probed_and_matches_itself(tower, name):
    visual, state = tower(name)
    spec = spec_for(visual)
    (moments,) = collect_moments(visual, spec, state, [state], images(visual, batches=1, batch=8))
    assert set(moments) == {g.name for g in spec.groups}
    for group in spec.groups:
        assert len(moments[group.name]) == len(group.probes)
        s = activation_similarity(moments[group.name])
        assert s.shape == (group.size, group.size)
        # a unit may be silent at one of several sites (ReLU), which pulls its mean below 1, but every
        # unit must be live somewhere and then matches only itself
        assert torch.diagonal(s).min() > 0.5 and torch.diagonal(s).mean() > 0.99, group.name
        assert torch.equal(s.argmax(1), torch.arange(group.size)), group.name


def test_batches_are_weighted_by_size(tower):
    visual, state = tower("tiny")
    spec = spec_for(visual)
    other = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    (x,) = images(visual, batches=1, batch=12)
    (whole,) = collect_moments(visual, spec, state, [other], [x])
    (split,) = collect_moments(visual, spec, state, [other], [x[:4], (x[4:], torch.zeros(8))])  # (images, labels)
    for name in whole:
        assert torch.allclose(activation_similarity(whole[name]), activation_similarity(split[name]), atol=1e-5)
    assert activation_similarity(whole["residual"]).diagonal().min() < 0.9999  # the models do differ


def test_collect_restores_hooks_and_train_flags():
    visual = build("tiny", seed=3).train()
    visual.transformer.resblocks[0].eval()
    flags = [m.training for m in visual.modules()]
    state = lively_state(visual)
    spec = spec_for(visual)
    collect_moments(visual, spec, state, [state], images(visual, batches=1, batch=2))
    with pytest.raises(RuntimeError):  # a failing forward (1-channel images) must clean up too
        collect_moments(visual, spec, state, [state], [torch.zeros(2, 1, 32, 32)])
    assert [m.training for m in visual.modules()] == flags
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in visual.modules())
