"""open_clip CLIP state dicts -> Hugging Face CLIP folders (``save_format=hf``).

The inverse of :mod:`neulig.models.hf_clip` (same key tables): a ``CLIPVisionModelWithProjection``
folder (image tower + projection), or with ``text`` a full ``CLIPModel``, as ``config.json`` +
``model.safetensors``, published atomically; ``transformers.CLIPVisionModelWithProjection.from_pretrained``
loads it. Only plain open_clip ViTs convert (no layer scale, attentional pooling, custom text towers).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from torch import Tensor

from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict, under_prefix
from neulig.models.hf_clip import DEFAULT_EPS, LAYER, QKV, TEXT_EMBED, TEXT_PLAIN, VISION_EMBED, VISION_PLAIN, take
from neulig.utils.cache import atomic_folder


def _plain(cfg: Mapping, plain: Mapping, arch: str, tower: str) -> None:
    for key, value in plain.items():
        if cfg.get(key, value) != value:
            raise NeuligError(f"{arch}'s {tower} has {key}={cfg[key]!r}, which Hugging Face CLIP cannot express")
    if cfg.get("block_type") not in (None, "default"):
        raise NeuligError(f"{arch}'s {tower} has block_type={cfg['block_type']!r}, which Hugging Face CLIP cannot "
                          "express")
    if set(cfg.get("norm_kwargs") or {}) - {"eps"}:
        raise NeuligError(f"{arch}'s {tower} has norm_kwargs {cfg['norm_kwargs']}; only eps can be exported")


def _eps(cfg: Mapping) -> float:
    return float((cfg.get("norm_kwargs") or {}).get("eps", DEFAULT_EPS))


def hf_vision_config(cfg: Mapping, arch: str) -> dict:
    """The transformers ``CLIPVisionConfig`` fields for an open_clip model config."""
    from neulig.models.openclip import open_clip
    CLIPVisionCfg = open_clip.model.CLIPVisionCfg
    vision = asdict(CLIPVisionCfg(**cfg["vision_cfg"]))
    _plain(vision, VISION_PLAIN, arch, "image tower")
    size = vision["image_size"]
    if not isinstance(vision["layers"], int) or (isinstance(size, (list, tuple)) and len(set(size)) != 1):
        raise NeuligError(f"{arch} is not a ViT with square images; Hugging Face CLIP cannot hold it")
    width = int(vision["width"])
    return {"model_type": "clip_vision_model", "hidden_size": width,
            "intermediate_size": int(width * vision["mlp_ratio"]), "num_hidden_layers": int(vision["layers"]),
            "num_attention_heads": width // int(vision["head_width"]), "num_channels": 3,
            "image_size": int(size[0] if isinstance(size, (list, tuple)) else size),
            "patch_size": int(vision["patch_size"]), "projection_dim": int(cfg["embed_dim"]),
            "hidden_act": "quick_gelu" if cfg.get("quick_gelu") else "gelu", "layer_norm_eps": _eps(vision)}


def hf_text_config(cfg: Mapping, arch: str) -> dict:
    """The transformers ``CLIPTextConfig`` fields for an open_clip model config (pooling kept exact:
    open_clip's argmax pooling is HF's legacy ``eos_token_id: 2``)."""
    from neulig.models.openclip import open_clip
    CLIPTextCfg = open_clip.model.CLIPTextCfg
    text = asdict(CLIPTextCfg(**cfg.get("text_cfg", {})))
    _plain(text, TEXT_PLAIN, arch, "text tower")
    if text["pool_type"] not in ("argmax", "eos"):
        raise NeuligError(f"{arch}'s text tower pools with {text['pool_type']!r}; Hugging Face CLIP pools at EOS")
    width = int(text["width"])
    return {"model_type": "clip_text_model", "vocab_size": int(text["vocab_size"]), "hidden_size": width,
            "intermediate_size": int(width * text["mlp_ratio"]), "num_hidden_layers": int(text["layers"]),
            "num_attention_heads": int(text["heads"]), "max_position_embeddings": int(text["context_length"]),
            "projection_dim": int(cfg["embed_dim"]), "hidden_act": "quick_gelu" if cfg.get("quick_gelu") else "gelu",
            "layer_norm_eps": _eps(text), "pad_token_id": 1, "bos_token_id": 49406,
            "eos_token_id": 2 if text["pool_type"] == "argmax" else int(text["eos_id"])}


def _tower_to_hf(state: dict, embed: Mapping[str, str], layers: int, where: str) -> StateDict:
    """One open_clip tower (keys without its prefix; consumed) in HF keys without ``vision_model.`` /
    ``text_model.``; every tensor its own contiguous copy (safetensors refuses shared storage)."""
    out = {src: take(state, dst, where) for src, dst in embed.items()}
    for i in range(layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            for x, part in zip(QKV, take(state, f"{dst}attn.in_proj_{kind}", where).chunk(3), strict=True):
                out[f"{src}self_attn.{x}_proj.{kind}"] = part
        out.update({src + a: take(state, dst + b, where) for a, b in LAYER.items()})
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in out.items()}


def open_clip_to_hf(state: Mapping[str, Tensor], arch: str, text: bool = False) -> tuple[StateDict, dict]:
    """An open_clip CLIP state dict (``visual.*`` and, with ``text``, the text tower; a bare image tower is
    accepted without ``text``) as HF weights and ``config.json`` content: a ``CLIPVisionModelWithProjection``,
    or a ``CLIPModel`` with ``text``."""
    from neulig.models.backbone import register_shipped_configs
    from neulig.models.openclip import open_clip

    register_shipped_configs()
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise NeuligError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    vision_cfg = hf_vision_config(cfg, arch)
    where = f"the {arch} state dict"
    visual = under_prefix(state, "visual.") or ({} if text else dict(state))
    proj = take(visual, "proj", where)
    hf = {f"vision_model.{k}": v for k, v in
          _tower_to_hf(visual, VISION_EMBED, vision_cfg["num_hidden_layers"], where).items()}
    hf["visual_projection.weight"] = proj.detach().t().contiguous().clone()
    if visual:
        raise NeuligError(f"{where} has image-tower keys a CLIP ViT has no place for, e.g. {min(visual)!r}")
    if not text:
        config = {"architectures": ["CLIPVisionModelWithProjection"], **vision_cfg}
        return hf, {**config, "torch_dtype": str(proj.dtype).removeprefix("torch.")}
    text_cfg = hf_text_config(cfg, arch)
    rest = {k: v for k, v in state.items() if not k.startswith("visual.") and k not in ("attn_mask",)}
    text_proj = take(rest, "text_projection", where)
    logit_scale = take(rest, "logit_scale", where)
    hf.update({f"text_model.{k}": v for k, v in
               _tower_to_hf(rest, TEXT_EMBED, text_cfg["num_hidden_layers"], where).items()})
    if rest:
        raise NeuligError(f"{where} has keys a CLIP has no place for, e.g. {min(rest)!r}")
    hf["text_projection.weight"] = text_proj.detach().t().contiguous().clone()
    hf["logit_scale"] = logit_scale.detach().clone()
    config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": int(cfg["embed_dim"]),
              "logit_scale_init_value": float(logit_scale), "text_config": text_cfg, "vision_config": vision_cfg,
              "torch_dtype": str(proj.dtype).removeprefix("torch.")}
    return hf, config


def save_hf_clip(folder: str | Path, state: Mapping[str, Tensor], arch: str, *, text: bool = False) -> Path:
    """Write an open_clip CLIP (``state``, architecture ``arch``) as a Hugging Face folder: a
    ``CLIPVisionModelWithProjection`` (image tower + projection), or with ``text`` a full ``CLIPModel``;
    ``config.json`` + ``model.safetensors``, published atomically. Returns the folder."""
    from neulig.models.checkpoints import save_state

    folder = Path(folder)
    hf, config = open_clip_to_hf(state, arch, text)
    with atomic_folder(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_state(tmp / "model.safetensors", hf, metadata={"format": "pt"})
    return folder
