"""Offline pretraining of the tiny backbone: contrastive image-caption learning on a generated corpus.

Captions come from a finite concept vocabulary (class name x template), so each step contrasts every
image against one caption per concept (a multi-positive CLIP loss, as in UniCL): duplicated captions
in a batch are never treated as negatives of each other. Image and text towers are both trained.
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from neulig.data.base import CLIP_MEAN, CLIP_STD
from neulig.data.pretraining import pretraining_corpus
from neulig.utils.log import log


def pretrain_tiny(clip: nn.Module, tokenizer, steps: int, batch_size: int, lr: float, n_per_family: int, seed: int,
                  image_size: int) -> dict:
    """Train ``clip`` in place; returns a summary (final loss, train accuracy)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    images, labels, concepts, templates = pretraining_corpus(n_per_family, seed, size=image_size)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    clip.train()
    optimizer = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.1)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
    )
    generator = torch.Generator().manual_seed(seed)
    # every caption the corpus can produce, tokenised once: [concepts, templates_per_concept, L]
    width = max(len(t) for t in templates)
    tokens = torch.stack([tokenizer([t.format(name) for t in (list(templates[c]) * width)[:width]])
                          for c, name in enumerate(concepts)])
    loss_value, acc = float("nan"), 0.0
    for step in range(steps):
        idx = torch.randint(len(labels), (batch_size,), generator=generator)
        x = (images[idx].float() / 255 - mean) / std
        if rng.random() < 0.5:  # cheap augmentation: random translation by up to 3 pixels
            x = torch.roll(x, shifts=(rng.randint(-3, 3), rng.randint(-3, 3)), dims=(2, 3))
        pick = torch.randint(width, (len(concepts),), generator=generator)
        img = F.normalize(clip.encode_image(x), dim=-1)
        txt = F.normalize(clip.encode_text(tokens[torch.arange(len(concepts)), pick]), dim=-1)
        logits = clip.logit_scale.exp() * img @ txt.t()
        loss = F.cross_entropy(logits, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        loss_value = loss.item()
        acc = float((logits.argmax(-1) == labels[idx]).float().mean())
        if (step + 1) % max(1, steps // 5) == 0:
            log.info(f"pretraining tiny backbone: step {step + 1}/{steps} loss {loss_value:.3f} acc {acc:.2f}")
    clip.eval()
    return {"final_loss": loss_value, "final_train_acc": acc, "concepts": len(concepts)}
