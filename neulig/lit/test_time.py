"""The shared machinery of the test-time adaptation combiners, AdaMerging (``neulig.lit.adamerging``,
arXiv 2310.02575) and WeMoE (``neulig.lit.wemoe``, arXiv 2402.00433): seeded streams of unlabeled
test images, the frozen heads, the entropy objective (docs/methods.md §9), the step loader and the
``history`` curve read by the MLflow callback. One Lightning step is one optimisation step; a method's
options (``steps``, ``lr``, ``batch_size``, ``log_every``, ``curve_every``) come in its typed config.
"""
from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from neulig.config.merge import AdaMergingMerge, WeMoEMerge
from neulig.data.base import fetch_images
from neulig.errors import NeuligError
from neulig.merging.adamerging import entropy
from neulig.models.heads import head_logits


class UnlabeledStream:
    """Seeded batches of a test split's indices.

    ``fresh=True``: every draw is a new shuffled loader's first ``count`` indices (AdaMerging);
    ``fresh=False``: consecutive batches of a shuffled order, reshuffled once exhausted (WeMoE's
    ``next(iter)`` over a cycled shuffled loader).
    """

    def __init__(self, size: int, seed: int, fresh: bool):
        if size == 0:
            raise NeuligError("test-time adaptation needs unlabeled test images, but a test split is empty; "
                              "raise data.sizes.test")
        self.size, self.fresh = size, fresh
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.position = torch.randperm(size, generator=self.generator), 0

    def draw(self, count: int) -> Tensor:
        if self.fresh:
            return torch.randperm(self.size, generator=self.generator)[:count]
        if self.position >= self.size:
            self.order, self.position = torch.randperm(self.size, generator=self.generator), 0
        batch = self.order[self.position : self.position + count]
        self.position += count
        return batch


class TTAModule(L.LightningModule):
    """Shared machinery of the test-time adaptation combiners (AdaMerging, WeMoE)."""

    def __init__(self, heads: dict[str, Tensor], test_sets: dict[str, Dataset], method: AdaMergingMerge | WeMoEMerge,
                 seed: int, stage_name: str, batches_per_task: int, fresh_batches: bool, per_task_forward: bool,
                 curve: Callable[[], dict[str, float]] | None):
        super().__init__()
        # one forward per task's batches (needed when a forward mixes its samples, e.g. WeMoE's batch_reduce)
        self.per_task_forward = per_task_forward
        # every curve_every steps: curve() -> accuracies of the model so far (a test-time method's curve)
        self.curve, self.curve_every = curve, int(method.curve_every)
        self.names = list(test_sets)
        self.test_sets = test_sets
        for i, name in enumerate(self.names):
            self.register_buffer(f"head_{i}", heads[name].detach().float().clone(), persistent=False)
        self.streams = {n: UnlabeledStream(len(test_sets[n]), seed * 1009 + i, fresh_batches)
                        for i, n in enumerate(self.names)}
        self.steps, self.lr, self.batch_size = int(method.steps), float(method.lr), int(method.batch_size)
        self.batches_per_task, self.log_every = int(batches_per_task), max(1, int(method.log_every))
        self.history: list[dict] = []
        self.stage_name = stage_name

    # -- to implement ------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_metrics(self) -> dict[str, float]:
        return {}

    # -- shared --------------------------------------------------------------------------------------
    def head(self, i: int) -> Tensor:
        return getattr(self, f"head_{i}")

    def draw(self) -> tuple[Tensor, list[list[int]]]:
        """One step's images of every task, concatenated, and each task's batch sizes."""
        images, sizes = [], []
        for name in self.names:
            task_sizes = []
            if self.streams[name].fresh:
                idx = self.streams[name].draw(self.batch_size * self.batches_per_task)
                images.append(fetch_images(self.test_sets[name], idx))
                task_sizes = [len(c) for c in torch.split(idx, self.batch_size)]
            else:
                for _ in range(self.batches_per_task):
                    idx = self.streams[name].draw(self.batch_size)
                    images.append(fetch_images(self.test_sets[name], idx))
                    task_sizes.append(len(idx))
            sizes.append(task_sizes)
        return torch.cat(images).to(self.device), sizes

    def objective(self, features: Tensor, sizes: list[list[int]]) -> Tensor:
        """sum_k sum_b mean_{x in b} H(softmax(head_k(f(x)))) over the concatenated step batch."""
        per_task = torch.split(features, [sum(s) for s in sizes])
        loss = features.new_zeros((), dtype=torch.float32)
        for i, (feats, task_sizes) in enumerate(zip(per_task, sizes)):
            ent = entropy(head_logits(feats, self.head(i)))
            loss = loss + sum(chunk.mean() for chunk in torch.split(ent, task_sizes))
        return loss

    def training_step(self, step: Tensor, batch_idx: int) -> Tensor:
        images, sizes = self.draw()
        if self.per_task_forward:
            features = torch.cat([self.encode(chunk) for chunk in torch.split(images, [sum(s) for s in sizes])])
        else:
            features = self.encode(images)
        loss = self.objective(features, sizes)
        done = batch_idx + 1
        if done % self.log_every == 0 or done == self.steps:  # the only host sync, every log_every steps
            value = float(loss.detach())
            if value != value or abs(value) == float("inf"):
                raise NeuligError(f"{self.stage_name} entropy loss is {value} at step {done}; lower merge.lr")
            self.history.append({"epoch": done, "train/loss": value, **self.extra_metrics()})
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """The accuracy curve: after the optimiser step of every ``curve_every``-th step (and before the first)."""
        done = batch_idx + 1
        if self.curve is None or self.curve_every <= 0 or (done % self.curve_every and done != self.steps):
            return
        point = next((p for p in self.history if p["epoch"] == done), None)
        values = self.curve()
        if point is None:
            self.history.append({"epoch": done, **values})
        else:
            point.update(values)

    def on_train_start(self) -> None:
        if self.curve is not None and self.curve_every > 0:
            self.history.append({"epoch": 0, **self.curve()})

    def train(self, mode: bool = True):
        """The frozen encoder always runs in eval mode (no BatchNorm update, no dropout)."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def frozen_modules(self) -> list[nn.Module]:
        return []

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.arange(self.steps), batch_size=None)
