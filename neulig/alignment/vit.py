"""Permutation spec of open_clip's ``VisionTransformer`` image tower.

Groups (w = width, H = heads, d = w / H):
- ``residual``: the residual stream, one permutation for the whole tower: conv1 output channels,
  the feature axis of the class and positional embeddings, every LayerNorm (ln_pre, ln_1, ln_2,
  ln_post) and LayerScale, the input axis of in_proj and c_fc, the output axis (and bias) of
  out_proj and c_proj, and the rows of ``proj``. The columns of ``proj`` are the embedding that
  zero-shot heads read and are never permuted.
- ``transformer.resblocks.{i}.mlp``: the MLP hidden units (c_fc rows and bias, c_proj columns).
- ``transformer.resblocks.{i}.attn.qk`` and ``.attn.v`` (H heads of d units, head partners): the
  rows of W_q and W_k (with their biases) share one permutation, so every q.k product of a head is
  unchanged; the rows of W_v (and bias) and the columns of out_proj share another. Both map head h
  to the same head, so each head's attention pattern still weighs its own values. Inside a head the
  Q/K and V orders are free and independent (MuDSC, arXiv 2403.01753, groups whole heads).
"""
from __future__ import annotations

from neulig.alignment.spec import Group, PermutationSpec, Probe, Slot, module_shapes
from neulig.errors import NeuligError
from neulig.models.openclip import open_clip

ResidualAttentionBlock = open_clip.transformer.ResidualAttentionBlock
VisionTransformer = open_clip.transformer.VisionTransformer


def _check_supported(visual: VisionTransformer) -> None:
    reasons = []
    if getattr(visual, "attn_pool", None) is not None:
        reasons.append("an attentional pooler")
    if getattr(visual, "proj", None) is None:
        reasons.append("no output projection")
    blocks = list(visual.transformer.resblocks)
    if not all(type(b) is ResidualAttentionBlock for b in blocks):
        reasons.append("custom attention blocks (qk-norm, scaled cosine attention, ...)")
    elif any(hasattr(b, "ln_1_kv") or not b.attn._qkv_same_embed_dim for b in blocks):
        reasons.append("cross attention")
    if reasons:
        raise NeuligError(f"cannot align this VisionTransformer: it has {', '.join(reasons)}; use a standard CLIP ViT")


def vit_spec(visual: VisionTransformer) -> PermutationSpec:
    """Build the spec from the module (shapes from its state dict; the meta device is fine)."""
    _check_supported(visual)
    shapes = module_shapes(visual)
    width = shapes["conv1.weight"][0]

    residual: list[Slot] = []

    def add(key: str, axis: int) -> None:
        if key in shapes:  # optional parts: conv1.bias, ln_pre (no_ln_pre), LayerScale
            residual.append(Slot(key, axis))

    for key, axis in [("conv1.weight", 0), ("conv1.bias", 0), ("class_embedding", 0),
                      ("positional_embedding", 1), ("ln_pre.weight", 0), ("ln_pre.bias", 0)]:
        add(key, axis)

    groups: list[Group] = []
    residual_probes: list[Probe] = []
    for i, block in enumerate(visual.transformer.resblocks):
        p = f"transformer.resblocks.{i}"
        heads = block.attn.num_heads
        hidden = shapes[f"{p}.mlp.c_fc.weight"][0]
        for key, axis in [(f"{p}.ln_1.weight", 0), (f"{p}.ln_1.bias", 0), (f"{p}.attn.in_proj_weight", 1),
                          (f"{p}.attn.out_proj.weight", 0), (f"{p}.attn.out_proj.bias", 0), (f"{p}.ls_1.gamma", 0),
                          (f"{p}.ln_2.weight", 0), (f"{p}.ln_2.bias", 0), (f"{p}.mlp.c_fc.weight", 1),
                          (f"{p}.mlp.c_proj.weight", 0), (f"{p}.mlp.c_proj.bias", 0), (f"{p}.ls_2.gamma", 0)]:
            add(key, axis)
        residual_probes.append(Probe(f"{p}.ln_1", "input"))
        qkv_w, qkv_b = f"{p}.attn.in_proj_weight", f"{p}.attn.in_proj_bias"
        qk_bias = (Slot(qkv_b, 0, 0), Slot(qkv_b, 0, width)) if qkv_b in shapes else ()
        v_bias = (Slot(qkv_b, 0, 2 * width),) if qkv_b in shapes else ()
        groups.append(Group(
            f"{p}.attn.qk", width,
            (Slot(qkv_w, 0, 0), Slot(qkv_w, 0, width), *qk_bias),
            (Probe(f"{p}.attn", "q"), Probe(f"{p}.attn", "k")),
            heads=heads, head_partner=f"{p}.attn.v",
        ))
        groups.append(Group(
            f"{p}.attn.v", width,
            (Slot(qkv_w, 0, 2 * width), *v_bias, Slot(f"{p}.attn.out_proj.weight", 1)),
            (Probe(f"{p}.attn", "v"),),
            heads=heads, head_partner=f"{p}.attn.qk",
        ))
        groups.append(Group(
            f"{p}.mlp", hidden,
            (Slot(f"{p}.mlp.c_fc.weight", 0), Slot(f"{p}.mlp.c_fc.bias", 0), Slot(f"{p}.mlp.c_proj.weight", 1)),
            (Probe(f"{p}.mlp.c_proj", "input"),),
        ))
    for key, axis in [("ln_post.weight", 0), ("ln_post.bias", 0), ("proj", 0)]:
        add(key, axis)
    residual_probes.append(Probe("ln_post", "input"))
    groups.insert(0, Group("residual", width, tuple(residual), tuple(residual_probes)))
    return PermutationSpec("VisionTransformer", tuple(groups), shapes)
