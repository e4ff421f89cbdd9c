"""FinetuneModule: the image encoder trainable, the dataset's zero-shot head frozen (docs/neural_ligand.md §8).

Recipe: AdamW (lr, weight decay), linear warm-up for ``warmup_steps`` then cosine decay to 0 over
``total_steps``; gradient clipping is the Trainer's ``gradient_clip_val``. Accuracy by torchmetrics.

Speed knobs, used only when training runs on a CUDA device (they change no math; the numbers differ
at rounding level): ``compile`` (``torch.compile`` of the encoder, in place, so state-dict keys stay
the same; a dict is passed as compile options), ``channels_last`` (NHWC encoder weights and inputs:
faster convolutions with bf16 on tensor cores, e.g. RN50). On CUDA the non-finite-loss check keeps a
device-side flag (read every ``check_every`` steps and at epoch end) instead of a host sync at every
step; on CPU it checks every step.
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
                 warmup_steps: int, total_steps: int, stage_name: str = "finetune", compile: bool | dict = False,
                 channels_last: bool = False, check_every: int = 50):
        super().__init__()
        self.compile_encoder, self.channels_last, self.check_every = compile, bool(channels_last), int(check_every)
        self._inputs_channels_last = False
        self._bad_step: Tensor | None = None  # CUDA: first step whose loss was not finite (-1: none yet)
        self.stage_name = stage_name
        self.encoder = encoder
        self.head = ZeroShotHead(head_weight)
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        num_classes = head_weight.shape[0]
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def on_fit_start(self) -> None:
        if self.device.type != "cuda":
            return
        if self.channels_last:
            self.encoder.to(memory_format=torch.channels_last)  # same Parameter objects: optimiser unaffected
            self._inputs_channels_last = True
        if self.compile_encoder:
            self.encoder.compile(**(dict(self.compile_encoder) if isinstance(self.compile_encoder, dict) else {}))

    def forward(self, images: Tensor) -> Tensor:
        if self._inputs_channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.head(self.encoder(images))

    def _fail(self, loss: float, step: int) -> None:
        from neulig.errors import NeuligError

        raise NeuligError(f"fine-tuning loss is {loss} at step {step}; lower model.finetune.lr")

    def _check_finite(self, loss: Tensor) -> None:
        if loss.device.type != "cuda":  # no device to wait for: check at once
            if not torch.isfinite(loss):
                self._fail(loss.item(), self.global_step)
            return
        loss = loss.detach()
        if self._bad_step is None:
            self._bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_loss = torch.zeros((), dtype=torch.float32, device=loss.device)
        first = ~torch.isfinite(loss) & (self._bad_step < 0)
        self._bad_step = torch.where(first, self.global_step, self._bad_step)
        self._bad_loss = torch.where(first, loss.float(), self._bad_loss)
        if (self.global_step + 1) % self.check_every == 0:
            self._raise_if_bad()

    def _raise_if_bad(self) -> None:
        if self._bad_step is not None and int(self._bad_step) >= 0:
            self._fail(self._bad_loss.item(), int(self._bad_step))

    def on_train_epoch_end(self) -> None:
        self._raise_if_bad()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self._check_finite(loss)
        self.train_acc.update(logits, labels)  # the epoch value is computed once, at epoch end
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
        # not fused=True: Lightning's mixed-precision plugin refuses gradient clipping with fused optimisers
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=self.lr
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.warmup_steps, self.total_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
