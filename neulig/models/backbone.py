"""open_clip backbones: the shipped tiny architecture and the real CLIP models.

Real models (RN50, ViT-B-32, ViT-L-14) load ``pretrained`` weights from a local file in ``weights_dir``,
which :mod:`neulig.models.weights` fetches from the hub when it is absent and fetching is allowed.
``pretrained: null`` builds the real architecture randomly initialised (tests, speed measurements).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict, under_prefix

CONFIG_DIR = Path(__file__).parent / "configs"


def register_shipped_configs() -> None:
    """Make the JSON architectures shipped with neulig known to open_clip (idempotent)."""
    from neulig.models.openclip import open_clip

    if "neulig-tiny" not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


def create_clip(arch: str, weights: Path | None = None, seed: int = 0) -> nn.Module:
    """Build an open_clip CLIP model; load ``weights`` (a local state-dict file) when given.

    The random initialisation is drawn from torch's CPU generator seeded with ``seed`` inside
    ``torch.random.fork_rng``: the same model for the same seed, and the caller's RNG state untouched."""
    from neulig.models.openclip import open_clip

    register_shipped_configs()
    if arch not in open_clip.list_models():
        raise NeuligError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=str(weights) if weights else None)
    return model.eval()


def image_embedding_dim(model: nn.Module) -> int:
    return int(model.visual.output_dim)


@contextmanager
def quiet_open_clip():
    """open_clip warns "No pretrained weights loaded" (on the root logger) for every random init."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def create_quietly(arch: str, weights: Path | None, seed: int) -> nn.Module:
    """:func:`create_clip` without open_clip's warning about a random init."""
    with quiet_open_clip():
        return create_clip(arch, weights, seed)

def clip_layout(arch: str) -> StateDict:
    """The CLIP state dict of ``arch`` as meta tensors: keys, shapes and dtypes, built in milliseconds
    without memory or initialisation (to check a checkpoint before anything runs)."""
    from neulig.models.openclip import open_clip

    register_shipped_configs()
    with quiet_open_clip(), torch.device("meta"):
        return open_clip.create_model(arch, device="meta").state_dict()


def encoder_layout(arch: str) -> StateDict:
    """The image encoder's part of :func:`clip_layout` (``visual.`` removed)."""
    return under_prefix(clip_layout(arch), "visual.")
