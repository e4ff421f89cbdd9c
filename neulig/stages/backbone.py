"""Stage 1, the backbone: real CLIP weights from a local file (fetched when absent), a random init, or the tiny backbone's
offline pretraining (cached)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from neulig.config.model import SHIPPED_PRETRAINING, ModelConfig
from neulig.errors import NeuligError
from neulig.models.backbone import clip_layout, create_quietly, encoder_layout
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



def load_backbone(model: ModelConfig, weights_dir: str, cache_dir: Path, origin: str | None = None,
                  base: Path | None = None) -> Backbone:
    """The pretrained backbone of ``origin`` (a pretraining seed or pretrained tag; None: the model's own),
    or the one whose weights ``base`` holds (``model.weights``, or the base of ``model.experts_dir``)."""
    from neulig.models.backbone import register_shipped_configs
    from neulig.models.hub import fetching_allowed, why_not_fetched
    from neulig.models.openclip import open_clip
    from neulig.models.weights import fetch_weights, missing_weights_message, weights_file
    from neulig.utils.cache import content_digest

    register_shipped_configs()
    tag = model.pretrained if origin is None or model.pretrained == SHIPPED_PRETRAINING else origin
    tokenizer = open_clip.get_tokenizer(model.arch)
    if base is not None:
        return from_base_weights(model, weights_dir, cache_dir, base, tokenizer)
    if tag is None:
        clip = create_quietly(model.arch, None, model.init_seed)
        return Backbone(model.name, model.arch, clip, tokenizer, config_hash("random", model.arch, model.init_seed))
    if tag == SHIPPED_PRETRAINING:
        return pretrained_tiny(model, tokenizer, cache_dir, model.pretrain.seed if origin is None else int(origin))
    path = weights_file(weights_dir, model.arch, tag)
    if path is None and not fetching_allowed(model.download):
        raise NeuligError(missing_weights_message(model.name, weights_dir, model.arch, tag,
                                                  why_not_fetched(model.download)))
    if path is None:
        log.info(f"fetching the {model.arch}/{tag} weights from the hub into {weights_dir}")
        path = fetch_weights(weights_dir, model.arch, tag)
    clip = create_quietly(model.arch, path, 0)
    digest = content_digest(path, cache_dir)  # the file's content, never its name or size
    return Backbone(model.name, model.arch, clip, tokenizer, config_hash("weights", model.arch, tag, digest))


def from_base_weights(model: ModelConfig, weights_dir: str, cache_dir: Path, base: Path, tokenizer) -> Backbone:
    """The backbone from base weights in any format: the whole CLIP when ``base`` holds one, else its
    image tower on the configured backbone (whose text tower builds the zero-shot heads)."""
    from dataclasses import replace

    from neulig.models.expert_sources import read_clip
    from neulig.utils.cache import content_digest

    state, whole = read_clip(base, clip_layout(model.arch), encoder_layout(model.arch), model.arch,
                             where=f"{base} (base weights)")
    digest = content_digest(base, cache_dir)
    if whole:
        clip = create_quietly(model.arch, None, 0)
        clip.load_state_dict(state)
        return Backbone(model.name, model.arch, clip.eval(), tokenizer, config_hash("base-weights", model.arch, digest))
    configured = load_backbone(replace(model, weights=None, experts_dir=None), weights_dir, cache_dir)
    configured.visual.load_state_dict(state)
    return Backbone(model.name, model.arch, configured.clip, tokenizer,
                    config_hash("base-visual", configured.key, digest))


def expert_origins(model: ModelConfig, names: list[str]) -> dict[str, str | None]:
    """The starting checkpoint of each dataset's expert: ``model.origins`` cycled over the datasets
    (pretraining seeds for ``tiny``, pretrained tags for real models); None: the model's own."""
    origins = model.origins or [None]
    return {d: origins[i % len(origins)] for i, d in enumerate(names)}


def load_backbones(config, origins: dict[str, str | None], base: Path | None = None) -> dict[str | None, Backbone]:
    """One backbone per distinct origin (one for a single-origin run, from ``base`` weights when given)."""
    return {o: load_backbone(config.model, config.paths.weights_dir, config.paths.cache_dir, o, base)
            for o in dict.fromkeys(origins.values())}


def pretrained_tiny(model: ModelConfig, tokenizer, cache_dir: Path, seed: int) -> Backbone:
    """neulig's offline contrastive pretraining of the tiny backbone: the file shipped with the package
    when it was made by exactly this recipe (``model.use_shipped``), otherwise pretrained and cached."""
    from dataclasses import asdict

    from neulig.models.pretrain import pretrain_spec
    from neulig.models.shipped import load_shipped, shipped_file
    from neulig.utils.cache import file_sha256

    spec = pretrain_spec(model, seed)
    clip = create_quietly(model.arch, None, seed)
    shipped = shipped_file(spec) if model.use_shipped else None
    if shipped is not None:
        digest = file_sha256(shipped)
        load_shipped(clip, shipped)
        log.info(f"{model.name} backbone: the shipped pretraining {shipped.name} (sha256 {digest[:12]})")
        return Backbone(model.name, model.arch, clip.eval(), tokenizer, config_hash("pretrain-shipped", spec, digest))

    def compute() -> tuple[dict, dict]:
        from neulig.models.pretrain import pretrain_tiny

        log.info(f"pretraining the {model.name} backbone offline (seed {seed})")
        start = time.time()
        summary = pretrain_tiny(clip, tokenizer, image_size=model.image_size, **{**asdict(model.pretrain), "seed": seed})
        return clip.state_dict(), {"spec": spec, "summary": summary, "seconds": time.time() - start}

    product = PRETRAINED.fetch(cache_dir, (spec,), compute, reference=clip.state_dict())
    clip.load_state_dict(product.tensors)
    return Backbone(model.name, model.arch, clip.eval(), tokenizer, product.key)
