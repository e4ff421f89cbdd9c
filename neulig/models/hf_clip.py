"""Hugging Face CLIP folders <-> open_clip CLIP state dicts (ViT image towers, optionally the text tower).

CLIP (Radford et al., arXiv 2103.00020) is published in two layouts of the same weights: open_clip's
(``visual.conv1``, fused ``attn.in_proj_weight``, ``proj``) and transformers' (``vision_model.
embeddings.patch_embedding``, separate ``q/k/v_proj``, ``visual_projection``). FusionBench
(Tang et al., arXiv 2406.03280) publishes its fine-tuned experts as ``CLIPVisionModel`` folders
(``config.json`` + ``model.safetensors``, no projection), and the hub's bases are ``CLIPModel`` folders.

Reading (:func:`load_hf_clip`) needs no network and no transformers: ``config.json`` gives the heads,
the activation (``hidden_act``: ``quick_gelu`` -> open_clip ``quick_gelu=True``, ``gelu`` -> plain),
the LayerNorm eps and the text pooling; every size comes from the weight shapes. The open_clip model
config built from them is matched against the registered open_clip architectures (e.g.
``ViT-B-32-quickgelu`` for OpenAI-derived weights), else registered under ``hf-clip-<hash>``.
Writing is :mod:`neulig.models.hf_export`.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from neulig.errors import NeuligError, unreadable
from neulig.merging.state_dict import StateDict, under_prefix
from neulig.models.pickled import read_pickled_state
from neulig.models.read_limits import Limits

HF_MODEL_TYPES = ("clip", "clip_vision_model")
DEFAULT_EPS = 1e-5
ACTIVATIONS = {"quick_gelu": True, "gelu": False}  # hidden_act -> open_clip quick_gelu
IGNORED = ("position_ids",)  # buffers some transformers versions saved
VISION_ROOTS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")  # a vision tower's top-level names

VISION_EMBED = {  # HF key under vision_model. -> open_clip key under visual.
    "embeddings.class_embedding": "class_embedding",
    "embeddings.position_embedding.weight": "positional_embedding",
    "embeddings.patch_embedding.weight": "conv1.weight",
    "pre_layrnorm.weight": "ln_pre.weight",
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}
TEXT_EMBED = {  # HF key under text_model. -> open_clip key (top level)
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
LAYER = {  # HF key under encoder.layers.<i>. -> open_clip key under transformer.resblocks.<i>.
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
VISION_PLAIN = {"ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
                "final_ln_after_pool": False, "pool_type": "tok", "act_kwargs": None, "timm_model_name": None,
                "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
                "scale_attn": False, "scale_fc": False}
TEXT_PLAIN = {"ls_init_value": None, "embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False,
              "proj_bias": False, "proj_type": "linear", "act_kwargs": None, "hf_model_name": None, "qk_norm": False,
              "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
              "scale_fc": False}
QKV = ("q", "k", "v")  # open_clip's in_proj is [q; k; v]


@dataclass(frozen=True)
class HFClip:
    """A Hugging Face CLIP folder in open_clip form.

    ``state``: open_clip keys, ``visual.*`` and, for a ``CLIPModel``, the text tower's keys and
    ``logit_scale``; ``arch``: the open_clip architecture (registered by this module when none
    matched); ``config``: its open_clip model config; ``has_text``: whether the text tower is in ``state``.
    """

    state: StateDict
    arch: str
    config: dict
    has_text: bool

    def visual(self) -> StateDict:
        return under_prefix(self.state, "visual.")


# ---- reading a folder ---------------------------------------------------------------------------


def read_hf_config(folder: Path) -> dict:
    """``config.json`` of a Hugging Face CLIP folder; one-line error when absent or not CLIP."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise NeuligError(f"{folder} has no config.json; give a Hugging Face CLIP folder "
                          "(config.json + model.safetensors)") from None
    except (OSError, ValueError) as err:
        raise NeuligError(f"{path} cannot be read as JSON ({err}); download the folder again") from err
    if not isinstance(config, dict) or config.get("model_type") not in HF_MODEL_TYPES:
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise NeuligError(f"{path} has model_type {found!r}; only CLIP folders ({', '.join(HF_MODEL_TYPES)}) "
                          "can be read")
    return config


def _shard_files(folder: Path, index_name: str) -> list[Path]:
    index = folder / index_name
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NeuligError(f"{index} is not a readable shard index ({err}); download the folder again") from err
    names = sorted(set(weight_map.values()))
    for name in names:
        if not isinstance(name, str) or Path(name).name != name:
            raise NeuligError(f"{index} names shard {name!r} outside its folder; download the folder again")
    return [folder / name for name in names]


def read_hf_weights(folder: Path, limits: Limits | None = None) -> StateDict:
    """The weights of a Hugging Face folder: ``model.safetensors`` (or its shards, via
    ``model.safetensors.index.json``), else ``pytorch_model.bin`` (or its shards) read by
    :mod:`neulig.models.torch_file` within ``limits``, which its shards share; no code from the folder runs."""
    from dataclasses import replace

    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        files, reader = [folder / "model.safetensors"], "safetensors"
    elif (folder / "model.safetensors.index.json").is_file():
        files, reader = _shard_files(folder, "model.safetensors.index.json"), "safetensors"
    elif (folder / "pytorch_model.bin").is_file():
        files, reader = [folder / "pytorch_model.bin"], "torch"
    elif (folder / "pytorch_model.bin.index.json").is_file():
        files, reader = _shard_files(folder, "pytorch_model.bin.index.json"), "torch"
    else:
        raise NeuligError(f"{folder} has config.json but no model.safetensors or pytorch_model.bin; "
                          "download the weights too")
    state: StateDict = {}
    given, spent = limits or Limits(), 0
    for file in files:
        if reader == "torch":
            part = read_pickled_state(file, str(file), replace(given, max_bytes=given.max_bytes - spent))
            spent += sum(t.numel() * t.element_size() for t in part.values())
            state.update(part)
            continue
        try:
            state.update(load_file(str(file)))
        except Exception as err:  # every reader's error means the same to the user
            raise unreadable(str(file), err, "download it again") from err
    return state


def _sub_config(config: Mapping, kind: str) -> dict:
    """The ``vision`` or ``text`` part of a CLIP config (``<kind>_config_dict`` of old files overrides)."""
    if config.get("model_type") == "clip_vision_model":
        return dict(config) if kind == "vision" else {}
    return {**(config.get(f"{kind}_config") or {}), **(config.get(f"{kind}_config_dict") or {})}


def _vision_part(hf: Mapping[str, Tensor]) -> tuple[dict, str]:
    """The vision tower's weights without their prefix, and that prefix: ``vision_model.`` (CLIPModel,
    CLIPVisionModelWithProjection, and CLIPVisionModel as transformers 4 saved it, e.g. FusionBench's)
    or none (CLIPVisionModel as transformers 5 saves it)."""
    prefixed = under_prefix(hf, "vision_model.")
    if prefixed:
        return prefixed, "vision_model."
    return {k: v for k, v in hf.items() if k.startswith(VISION_ROOTS)}, ""


def take(hf: dict, key: str, where: str) -> Tensor:
    if key not in hf:
        raise NeuligError(f"{where} lacks {key!r}; it is not a complete CLIP checkpoint")
    return hf.pop(key)


def _layer_ids(hf: Mapping, where: str) -> list[int]:
    ids = sorted({int(k.split(".")[2]) for k in hf if k.startswith("encoder.layers.") and k.split(".")[2].isdigit()})
    if ids != list(range(len(ids))) or not ids:
        raise NeuligError(f"{where} has encoder layers {ids}, expected 0..n-1")
    return ids


def _tower_to_open_clip(hf: dict, embed: Mapping[str, str], where: str) -> tuple[StateDict, int]:
    """One tower (HF keys without the ``vision_model.``/``text_model.`` prefix; consumed) in open_clip
    keys without the tower prefix, and its number of layers."""
    out = {dst: take(hf, src, where) for src, dst in embed.items()}
    ids = _layer_ids(hf, where)
    for i in ids:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([take(hf, f"{src}self_attn.{x}_proj.{kind}", where)
                                                          for x in QKV])
        out.update({dst + b: take(hf, src + a, where) for a, b in LAYER.items()})
    return out, len(ids)


def _activation(sub: Mapping, where: str) -> bool:
    act = sub.get("hidden_act", "quick_gelu")
    if act not in ACTIVATIONS:
        raise NeuligError(f"{where} uses hidden_act {act!r}; open_clip CLIP towers use "
                          f"{' or '.join(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def _mlp_ratio(width: int, hidden: int, where: str) -> float:
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise NeuligError(f"{where}: MLP width {hidden} is not int({width} * ratio) for any float ratio open_clip "
                          "accepts")
    return ratio


def _common(cfg: dict, sub: Mapping, width: int, mlp: int, where: str) -> dict:
    ratio = _mlp_ratio(width, mlp, where)
    if ratio != 4.0:
        cfg["mlp_ratio"] = ratio
    eps = float(sub.get("layer_norm_eps", DEFAULT_EPS))
    if eps != DEFAULT_EPS:
        cfg["norm_kwargs"] = {"eps": eps}
    return cfg


def _vision_cfg(visual: Mapping[str, Tensor], layers: int, sub: Mapping, where: str) -> dict:
    width, patch = visual["class_embedding"].shape[0], visual["conv1.weight"].shape[-1]
    grid = math.isqrt(visual["positional_embedding"].shape[0] - 1)
    if grid * grid != visual["positional_embedding"].shape[0] - 1:
        raise NeuligError(f"{where}: {visual['positional_embedding'].shape[0] - 1} patches is not a square grid")
    heads = int(sub.get("num_attention_heads", 12))
    if width % heads:
        raise NeuligError(f"{where}: hidden_size {width} is not divisible by num_attention_heads {heads}")
    cfg = {"image_size": grid * patch, "layers": layers, "width": width, "patch_size": patch}
    if width // heads != 64:
        cfg["head_width"] = width // heads
    return _common(cfg, sub, width, visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0], where)


def _text_cfg(text: Mapping[str, Tensor], layers: int, sub: Mapping, where: str) -> dict:
    vocab, width = text["token_embedding.weight"].shape
    heads = int(sub.get("num_attention_heads", 8))
    if width % heads:
        raise NeuligError(f"{where}: text hidden_size {width} is not divisible by num_attention_heads {heads}")
    cfg = {"context_length": text["positional_embedding"].shape[0], "vocab_size": vocab, "width": width,
           "heads": heads, "layers": layers}
    # HF pools at argmax(input_ids) for the legacy eos_token_id 2, else at the first eos_token_id; the
    # first eos is the argmax when eos is the largest id (CLIP's tokenizer: 49407 of 49408).
    eos = sub.get("eos_token_id", 49407)
    if eos not in (2, vocab - 1):
        cfg.update(pool_type="eos", eos_id=int(eos))
    return _common(cfg, sub, width, text["transformer.resblocks.0.mlp.c_fc.weight"].shape[0], where)


def hf_to_open_clip(hf_state: Mapping[str, Tensor], config: Mapping, projection: Tensor | None = None,
                    where: str = "Hugging Face CLIP") -> tuple[StateDict, dict, bool]:
    """HF CLIP weights as an open_clip state dict, its open_clip model config, and whether the text
    tower is in it. ``projection``: open_clip's ``visual.proj`` (``[width, embed_dim]``) for a
    ``CLIPVisionModel``, which has no ``visual_projection`` (take it from the base model)."""
    hf = {k: v for k, v in hf_state.items() if k.rsplit(".", 1)[-1] not in IGNORED}
    vision_hf, vision_prefix = _vision_part(hf)
    if not vision_hf:
        raise NeuligError(f"{where} has no vision_model.* weights; give a CLIP or CLIPVision folder")
    visual, layers = _tower_to_open_clip(vision_hf, VISION_EMBED, where)
    if "visual_projection.weight" in hf:
        visual["proj"] = hf["visual_projection.weight"].t().contiguous()
    elif projection is None:
        raise NeuligError(f"{where} is a CLIPVisionModel without visual_projection; pass the projection of the "
                          "model it was fine-tuned from (the base CLIP)")
    else:
        visual["proj"] = projection
    if visual["proj"].shape[0] != visual["class_embedding"].shape[0]:
        raise NeuligError(f"{where}: projection of shape {tuple(visual['proj'].shape)} does not fit width "
                          f"{visual['class_embedding'].shape[0]}; give the base model of this expert")
    vision_sub = _sub_config(config, "vision")
    model_cfg = {"embed_dim": int(visual["proj"].shape[1]), "quick_gelu": _activation(vision_sub, where),
                 "vision_cfg": _vision_cfg(visual, layers, vision_sub, where)}
    state = {f"visual.{k}": v for k, v in visual.items()}
    text_hf = under_prefix(hf, "text_model.")
    has_text = bool(text_hf) and "text_projection.weight" in hf
    if has_text:
        text, text_layers = _tower_to_open_clip(text_hf, TEXT_EMBED, where)
        text["text_projection"] = hf["text_projection.weight"].t().contiguous()
        text_sub = _sub_config(config, "text")
        if _activation(text_sub, where) != model_cfg["quick_gelu"]:
            raise NeuligError(f"{where}: the text and vision towers use different activations; open_clip has one")
        model_cfg["text_cfg"] = _text_cfg(text, text_layers, text_sub, where)
        state.update(text)
        if "logit_scale" in hf:
            state["logit_scale"] = hf["logit_scale"]
    roots = ("vision_model.", "text_model.", *(() if vision_prefix else VISION_ROOTS))
    top = {"visual_projection.weight", "text_projection.weight", "logit_scale"}
    leftover = sorted({*vision_hf, *text_hf, *(k for k in hf if not k.startswith(roots) and k not in top)})
    if leftover:
        raise NeuligError(f"{where} has weights open_clip's CLIP has no place for, e.g. {leftover[0]!r}")
    return state, model_cfg, has_text


# ---- open_clip architectures --------------------------------------------------------------------


def _normalised(cfg: Mapping, with_text: bool) -> tuple | None:
    """A comparable form of an open_clip model config (dataclass defaults filled in); None for
    configs that are not plain CLIPs (custom text towers, SigLIP biases, CoCa, ...)."""
    from neulig.models.openclip import open_clip
    CLIPTextCfg = open_clip.model.CLIPTextCfg
    CLIPVisionCfg = open_clip.model.CLIPVisionCfg
    if set(cfg) - {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}:
        return None
    try:
        vision = json.loads(json.dumps(asdict(CLIPVisionCfg(**cfg["vision_cfg"]))))
        text = json.loads(json.dumps(asdict(CLIPTextCfg(**cfg.get("text_cfg", {})))))
    except (TypeError, KeyError):
        return None
    if any(text.get(key, value) != value for key, value in TEXT_PLAIN.items()):
        return None  # a text tower of another kind (a Hugging Face text model, ...): not a CLIP
    return cfg.get("embed_dim"), bool(cfg.get("quick_gelu", False)), vision, text if with_text else None


def matching_arch(cfg: Mapping, with_text: bool = True) -> str | None:
    """The first registered open_clip architecture (in open_clip's order) equal to ``cfg``; with
    ``with_text=False`` only the image tower, embed dim and activation are compared."""
    from neulig.models.backbone import register_shipped_configs
    from neulig.models.openclip import open_clip

    register_shipped_configs()
    wanted = _normalised(cfg, with_text)
    for name in open_clip.list_models():
        if _normalised(open_clip.get_model_config(name) or {}, with_text) == wanted:
            return name
    return None


def register_arch(cfg: dict) -> str:
    """``cfg`` under the name ``hf-clip-<hash of cfg>`` in open_clip's registry (idempotent)."""
    from neulig.models.openclip import open_clip
    factory = open_clip.factory

    name = "hf-clip-" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
    factory._MODEL_CONFIGS[name] = json.loads(json.dumps(cfg))  # open_clip's registry has no in-memory API
    return name


def arch_for(cfg: dict, has_text: bool) -> str:
    """The registered architecture for a converted config, registering ``cfg`` when none matches
    (a vision-only config then gets open_clip's default text tower, which the folder does not define)."""
    found = matching_arch(cfg, with_text=has_text)
    if found:
        return found
    from neulig.models.openclip import open_clip
    CLIPTextCfg = open_clip.model.CLIPTextCfg
    return register_arch(cfg if has_text else {**cfg, "text_cfg": asdict(CLIPTextCfg())})


def arch_mismatch(cfg: Mapping, arch: str) -> str | None:
    """What differs between a converted image tower's config and architecture ``arch`` (size, embed
    dim or activation), else None."""
    from neulig.models.backbone import register_shipped_configs
    from neulig.models.openclip import open_clip

    register_shipped_configs()
    target = open_clip.get_model_config(arch)
    mine, theirs = _normalised(cfg, False), _normalised(target or {}, False)
    if theirs is None or mine is None:
        return f"{arch} is not a plain open_clip CLIP ViT"
    if mine[1] != theirs[1]:
        acts = {True: "quick_gelu", False: "gelu"}
        return f"its activation is {acts[mine[1]]} but {arch} uses {acts[theirs[1]]}"
    if mine != theirs:
        return f"its image tower is {cfg['vision_cfg']} with embed_dim {cfg['embed_dim']}, not {arch}'s"
    return None


def load_hf_clip(folder: str | Path, projection: Tensor | None = None) -> HFClip:
    """A Hugging Face ``CLIPModel`` / ``CLIPVisionModel(WithProjection)`` folder as open_clip state and
    architecture. ``projection``: open_clip's ``visual.proj`` for a folder without ``visual_projection``
    (a FusionBench ``CLIPVisionModel``): the base model's."""
    folder = Path(folder)
    config = read_hf_config(folder)
    state, cfg, has_text = hf_to_open_clip(read_hf_weights(folder), config, projection, where=str(folder))
    return HFClip(state, arch_for(cfg, has_text), cfg, has_text)
