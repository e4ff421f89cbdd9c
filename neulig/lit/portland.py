"""PortlandModule: trains only the Portland CoopVec generator on cached, frozen expert features.

Schedule as in the reference code (docs/neural_ligand.md §7): Adam (lr 1e-3), one optimiser step
per dataset in round-robin order, ``min_k ceil(n_k / batch)`` rounds per global epoch (larger
datasets are subsampled each epoch), ``global_epochs`` epochs, evaluation every ``eval_every``
epochs. Because the experts are frozen their features are computed once (``cached features``), so
one Lightning step runs one whole global epoch in memory. Model selection uses the *validation*
split's ensembled accuracy, never the test split.

Hot loop: each epoch gathers every dataset's batches once and moves them to the device in one copy; a
step slices them, computes the loss with ``merging.portland.loss_sums`` (heads and the L_a statistic
already on the device) and queues its loss on the device; finiteness and the epoch's mean loss are
read once per epoch, so a GPU step has no host sync.

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
from torch import Tensor

from neulig.errors import NeuligError
from neulig.merging.portland import Portland, ensemble_features, loss_sums, regularizer_statistic
from neulig.models.heads import head_logits


def _no_capture_check() -> None:
    """Stands in for ``Optimizer._accelerator_graph_capture_health_check`` on CPU (see on_train_start)."""


class PortlandModule(L.LightningModule):
    def __init__(self, train_sets: dict[str, tuple[Tensor, Tensor]], val_sets: dict[str, tuple[Tensor, Tensor]],
                 head_weights: dict[str, Tensor], feature_dim: int, loss: str = "sup", scaling: float = 100.0,
                 regularizer: str = "reference", eps_star: Tensor | None = None, gram: Tensor | None = None,
                 lr: float = 1e-3, batch_size: int = 128, eval_every: int = 10, seed: int = 0):
        super().__init__()
        self.automatic_optimization = False
        self.names = list(train_sets)
        self.num_experts = next(iter(train_sets.values()))[0].shape[1]
        self.portland = Portland(self.num_experts, feature_dim)
        self.train_sets, self.val_sets, self.head_weights = train_sets, val_sets, head_weights
        self.loss, self.scaling, self.regularizer = loss, float(scaling), regularizer
        self.eps_star, self.gram = eps_star, gram
        self.lr, self.batch_size, self.eval_every, self.seed = lr, batch_size, eval_every, seed
        self.best_val_acc, self.best_epoch, self.best_state = -1.0, -1, None
        self.history: list[dict] = []
        self.stage_name = "portland"

    # -- helpers ---------------------------------------------------------------------------------
    def _world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _prepare_device(self) -> None:
        """Everything a step reads that does not change during training, on the module's device once:
        the heads, the L_a statistic (eps*, or the normalised Gram matrix for ``exact``),
        and the validation features (evaluations re-read them every ``eval_every`` epochs)."""
        device = self.device
        self._heads = {n: w.to(device) for n, w in self.head_weights.items()}
        self._reg = regularizer_statistic(self.regularizer, self.eps_star, self.gram).to(device)
        self._val_on_device = {n: f.to(device) for n, (f, _) in self.val_sets.items()}

    def _batch_loss(self, name: str, z: Tensor, y: Tensor, global_size: int) -> tuple[Tensor, Tensor]:
        """Sum over the batch slice (z [b, T, d], y [b], both on the device) of L_b + L_a / scaling,
        divided by the global batch size (so a DDP gradient sum equals the single-process mean)."""
        l_b, l_a = loss_sums(self.portland(z), z, self._heads[name], y, self.loss, self.regularizer, self._reg)
        return (l_b + l_a / self.scaling) / global_size, l_b.detach() / global_size

    @torch.no_grad()
    def validation_accuracy(self) -> dict[str, float]:
        """Ensembled accuracy (%) of the current Portland on each dataset's cached val features."""
        accs = {}
        cached = getattr(self, "_val_on_device", {})
        for name, (features, labels) in self.val_sets.items():
            z = cached[name] if name in cached and cached[name].device == self.device else features.to(self.device)
            beta = self.portland(z)
            pred = head_logits(ensemble_features(beta, z), self.head_weights[name].to(self.device)).argmax(-1)
            accs[name] = 100.0 * (pred.cpu() == labels).float().mean().item()
        return accs

    # -- Lightning hooks -------------------------------------------------------------------------
    def on_train_start(self) -> None:
        ddp = getattr(self.trainer.strategy, "model", None)
        if hasattr(ddp, "require_backward_grad_sync"):  # we all-reduce by hand, see module docstring
            ddp.require_backward_grad_sync = False
        self._prepare_device()
        optimizer = self.optimizers().optimizer
        if self.device.type == "cpu" and hasattr(optimizer, "_accelerator_graph_capture_health_check"):
            # torch's Adam asks at every step whether a CUDA graph is being captured. Lightning sets
            # PYTORCH_NVML_BASED_CUDA_CHECK=1, so on a host without a GPU driver that question dlopens
            # libnvidia-ml at every step (~1 ms, more than the step itself). No graph can be captured
            # with CPU parameters: skip the question. The update itself is untouched.
            optimizer._accelerator_graph_capture_health_check = _no_capture_check
        self._record(epoch=0, train_loss=float("nan"))

    def training_step(self, epoch: Tensor, batch_idx: int) -> None:
        optimizer = self.optimizers()
        rank, world = self._world()
        epoch_id = int(self.current_epoch)
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch_id)
        orders = {n: torch.randperm(len(self.train_sets[n][1]), generator=generator) for n in self.names}
        rounds = min((len(o) + self.batch_size - 1) // self.batch_size for o in orders.values())
        # The epoch's batches of each dataset in one gather and one device copy (rather than two of
        # each per step); a step then takes contiguous slices. Same samples, same order.
        epoch_sets = {}
        for name in self.names:
            order = orders[name][: rounds * self.batch_size]
            features, labels = self.train_sets[name]
            epoch_sets[name] = (features[order].to(self.device), labels[order].to(self.device))
        losses = []  # kept on the device: no host sync per step (checked and summed once per epoch)
        for r in range(rounds):
            for name in self.names:
                features, labels = epoch_sets[name]
                start = r * self.batch_size
                size = min(self.batch_size, len(labels) - start)
                # this rank's part of the batch, as torch.tensor_split(batch, world)[rank] cuts it
                part, extra = divmod(size, world)
                lo = start + rank * part + min(rank, extra)
                hi = lo + part + (1 if rank < extra else 0)
                loss, _ = self._batch_loss(name, features[lo:hi], labels[lo:hi], size)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if world > 1:
                    for p in self.portland.parameters():
                        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    dist.all_reduce(loss.detach_(), op=dist.ReduceOp.SUM)
                optimizer.step()
                losses.append(loss.detach())
        losses = torch.stack(losses).float()
        if not bool(torch.isfinite(losses).all()):
            step = int((~torch.isfinite(losses)).nonzero()[0])
            raise NeuligError(f"Portland loss is {losses[step].item()} at epoch {epoch_id + 1}, step {step}; "
                              "lower merge.lr or check the expert features")
        epoch_done = epoch_id + 1
        if epoch_done % self.eval_every == 0 or epoch_done == self.trainer.max_epochs:
            self._record(epoch=epoch_done, train_loss=losses.double().sum().item() / len(losses))

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
