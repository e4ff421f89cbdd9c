"""Stage 1, the backbone: real CLIP weights from a local file, a random init, or the tiny backbone's
offline pretraining (cached)."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from neulig.config.model import SHIPPED_PRETRAINING, ModelConfig
from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict
from neulig.stages.stage import CachedStage
from neulig.utils.cache import config_hash
from neulig.utils.log import log

PRETRAINED = CachedStage("backbone", "pretrain", "model.safetensors")


@dataclass
class Backbone:
    """A CLIP model (image and text tower) and the cache key of its weights."""

    name: str
    arch: str
    clip: nn.Module
    tokenizer: object
    key: str

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def feature_dim(self) -> int:
        return int(self.clip.visual.output_dim)


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
    from neulig.models.backbone import create_clip

    with quiet_open_clip():
        return create_clip(arch, weights, seed)


def encoder_layout(arch: str) -> StateDict:
    """The image encoder's state dict of ``arch`` as meta tensors: keys, shapes and dtypes, built in
    milliseconds without memory or initialisation (to check a checkpoint before anything runs)."""
    from neulig.models.backbone import register_shipped_configs
    from neulig.models.openclip import open_clip

    register_shipped_configs()
    with quiet_open_clip(), torch.device("meta"):
        return open_clip.create_model(arch, device="meta").visual.state_dict()


def load_backbone(model: ModelConfig, weights_dir: str, cache_dir: Path, origin: str | None = None) -> Backbone:
    """The pretrained backbone of ``origin`` (a pretraining seed or pretrained tag; None: the model's own)."""
    from neulig.models.backbone import register_shipped_configs
    from neulig.models.openclip import open_clip
    from neulig.models.weights import missing_weights_message, weights_file

    register_shipped_configs()
    tag = model.pretrained if origin is None or model.pretrained == SHIPPED_PRETRAINING else origin
    tokenizer = open_clip.get_tokenizer(model.arch)
    if tag is None:
        clip = create_quietly(model.arch, None, model.init_seed)
        return Backbone(model.name, model.arch, clip, tokenizer, config_hash("random", model.arch, model.init_seed))
    if tag == SHIPPED_PRETRAINING:
        return pretrained_tiny(model, tokenizer, cache_dir, model.pretrain.seed if origin is None else int(origin))
    path = weights_file(weights_dir, model.arch, tag)
    if path is None:
        raise NeuligError(missing_weights_message(model.name, weights_dir, model.arch, tag))
    clip = create_quietly(model.arch, path, 0)
    return Backbone(model.name, model.arch, clip, tokenizer, config_hash("weights", model.arch, tag, path.stat().st_size))


def expert_origins(model: ModelConfig, names: list[str]) -> dict[str, str | None]:
    """The starting checkpoint of each dataset's expert: ``model.origins`` cycled over the datasets
    (pretraining seeds for ``tiny``, pretrained tags for real models); None: the model's own."""
    origins = model.origins or [None]
    return {d: origins[i % len(origins)] for i, d in enumerate(names)}


def load_backbones(config, origins: dict[str, str | None]) -> dict[str | None, Backbone]:
    """One backbone per distinct origin (one for a single-origin run)."""
    return {o: load_backbone(config.model, config.paths.weights_dir, config.paths.cache_dir, o)
            for o in dict.fromkeys(origins.values())}


def pretrained_tiny(model: ModelConfig, tokenizer, cache_dir: Path, seed: int) -> Backbone:
    """neulig's offline contrastive pretraining of the tiny backbone, cached by its recipe."""
    from dataclasses import asdict

    pretrain = {**asdict(model.pretrain), "seed": seed}
    spec = {"arch": model.arch, "pretrain": pretrain, "image_size": model.image_size}
    clip = create_quietly(model.arch, None, seed)

    def compute() -> tuple[dict, dict]:
        from neulig.models.pretrain import pretrain_tiny

        log.info(f"pretraining the {model.name} backbone offline (seed {seed})")
        start = time.time()
        summary = pretrain_tiny(clip, tokenizer, image_size=model.image_size, **pretrain)
        return clip.state_dict(), {"spec": spec, "summary": summary, "seconds": time.time() - start}

    product = PRETRAINED.fetch(cache_dir, (spec,), compute, reference=clip.state_dict())
    clip.load_state_dict(product.tensors)
    return Backbone(model.name, model.arch, clip.eval(), tokenizer, product.key)
