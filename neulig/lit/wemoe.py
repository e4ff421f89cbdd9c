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
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from neulig.lit.adamerging import TTAModule
from neulig.merging.wemoe import WeMoE


class WeMoEModule(TTAModule):
    def __init__(self, wemoe: WeMoE, heads: dict[str, Tensor], test_sets: dict[str, Dataset], steps: int = 1000,
                 lr: float = 1e-3, batch_size: int = 16, log_every: int = 10, seed: int = 0):
        super().__init__(heads, test_sets, steps, lr, batch_size, batches_per_task=1, fresh_batches=False,
                         log_every=log_every, seed=seed, stage_name="wemoe")
        self.wemoe = wemoe

    def frozen_modules(self) -> list[nn.Module]:
        return [self.wemoe]

    def encode(self, images: Tensor) -> Tensor:
        return self.wemoe(images)

    @torch.no_grad()
    def extra_metrics(self) -> dict[str, float]:
        routing = self.wemoe.routing_weights().float().mean((0, 1))  # this step's batch, mean over layers
        metrics = {f"routing/{name}": float(r) for name, r in zip(self.names, routing)}
        metrics["lr"] = float(self.optimizers().param_groups[0]["lr"])
        return metrics

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.wemoe.router_parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
