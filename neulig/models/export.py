"""Merged models as open_clip checkpoints (``save_merged: true``).

A merged model is the backbone's CLIP state dict with its ``visual.*`` entries replaced by a merged
image encoder: the text tower (hence zero-shot heads for any class names) is the backbone's. It is
written as safetensors, with the open_clip architecture in the file's metadata, so that

    from neulig.models.export import load_merged
    model = load_merged("outputs/runs/<run>/merged.safetensors")

or, with open_clip alone (call ``neulig.models.backbone.register_shipped_configs()`` first for the
shipped ``neulig-tiny`` architecture), ``open_clip.create_model(arch, pretrained=path)`` loads it
strictly (no missing or unexpected keys).

Which files a run writes: the merged models its results define (``ComboResult.merged``): a static
method's or AdaMerging's ``merged.safetensors``; for Portland, whose merge depends on the input,
``merged_global.safetensors`` (mean β over every validation split) and
``merged_task/<dataset>.safetensors`` (mean β over that dataset's validation split), the models behind
``acc/merged_global`` and ``acc/merged_task``. With several dataset combinations
(``data.num_co_models``) each combination's files go under ``<d1+d2+...>/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict, first_mismatch, under_prefix

ARCH_KEY = "open_clip_arch"  # safetensors metadata: the architecture name to pass to open_clip


def clip_state(backbone_state: StateDict, visual_state: StateDict) -> StateDict:
    """The backbone's full CLIP state dict with ``visual.*`` replaced by ``visual_state`` (same order
    and dtypes as the backbone; every tensor its own CPU copy)."""
    visual = under_prefix(backbone_state, "visual.")
    problem = first_mismatch(visual_state, visual)
    if problem:
        raise NeuligError(f"merged encoder does not match the backbone's visual tower: {problem}")
    out = {}
    for key, value in backbone_state.items():
        source = visual_state[key[len("visual."):]] if key.startswith("visual.") else value
        out[key] = source.detach().to(device="cpu", dtype=value.dtype).clone()
    return out


def save_clip(path: Path, state: StateDict, arch: str) -> Path:
    """Write ``state`` as safetensors at ``path`` via a temporary name (no half-written file is left)."""
    from neulig.models.checkpoints import save_state
    from neulig.utils.cache import atomic_file

    with atomic_file(path) as tmp:
        save_state(tmp, state, metadata={ARCH_KEY: arch})
    return path


def save_merged(run_dir: Path, combos: Sequence, backbone: nn.Module, arch: str,
                fmt: str = "open_clip") -> dict[str, Path]:
    """Write every combination's merged models (``ComboResult.merged``) under ``run_dir``, one at a time;
    returns {relative name: path}. With several combinations each one's go under ``<d1+d2+...>/``.
    ``fmt``: ``open_clip`` (one safetensors file each) or ``hf`` (a Hugging Face
    ``CLIPVisionModelWithProjection`` folder each, for ``CLIPVisionModel.from_pretrained`` and FusionBench)."""
    from neulig.models.hf_export import save_hf_clip

    backbone_state = backbone.state_dict()
    written: dict[str, Path] = {}
    for combo in combos:
        prefix = "" if len(combos) == 1 else "+".join(combo.datasets) + "/"
        for model in combo.merged:
            state = clip_state(backbone_state, model.weights())
            if fmt == "hf":
                written[prefix + model.name] = save_hf_clip(run_dir / (prefix + model.name), state, arch)
            else:
                name = f"{prefix}{model.name}.safetensors"
                written[name] = save_clip(run_dir / name, state, arch)
    return written


def checkpoint_arch(path: str | Path) -> str:
    """The open_clip architecture recorded in a merged checkpoint's metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            arch = (handle.metadata() or {}).get(ARCH_KEY)
    except (SafetensorError, OSError) as err:
        raise NeuligError(f"merged checkpoint {path} cannot be read ({err})") from err
    if not arch:
        raise NeuligError(f"{path} names no open_clip architecture; pass it: open_clip.create_model(arch, pretrained=path)")
    return arch


def load_merged(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The open_clip CLIP model of a merged checkpoint written by neulig, in eval mode."""
    from neulig.models.backbone import register_shipped_configs
    from neulig.models.openclip import open_clip

    register_shipped_configs()
    model = open_clip.create_model(checkpoint_arch(path), pretrained=str(path), device=device)
    return model.eval()
