"""Stage 2, zero-shot heads: one frozen [C, D] classifier per dataset from the backbone's text tower."""
from __future__ import annotations

from pathlib import Path

from torch import Tensor

from neulig.data.base import DatasetSpec
from neulig.stages.backbone import Backbone
from neulig.stages.stage import CachedStage

HEADS = CachedStage("heads", "head", "head.safetensors")


def zero_shot_head(backbone: Backbone, spec: DatasetSpec, cache_dir: Path) -> Tensor:
    """The frozen zero-shot head [C, D] of ``spec`` for ``backbone`` (class names x prompt templates)."""
    from neulig.models.heads import build_head_weight

    def compute() -> tuple[dict, dict]:
        return {"weight": build_head_weight(backbone.clip, backbone.tokenizer, spec.classnames, spec.templates)}, {}

    return HEADS.fetch(cache_dir, (backbone.key, spec.name, spec.classnames, spec.templates), compute).tensors["weight"]
