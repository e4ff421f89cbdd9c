"""LiNeS: docs/methods.md §11 oracle, explicit block maps, multi-task alpha, merge properties."""
from __future__ import annotations

import pytest
import torch

from neulig.errors import NeuligError
from neulig.merging import lines, ties
from neulig.merging.task_vectors import param_keys, stack_task_vectors, unflatten
from tests.merging.merge_toys import (
    DTYPES,
    assert_close,
    assert_params_close,
    assert_params_differ,
    check_buffers,
    make_family,
)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaling_oracle(dtype):
    tau = {"blocks.2.mlp.w": torch.tensor([1.0, -2.0], dtype=dtype), "ln_post.w": torch.tensor([1.0], dtype=dtype),
           "blocks.3.b": torch.tensor([0.5], dtype=dtype), "blocks.0.a": torch.tensor([1.0], dtype=dtype),
           "blocks.1.a": torch.tensor([1.0], dtype=dtype)}
    blocks, count = lines.block_map(tau)
    assert count == 4
    scales = lines.block_scales(blocks, count, 0.2, 0.6)
    keys = [f"blocks.{block}.{n}" for block, n in ((0, "a"), (1, "a"), (2, "mlp.w"), (3, "b"))]
    assert [scales[k] for k in keys] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    out = lines.scale_task_vector(tau, 0.2, 0.6, blocks, count)
    assert_close(out["blocks.2.mlp.w"], [0.6, -1.2])
    assert_close(out["ln_post.w"], [0.2])
    assert_close(out["blocks.3.b"], [0.4])
    assert out["blocks.2.mlp.w"].dtype == dtype


def test_multitask_alpha_oracle():
    tv = torch.randn(4, 9)
    assert lines.default_alpha(tv, tv.sum(0)) == pytest.approx(0.25)  # TA sum: 1/T whatever the tau
    tv = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    assert lines.default_alpha(tv, torch.tensor([1.0, 0.0])) == pytest.approx(1.0)


def test_explicit_block_maps():
    vit = ["class_embedding", "conv1.weight", "transformer.resblocks.0.ln_1.weight",
           "transformer.resblocks.1.attn.in_proj_weight", "transformer.resblocks.11.mlp.c_fc.weight", "ln_post.weight", "proj"]
    blocks, count = lines.block_map(vit)
    assert count == 12
    assert blocks == {vit[2]: 0, vit[3]: 1, vit[4]: 11}  # embeddings, ln_post, proj: outside (alpha)
    resnet = ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.1.bn3.weight", "layer2.0.conv1.weight",
              "layer4.2.conv3.weight", "attnpool.c_proj.weight"]
    blocks, count = lines.block_map(resnet)
    assert count == 4
    assert blocks == {"layer1.0.conv1.weight": 0, "layer1.1.bn3.weight": 0, "layer2.0.conv1.weight": 1,
                      "layer4.2.conv3.weight": 3}  # by layer: the reference's first-match ".{l}." test reads the
    # nested Bottleneck index instead (".0." -> block 0 for layer2.0, ".2." -> block 2 for layer4.2)
    assert lines.block_map(vit, num_blocks=24)[1] == 24
    with pytest.raises(NeuligError):
        lines.block_map(["conv.weight", "fc.weight"])
    with pytest.raises(NeuligError):
        lines.block_map(vit, num_blocks=8)  # block 11 does not fit


@pytest.mark.parametrize("dtype", DTYPES)
def test_merge_matches_hand_formula(dtype):
    """Toy ResNet: layer1 -> block 0 (alpha), layer2 -> block 1 (alpha + beta), stem/attnpool alpha = 1/T."""
    base, experts = make_family(3, dtype)
    out = lines.merge(base, experts, beta=0.6)
    for key in ("conv1.weight", "bn1.weight", "attnpool.c_proj.bias", "layer1.0.conv1.weight", "layer2.0.conv1.weight"):
        scale = 1 / 3 + (0.6 if key.startswith("layer2") else 0.0)
        tau = sum(e[key].double() - base[key].double() for e in experts)
        assert_close(out[key], base[key].double() + scale * tau, atol=1e-5 if dtype == torch.float32 else 1e-6, msg=key)
    check_buffers(out, base, experts)


def test_merge_on_ties_vector_uses_l1_alpha():
    base, experts = make_family(3, torch.float64)
    keys = param_keys(base)
    tv = stack_task_vectors(base, experts, keys)
    merged = ties.ties_vector(tv, 0.2, "mean")
    alpha = float(tv.sum(0).abs().sum() / merged.abs().sum() / 3)
    tau = unflatten(merged, base, keys)
    out = lines.merge(base, experts, beta=0.4, task_vector="ties")
    assert_close(out["conv1.weight"], base["conv1.weight"] + alpha * tau["conv1.weight"], atol=1e-6)
    key = "layer2.0.conv1.weight"
    assert_close(out[key], base[key] + (alpha + 0.4) * tau[key], atol=1e-6)


def test_one_expert_and_zero_scale():
    base, experts = make_family(1, torch.float64)
    assert_params_close(lines.merge(base, experts, alpha=1.0, beta=0.0), experts[0], atol=1e-12)
    assert_params_close(lines.merge(base, experts * 3, alpha=0.0, beta=0.0), base, atol=0)
    # single-task editing (alpha = lambda, beta = 1 - lambda) keeps the last block, shrinks the first
    out = lines.merge(base, experts, alpha=0.3, beta=0.7)
    assert_close(out["layer2.0.conv1.weight"], experts[0]["layer2.0.conv1.weight"], atol=1e-12)
    assert_params_differ(out, experts[0])


def test_expert_order_does_not_matter():
    base, experts = make_family(3, torch.float64)
    for tv in ("sum", "ties"):
        assert_params_close(lines.merge(base, experts, task_vector=tv), lines.merge(base, experts[::-1], task_vector=tv),
                            atol=1e-9)


def test_backbone_without_blocks_raises():
    base = {"fc.weight": torch.zeros(2, 2)}
    with pytest.raises(NeuligError):
        lines.merge(base, [{"fc.weight": torch.ones(2, 2)}])
    with pytest.raises(NeuligError):
        lines.merge(*make_family(2), task_vector="average")
