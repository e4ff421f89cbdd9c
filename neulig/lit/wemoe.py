"""WeMoEModule: trains WeMoE's routers by entropy minimisation on unlabeled test images.

WeMoE (Tang et al., ICML 2024, arXiv 2402.00433) is *test-time adaptation*: like the reference
(``scripts/clip_dictmoe.py``) the objective sees each task's **test** images, never their labels,
and the task identity only selects the head (the router never sees it).

Schedule (docs/methods.md §10): only the routers are trainable; Adam (lr 1e-3) with CosineAnnealingLR
(T_max = ``steps``), ``steps`` = 1000. Each step every task takes the next batch of ``batch_size`` (16)
from its cycled, shuffled test order, and the loss is
    L = sum_k mean_{x in batch_k} H(softmax(head_k(f(x; W(x)))))
The tasks' batches go through the encoder together: routing is per sample (mean over that sample's
tokens) and the encoder runs in eval mode, so this equals one forward per task.

FusionBench's recipe (``conf/merge/wemoe_fusionbench.yaml``): Adam lr 1e-4 with a constant rate
(``lr_schedule: constant``) and ``batch_reduce``: during training each task's batch is routed by its
mean routing vector (so each task gets its own forward); evaluation always routes per sample.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from neulig.config.merge import WeMoEMerge
from neulig.lit.test_time import TTAModule
from neulig.merging.wemoe import WeMoE


class WeMoEModule(TTAModule):
    def __init__(self, wemoe: WeMoE, heads: dict[str, Tensor], test_sets: dict[str, Dataset], method: WeMoEMerge,
                 seed: int, curve: Callable[[], dict[str, float]] | None = None):
        # batch_reduce routes each task's batch by its mean routing vector: one forward per task
        super().__init__(heads, test_sets, method, seed, "wemoe", batches_per_task=1, fresh_batches=False,
                         per_task_forward=method.batch_reduce, curve=curve)
        self.wemoe, self.lr_schedule, self.batch_reduce = wemoe, method.lr_schedule, method.batch_reduce

    def on_train_start(self) -> None:
        self.wemoe.set_batch_reduce(self.batch_reduce)
        super().on_train_start()

    def on_train_end(self) -> None:
        self.wemoe.set_batch_reduce(False)  # evaluation routes every sample by its own vector

    def frozen_modules(self) -> list[nn.Module]:
        return [self.wemoe]

    def encode(self, images: Tensor) -> Tensor:
        return self.wemoe(images)

    @torch.no_grad()
    def extra_metrics(self) -> dict[str, float]:
        weights = self.wemoe.routing_weights().float()  # this step's batch [layers, B, T]
        routing = weights.mean((0, 1))
        metrics = {f"routing/{name}": float(r) for name, r in zip(self.names, routing)}
        metrics.update({"routing/min": float(weights.min()), "routing/max": float(weights.max())})
        metrics["lr"] = float(self.optimizers().param_groups[0]["lr"])
        return metrics

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.wemoe.router_parameters(), lr=self.lr)
        if self.lr_schedule == "constant":  # FusionBench's recipe
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.steps)  # the original repository
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
