"""Frozen zero-shot classification heads built from the text tower (as CLIP does).

For each class, the text embeddings of all templates filled with the class name are L2-normalised,
averaged and re-normalised (open_clip ``build_zero_shot_classifier``); the head multiplies by CLIP's
logit scale. A head maps a raw image feature z to logits  s * normalize(z) @ W^T  (docs/neural_ligand.md §4).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def build_head_weight(clip: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> Tensor:
    """[C, D] class embeddings (unit norm) times the model's logit scale."""
    device = next(clip.parameters()).device
    rows = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        emb = F.normalize(clip.encode_text(tokens).float(), dim=-1).mean(0)
        rows.append(F.normalize(emb, dim=0))
    return torch.stack(rows) * clip.logit_scale.exp().float()


def head_logits(features: Tensor, head_weight: Tensor) -> Tensor:
    """Logits of a frozen zero-shot head on raw image features [B, D] -> [B, C]."""
    return F.normalize(features.float(), dim=-1) @ head_weight.to(features.device).t()


class ZeroShotHead(nn.Module):
    """A frozen head as a module (the weight is a buffer, never a parameter)."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())

    def forward(self, features: Tensor) -> Tensor:
        return head_logits(features, self.weight)
