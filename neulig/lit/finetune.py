"""FinetuneModule: the image encoder trainable, the dataset's zero-shot head frozen (paper.md §4).

Recipe: AdamW (lr, weight decay), linear warm-up for ``warmup_steps`` then cosine decay to 0 over
``total_steps``; gradient clipping is the Trainer's ``gradient_clip_val``. Accuracy by torchmetrics.
"""
from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from neulig.models.heads import ZeroShotHead


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr: linear warm-up, then cosine to 0 (the reference's ``cosine_lr``)."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class FinetuneModule(L.LightningModule):
    def __init__(self, encoder: nn.Module, head_weight: Tensor, lr: float, weight_decay: float,
                 warmup_steps: int, total_steps: int, stage_name: str = "finetune"):
        super().__init__()
        self.stage_name = stage_name
        self.encoder = encoder
        self.head = ZeroShotHead(head_weight)
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        num_classes = head_weight.shape[0]
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.encoder(images))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            from neulig.errors import NeuligError

            raise NeuligError(f"fine-tuning loss is {loss.item()} at step {self.global_step}; lower model.finetune.lr")
        self.train_acc(logits, labels)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.val_acc(self(images), labels)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        decay = [p for p in self.encoder.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.encoder.parameters() if p.requires_grad and p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=self.lr
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.warmup_steps, self.total_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
