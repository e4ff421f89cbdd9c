"""open_clip backbones: the shipped tiny architecture and the real CLIP models.

Real models (RN50, ViT-B-32, ViT-L-14) load ``pretrained`` weights only from a local file in
``weights_dir`` (nothing is downloaded); a missing file is a one-line error naming the path.
``pretrained: null`` builds the real architecture randomly initialised (tests, speed measurements).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from neulig.errors import NeuligError

CONFIG_DIR = Path(__file__).parent / "configs"


def register_shipped_configs() -> None:
    """Make the JSON architectures shipped with neulig known to open_clip (idempotent)."""
    from neulig.models.openclip import open_clip

    if "neulig-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def create_clip(arch: str, weights: Path | None = None, seed: int = 0) -> nn.Module:
    """Build an open_clip CLIP model; load ``weights`` (a local state-dict file) when given."""
    from neulig.models.openclip import open_clip

    register_shipped_configs()
    if arch not in open_clip.list_models():
        raise NeuligError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=str(weights) if weights else None)
    return model.eval()


def image_embedding_dim(model: nn.Module) -> int:
    return int(model.visual.output_dim)
