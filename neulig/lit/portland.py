"""PortlandModule: trains only the Portland CoopVec generator on cached, frozen expert features.

Schedule as in the reference code (paper.md §3.8, Appendix A): Adam (lr 1e-3), one optimiser step
per dataset in round-robin order, ``min_k ceil(n_k / batch)`` rounds per global epoch (larger
datasets are subsampled each epoch), ``global_epochs`` epochs, evaluation every ``eval_every``
epochs. Because the experts are frozen their features are computed once (``cached features``), so
one Lightning step runs one whole global epoch in memory. Model selection uses the *validation*
split's ensembled accuracy, never the test split.

Multi-GPU: under DDP every rank walks the same seeded batch order and takes its slice of each batch;
losses are per-sample sums divided by the global batch size, and gradients are all-reduced (sum) by
hand before each step, which equals the single-process update exactly (up to float summation order).
DDP's own reducer is switched off because one Lightning step takes many optimiser steps.
"""
from __future__ import annotations

import copy

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from neulig.errors import NeuligError
from neulig.merging.portland import Portland, consistency_loss, ensemble_features
from neulig.models.heads import head_logits


class PortlandModule(L.LightningModule):
    def __init__(self, train_sets: dict[str, tuple[Tensor, Tensor]], val_sets: dict[str, tuple[Tensor, Tensor]],
                 head_weights: dict[str, Tensor], feature_dim: int, alignment: str = "sup", scaling: float = 100.0,
                 regularizer: str = "reference", eps_star: Tensor | None = None, gram: Tensor | None = None,
                 lr: float = 1e-3, batch_size: int = 128, eval_every: int = 10, seed: int = 0):
        super().__init__()
        self.automatic_optimization = False
        self.names = list(train_sets)
        self.num_experts = next(iter(train_sets.values()))[0].shape[1]
        self.portland = Portland(self.num_experts, feature_dim)
        self.train_sets, self.val_sets, self.head_weights = train_sets, val_sets, head_weights
        self.alignment, self.scaling, self.regularizer = alignment, float(scaling), regularizer
        self.eps_star, self.gram = eps_star, gram
        if regularizer not in ("reference", "exact"):
            raise NeuligError(f"merge.regularizer must be 'reference' or 'exact', got {regularizer!r}")
        self.lr, self.batch_size, self.eval_every, self.seed = lr, batch_size, eval_every, seed
        self.best_val_acc, self.best_epoch, self.best_state = -1.0, -1, None
        self.history: list[dict] = []
        self.stage_name = "portland"

    # -- helpers ---------------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _batch_loss(self, name: str, index: Tensor, global_size: int) -> tuple[Tensor, Tensor]:
        features, labels = self.train_sets[name]
        z, y = features[index].to(self.device), labels[index].to(self.device)
        beta = self.portland(z)
        logits = head_logits(ensemble_features(beta, z), self.head_weights[name].to(self.device))
        if self.alignment == "sup":
            l_b = F.cross_entropy(logits, y, reduction="sum")
        else:
            p = torch.softmax(logits, dim=-1)
            l_b = -(p * torch.log(p + 1e-6)).sum()
        if self.regularizer == "exact":
            l_a = consistency_loss(beta, gram=self.gram) * len(index)
        else:
            l_a = consistency_loss(beta, eps_star=self.eps_star) * len(index)
        return (l_b + l_a / self.scaling) / global_size, l_b.detach() / global_size

    @torch.no_grad()
    def validation_accuracy(self) -> dict[str, float]:
        """Ensembled accuracy (%) of the current Portland on each dataset's cached val features."""
        accs = {}
        for name, (features, labels) in self.val_sets.items():
            z = features.to(self.device)
            beta = self.portland(z)
            pred = head_logits(ensemble_features(beta, z), self.head_weights[name].to(self.device)).argmax(-1)
            accs[name] = 100.0 * (pred.cpu() == labels).float().mean().item()
        return accs

    # -- Lightning hooks -------------------------------------------------------------------------
    def on_train_start(self) -> None:
        ddp = getattr(self.trainer.strategy, "model", None)
        if hasattr(ddp, "require_backward_grad_sync"):  # we all-reduce by hand, see module docstring
            ddp.require_backward_grad_sync = False
        self._record(epoch=0, train_loss=float("nan"))

    def training_step(self, epoch: Tensor, batch_idx: int) -> None:
        optimizer = self.optimizers()
        rank, world = self._world()
        epoch_id = int(self.current_epoch)
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch_id)
        orders = {n: torch.randperm(len(self.train_sets[n][1]), generator=generator) for n in self.names}
        rounds = min((len(o) + self.batch_size - 1) // self.batch_size for o in orders.values())
        total, steps = 0.0, 0
        for r in range(rounds):
            for name in self.names:
                batch = orders[name][r * self.batch_size : (r + 1) * self.batch_size]
                local = torch.tensor_split(batch, world)[rank]
                loss, l_b = self._batch_loss(name, local, len(batch))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if world > 1:
                    for p in self.portland.parameters():
                        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    dist.all_reduce(loss.detach_(), op=dist.ReduceOp.SUM)
                if not torch.isfinite(loss):
                    raise NeuligError(f"Portland loss is {loss.item()} at epoch {epoch_id + 1}, step {steps}; "
                                      "lower merge.lr or check the expert features")
                optimizer.step()
                total += loss.item()
                steps += 1
        epoch_done = epoch_id + 1
        if epoch_done % self.eval_every == 0 or epoch_done == self.trainer.max_epochs:
            self._record(epoch=epoch_done, train_loss=total / steps)

    def _record(self, epoch: int, train_loss: float) -> None:
        accs = self.validation_accuracy()
        avg = sum(accs.values()) / len(accs)
        self.history.append({"epoch": epoch, "train/loss": train_loss, "val/ensembled_avg": avg})
        if avg > self.best_val_acc:
            self.best_val_acc, self.best_epoch = avg, epoch
            self.best_state = copy.deepcopy(self.portland.state_dict())

    def on_train_end(self) -> None:
        if self.best_state is not None:
            self.portland.load_state_dict(self.best_state)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.arange(1), batch_size=None)

    def configure_optimizers(self):
        return torch.optim.Adam(self.portland.parameters(), lr=self.lr)
