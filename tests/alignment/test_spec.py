"""Permutation specs of open_clip image towers: layouts, exact invariance, rejected variants."""
from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from neulig.alignment import (
    Group,
    PermutationSpec,
    Slot,
    check_permutation,
    identity_permutation,
    permute_state,
    random_permutation,
    spec_for,
)
from neulig.errors import NeuligError
from tests.alignment.towers import TOWERS, features, images


def meta_visual(name: str) -> nn.Module:
    """The real open_clip tower ``name`` with meta tensors (shapes only, built in milliseconds)."""
    with torch.device("meta"):
        return open_clip.create_model(name, device="meta").visual


def slots_of(spec: PermutationSpec, key: str) -> list[tuple[str, Slot]]:
    return [(g.name, s) for g in spec.groups for s in g.slots if s.key == key]


def test_vit_b32_real_layout():
    spec = spec_for(meta_visual("ViT-B-32"))
    sizes = {g.name: (g.size, g.heads) for g in spec.groups}
    assert len(spec.groups) == 1 + 12 * 3
    assert sizes["residual"] == (768, 1)
    for i in range(12):
        p = f"transformer.resblocks.{i}"
        assert sizes[f"{p}.mlp"] == (3072, 1)
        assert sizes[f"{p}.attn.qk"] == sizes[f"{p}.attn.v"] == (768, 12)
        assert spec.group(f"{p}.attn.qk").head_partner == f"{p}.attn.v"
        in_proj = sorted((s.axis, s.start, name) for name, s in slots_of(spec, f"{p}.attn.in_proj_weight"))
        assert in_proj == [(0, 0, f"{p}.attn.qk"), (0, 768, f"{p}.attn.qk"), (0, 1536, f"{p}.attn.v"),
                           (1, 0, "residual")]
        assert sorted((s.axis, n) for n, s in slots_of(spec, f"{p}.attn.out_proj.weight")) == [
            (0, "residual"), (1, f"{p}.attn.v")]
    assert slots_of(spec, "proj") == [("residual", Slot("proj", 0))]  # the embedding columns never move
    assert slots_of(spec, "positional_embedding") == [("residual", Slot("positional_embedding", 1))]
    assert spec.fixed == ()
    assert len(spec.steps) == 1 + 12 * 2  # Q/K and V of a block are solved together


def test_rn50_real_layout():
    spec = spec_for(meta_visual("RN50"))
    sizes = {g.name: g.size for g in spec.groups}
    assert [sizes[f"stem.conv{i}"] for i in (1, 2, 3)] == [32, 32, 64]
    assert [sizes[f"layer{s}.residual"] for s in (1, 2, 3, 4)] == [256, 512, 1024, 2048]
    assert sum(name.endswith((".conv1", ".conv2")) and name.startswith("layer") for name in sizes) == 2 * 16
    assert spec.group("attnpool.qk").heads == spec.group("attnpool.v").heads == 32
    # stage 2's stream: its downsample output, every block's bn3, and stage 3's first conv1/shortcut inputs
    res2 = {(s.key, s.axis) for s in spec.group("layer2.residual").slots}
    assert {("layer2.0.downsample.0.weight", 0), ("layer2.3.bn3.running_var", 0), ("layer2.2.conv1.weight", 1),
            ("layer3.0.conv1.weight", 1), ("layer3.0.downsample.0.weight", 1)} <= res2
    assert ("layer2.0.conv1.weight", 1) not in res2  # read from stage 1's stream
    stats = [s for g in spec.groups for s in g.slots if s.key.endswith(("running_mean", "running_var"))]
    assert stats and not any(s.in_similarity for s in stats)
    assert "attnpool.c_proj.bias" in spec.fixed and "layer1.0.bn1.num_batches_tracked" in spec.fixed
    assert [n for n, s in slots_of(spec, "attnpool.c_proj.weight")] == ["attnpool.v"]
    assert slots_of(spec, "attnpool.c_proj.weight")[0][1].axis == 1  # its rows are the embedding


@pytest.mark.parametrize("name", TOWERS)
def test_random_permutation_keeps_the_features(tower, name):
    visual, state = tower(name)
    spec = spec_for(visual)
    perm = random_permutation(spec, torch.Generator().manual_seed(1))
    check_permutation(spec, perm)
    assert all(not torch.equal(p, torch.arange(p.numel())) for p in perm.values() if p.numel() > 2)
    permuted = permute_state(state, spec, perm)
    x = images(visual, batches=1, batch=4, seed=5)[0]
    before, after = features(visual, state, x), features(visual, permuted, x)
    assert before.abs().max() > 0.05
    assert (before - after).abs().max() < 1e-5
    assert max(float((permuted[k].float() - state[k].float()).abs().max()) for k in state) > 0.1  # it did move


def test_a_permutation_that_splits_heads_changes_the_features(tower):
    visual, state = tower("vit_b32")
    spec = spec_for(visual)
    perm = identity_permutation(spec)
    group = spec.group("transformer.resblocks.0.attn.qk")
    p = torch.arange(group.size)
    p[[0, group.head_dim]] = p[[group.head_dim, 0]]  # unit 0 of head 0 <-> unit 0 of head 1
    perm[group.name] = p
    with pytest.raises(NeuligError, match="splits an attention head"):
        check_permutation(spec, perm)
    x = images(visual, batches=1, batch=4, seed=5)[0]
    assert (features(visual, state, x) - features(visual, permute_state(state, spec, perm), x)).abs().max() > 1e-3


def test_batchnorm_statistics_must_move_with_their_channels(tower):
    visual, state = tower("rn50")
    spec = spec_for(visual)
    perm = random_permutation(spec, torch.Generator().manual_seed(2))
    permuted = permute_state(state, spec, perm)
    p = perm["layer1.0.conv1"]
    assert torch.equal(permuted["layer1.0.bn1.running_mean"], state["layer1.0.bn1.running_mean"][p])
    assert permuted["layer1.0.bn1.num_batches_tracked"] == state["layer1.0.bn1.num_batches_tracked"]
    stale = dict(permuted, **{"layer1.0.bn1.running_var": state["layer1.0.bn1.running_var"]})
    x = images(visual, batches=1, batch=4, seed=5)[0]
    assert (features(visual, permuted, x) - features(visual, stale, x)).abs().max() > 1e-4


def test_unsupported_towers_raise_one_line():
    with pytest.raises(NeuligError, match="cannot align a Linear") as err:
        spec_for(nn.Linear(2, 2))
    assert "\n" not in str(err.value)
    qk_norm = VisionTransformer(image_size=32, patch_size=16, width=32, layers=1, heads=2, mlp_ratio=2.0,
                                output_dim=8, qk_norm=True)
    with pytest.raises(NeuligError, match="custom attention blocks"):
        spec_for(qk_norm)
    pooled = VisionTransformer(image_size=32, patch_size=16, width=32, layers=1, heads=2, mlp_ratio=2.0,
                               output_dim=8, attentional_pool=True, attn_pooler_heads=2, attn_pooler_queries=4)
    with pytest.raises(NeuligError, match="attentional pooler"):
        spec_for(pooled)


def test_layerscale_and_no_ln_pre_variants_are_covered():
    visual = VisionTransformer(image_size=32, patch_size=16, width=32, layers=1, heads=2, mlp_ratio=2.0,
                               output_dim=8, ls_init_value=0.5, no_ln_pre=True).eval()
    spec = spec_for(visual)
    keys = {s.key for s in spec.group("residual").slots}
    assert "transformer.resblocks.0.ls_1.gamma" in keys and "ln_pre.weight" not in keys
    state = {k: v + 0.1 * torch.randn(v.shape) for k, v in visual.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    permuted = permute_state(state, spec, random_permutation(spec, torch.Generator().manual_seed(0)))
    assert (features(visual, state, x) - features(visual, permuted, x)).abs().max() < 1e-5


def test_spec_validation_catches_mistakes():
    shapes = {"w1": (4, 3), "w2": (2, 4), "b": (2,)}
    hidden = Group("hidden", 4, (Slot("w1", 0), Slot("w2", 1)))
    PermutationSpec("toy", (hidden,), shapes, fixed=("b",))
    with pytest.raises(NeuligError, match="no permutation rule for \\['b'\\]"):
        PermutationSpec("toy", (hidden,), shapes)
    with pytest.raises(NeuligError, match="overlaps"):
        PermutationSpec("toy", (hidden, Group("other", 2, (Slot("w1", 0, 2),))), shapes, fixed=("b",))
    with pytest.raises(NeuligError, match="does not fit"):
        PermutationSpec("toy", (Group("hidden", 4, (Slot("w1", 1),)),), shapes, fixed=("w2", "b"))
    with pytest.raises(NeuligError, match="multiple of 3 heads"):
        PermutationSpec("toy", (Group("hidden", 4, (Slot("w1", 0),), heads=3),), shapes, fixed=("w2", "b"))
    with pytest.raises(NeuligError, match="does not pair back"):
        PermutationSpec("toy", (Group("hidden", 4, (Slot("w1", 0),), heads=2, head_partner="nope"),), shapes,
                        fixed=("w2", "b"))


def test_check_state_names_the_problem(tower):
    visual, state = tower("tiny")
    spec = spec_for(visual)
    spec.check_state(state, "model 1")
    with pytest.raises(NeuligError, match="key 'proj' is missing"):
        spec.check_state({k: v for k, v in state.items() if k != "proj"}, "model 1")
    with pytest.raises(NeuligError, match="model 1 does not match .* key 'proj' has shape") as err:
        spec.check_state(dict(state, proj=state["proj"][:, :3]), "model 1")
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
def test_real_size_towers_keep_their_features(name):
    """The full-size ViT-B/32 and RN50 image towers (random init, float64 so that only a real error shows)."""
    torch.manual_seed(0)
    visual = open_clip.create_model(name).visual.double().eval()
    spec = spec_for(visual)
    state = {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() and v.dim() == 1 and "running" not in k
             else v for k, v in visual.state_dict().items()}
    permuted = permute_state(state, spec, random_permutation(spec, torch.Generator().manual_seed(3)))
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    before, after = features(visual, state, x), features(visual, permuted, x)
    assert (before - after).abs().max() < 1e-5 * before.abs().max()
