"""The one Portland trainer: C >= 1 combinations (of the same T and d) trained at once by Lightning,
each exactly as if it were trained alone; a single combination is the case C = 1.

Schedule (docs/neural_ligand.md §7, the reference code): torch's Adam (``merge.lr``, its defaults;
its fused kernel on CPU and CUDA), one optimiser step per dataset in round-robin order,
``min_k ceil(n_k / batch)`` rounds per global epoch (larger datasets are subsampled each epoch),
``global_epochs`` epochs, evaluation at epoch 0, every ``eval_every`` epochs and the last. Because
the experts are frozen their features are cached, so one Lightning step runs one whole global epoch
in memory (callbacks, the progress bar and the per-epoch MLflow curve see one step per epoch). Model
selection uses the *validation* split's ensembled accuracy at ``ensemble.level``, never the test
split: a combination's best state is the first evaluation with the strictly greatest mean over its
datasets.

What each combination keeps of its own: the seeded initialisation (:func:`~neulig.portland.model.initial_state`,
the same for every combination of one T and d), its batch order (per global epoch e, a generator seeded
``seed * 100003 + e`` draws one ``randperm`` per dataset, in the combination's order), its rounds, its
parameters and its ``torch.optim.Adam`` state (one Adam over every combination's own parameter
tensors: a tensor without a gradient is not stepped, and its moments and step count do not move).

How: combinations are sorted by their rounds per epoch (most first), so in round r those still training
are a prefix 0..A_r-1; a step stacks that prefix's parameters, computes each one's loss on its j-th
dataset's batch (``loss.loss_terms``, one batched matmul) and backpropagates their sum (independent
parameters: the gradient of the sum is each one's own). A short last batch is padded and its padding
rows weigh zero. The host reads the losses once per epoch (the NaN policy: a non-finite loss stops the
run, naming the combination, the epoch and the step) and the accuracies once per evaluation.

Data-parallel (``trainer.devices > 1``): every rank walks the same batches and counts its slice of each
(as ``torch.tensor_split(batch, world)[rank]`` cuts it); losses are sums over the slice divided by the
whole batch's size, and gradients are all-reduced (sum) by hand before each step, which equals the
single-process update up to float summation order. DDP's reducer is off: one Lightning step takes
many optimiser steps. ``trainer.precision``: the loss runs in the precision plugin's forward context
on inputs it converts, and a gradient scaler (``16-mixed``) scales the backward pass and the step.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Sequence

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from neulig.config.merge import PortlandMerge
from neulig.errors import NeuligError
from neulig.portland.features import ComboSources
from neulig.portland.loss import loss_terms, regularizer, step_loss
from neulig.portland.model import HeadGroup, batched_beta, batched_predictions, initial_state
from neulig.portland.statistics import OffsetStatistics


@dataclass(frozen=True)
class ComboInputs:
    """What one combination brings besides its features: its datasets (in order), the frozen head of
    each [K_j, d] and its experts' offset statistics."""

    names: tuple[str, ...]
    heads: tuple[Tensor, ...]
    stats: OffsetStatistics


@dataclass(frozen=True)
class PortlandFit:
    """One combination's result: the Portland state of the best validation epoch (CPU), that epoch, its
    mean validation ensembled accuracy (%) and the history (``{"epoch", "train/loss", "val/ensembled_avg"}``
    per evaluation)."""

    names: tuple[str, ...]
    state: dict[str, Tensor]
    best_epoch: int
    best_val_acc: float
    history: tuple[dict, ...]


def rounds_of(sizes: Sequence[int], batch_size: int) -> int:
    """Rounds per global epoch of a combination (docs/neural_ligand.md §7): min_k ceil(n_k / batch)."""
    return min(math.ceil(n / batch_size) for n in sizes)


def _no_capture_check() -> None:
    """Stands in for ``Optimizer._accelerator_graph_capture_health_check`` on CPU (see on_train_start)."""


class PortlandTraining(L.LightningModule):
    """The stacked Portlands of C combinations, their Adam and schedule; one Lightning step = one global epoch."""

    def __init__(self, combos: Sequence[ComboInputs], train: ComboSources, val: ComboSources, method: PortlandMerge,
                 seed: int, level: str, eval_bytes: int = 64 << 20):
        super().__init__()
        self.automatic_optimization = False
        self.stage_name = "portland"
        n, t, d = len(combos), train.num_experts, train.feature_dim
        if not (train.num_combinations == val.num_combinations == n) or any(len(c.names) != t for c in combos):
            raise ValueError(f"{n} combinations of {t} datasets expected in both sources")
        self.method, self.seed, self.level, self.t, self.eval_bytes = method, seed, level, t, eval_bytes
        b = method.batch_size
        rounds = [rounds_of([train.size(c, j) for j in range(t)], b) for c in range(n)]
        self.order = sorted(range(n), key=lambda c: -rounds[c])  # sorted position -> original index
        self.combos = [combos[c] for c in self.order]
        self.train_sources, self.val_sources = train.select(self.order), val.select(self.order)
        self.rounds = [rounds[c] for c in self.order]
        self.active = [sum(1 for x in self.rounds if x > r) for r in range(self.rounds[0])]  # A_r
        self.train_sizes = [[self.train_sources.size(c, j) for j in range(t)] for c in range(n)]
        self.kept_host = torch.tensor([[min(s, r * b) for s in sizes] for sizes, r in zip(self.train_sizes, self.rounds)])
        rule = regularizer(method.regularizer)
        self.statistic_host = torch.stack([rule.statistic(c.stats).float() for c in self.combos])
        init = initial_state(t, d, seed)
        self.weights = nn.ParameterList([nn.Parameter(init["linear.weight"].clone()) for _ in range(n)])
        self.biases = nn.ParameterList([nn.Parameter(init["linear.bias"].clone()) for _ in range(n)])
        self.best = [(init["linear.weight"].clone(), init["linear.bias"].clone()) for _ in range(n)]
        self.best_acc, self.best_epoch = [-1.0] * n, [-1] * n
        self.histories: list[list[dict]] = [[] for _ in range(n)]
        self.history: list[dict] = []  # the mean over the combinations: the curve callbacks log and show

    # -- set-up on the device ------------------------------------------------------------------------
    def on_train_start(self) -> None:
        ddp = getattr(self.trainer.strategy, "model", None)
        if hasattr(ddp, "require_backward_grad_sync"):  # gradients are all-reduced by hand (module docstring)
            ddp.require_backward_grad_sync = False
        device = self.device
        self.kept = self.kept_host.to(device)  # [C, T]: rows of each dataset used per epoch
        self.positions = torch.arange(self.method.batch_size, device=device)
        self.statistic = self.statistic_host.to(device)
        self.evaluation = Evaluation(self.combos, self.val_sources, device, self.level, self.eval_bytes)
        rank, self.world = self._world()
        self.batches = [[self._batch_weights(r, j, a, rank) for j in range(self.t)] for r, a in enumerate(self.active)]
        optimizer = self.optimizers().optimizer
        if device.type == "cpu" and hasattr(optimizer, "_accelerator_graph_capture_health_check"):
            # torch's Adam asks at every step whether a CUDA graph is being captured. Lightning sets
            # PYTORCH_NVML_BASED_CUDA_CHECK=1, so on a host without a GPU driver that question dlopens
            # libnvidia-ml at every step (~1 ms, more than the step itself). No graph can be captured
            # with CPU parameters: skip the question. The update itself is untouched.
            optimizer._accelerator_graph_capture_health_check = _no_capture_check
        self._record(0, None)

    def configure_optimizers(self):
        # torch's fused Adam (one kernel per step on CPU and CUDA): the same update as the per-tensor loop
        # up to float rounding, at half its per-step cost on the tiny Portland parameters
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.Adam([*self.weights, *self.biases], lr=self.method.lr, fused=fused or None)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.arange(1), batch_size=None)

    # -- one global epoch ----------------------------------------------------------------------------
    def _epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor]:
        """This epoch's rows [T, C, R*B] (int64, on the sources' device) and their labels (on the device):
        each combination's ``randperm`` per dataset from its own seeded generator."""
        n, t, b = len(self.combos), self.t, self.method.batch_size
        rows = torch.zeros(t, n, self.rounds[0] * b, dtype=torch.long)
        labels = torch.zeros(t, n, self.rounds[0] * b, dtype=torch.long)
        for c in range(n):
            generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            for j in range(t):
                order = torch.randperm(self.train_sizes[c][j], generator=generator)[: self.rounds[c] * b]
                rows[j, c, : len(order)] = order
                labels[j, c, : len(order)] = self.train_sources.labels(c, j).cpu()[order]
        return rows.to(self.train_sources.device), labels.to(self.device)

    def _world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _batch_weights(self, r: int, j: int, a: int, rank: int) -> tuple[Tensor, Tensor, list[HeadGroup]]:
        """What round r's step on dataset position j needs besides its rows, the same every epoch: the
        weight [A, B] of each row (1 for the rows this rank counts, 0 for padding and other ranks'), the
        batches' real row counts [A] and the head groups of the first A combinations."""
        b = self.method.batch_size
        total = (self.kept[:a, j] - r * b).clamp(min=0, max=b)  # real rows of this round's batches
        weight = (self.positions < total[:, None]).float()
        if self.world > 1:  # this rank's slice of each batch, as torch.tensor_split cuts it
            part, extra = total // self.world, total % self.world
            lo = rank * part + torch.clamp(extra, max=rank)
            hi = lo + part + (extra > rank).long()
            weight = weight * ((self.positions >= lo[:, None]) & (self.positions < hi[:, None])).float()
        return weight, total.float(), self.evaluation.groups(j, a)

    def _stacked(self, a: int) -> tuple[Tensor, Tensor]:
        """The first ``a`` combinations' parameters as [a, ...] tensors (a view when a = 1)."""
        if a == 1:
            return self.weights[0].unsqueeze(0), self.biases[0].unsqueeze(0)
        return torch.stack(list(self.weights[:a])), torch.stack(list(self.biases[:a]))

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        epoch, t, b = int(self.current_epoch), self.t, self.method.batch_size
        optimizer = self.optimizers().optimizer
        plugin = self.trainer.precision_plugin
        scaler = getattr(plugin, "scaler", None)
        rows, labels = self._epoch_plan(epoch)
        losses = torch.zeros(self.rounds[0] * t, len(self.combos), device=self.device)
        for r, a in enumerate(self.active):
            window = slice(r * b, (r + 1) * b)
            for j in range(t):
                weight, total, groups = self.batches[r][j]
                z = plugin.convert_input(self.train_sources.gather(j, rows[j, :a, window]).to(self.device))
                with plugin.forward_context():
                    w, c = self._stacked(a)
                    l_b, l_a = loss_terms(batched_beta(w, c, z), z, groups, labels[j, :a, window],
                                          self.method.loss, self.method.regularizer, self.statistic[:a])
                    loss = step_loss(l_b.float(), l_a.float(), weight, total, self.method.scaling)
                optimizer.zero_grad(set_to_none=True)
                (loss.sum() if scaler is None else scaler.scale(loss.sum())).backward()
                if self.world > 1:
                    for p in [*self.weights[:a], *self.biases[:a]]:
                        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    dist.all_reduce(loss.detach_(), op=dist.ReduceOp.SUM)
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                losses[r * t + j, :a] = loss.detach()
        self._check_finite(losses, epoch)
        done = epoch + 1
        if done % self.method.eval_every == 0 or done == self.trainer.max_epochs:
            self._record(done, losses)

    def _check_finite(self, losses: Tensor, epoch: int) -> None:
        """The NaN policy: the one host read of the epoch; a non-finite loss stops training."""
        bad = ~torch.isfinite(losses)
        if bool(bad.any()):
            c = min(range(len(self.combos)), key=lambda i: (not bool(bad[:, i].any()), self.order[i]))
            step = int(bad[:, c].nonzero()[0])
            which = f" of combination {','.join(self.combos[c].names)}" if len(self.combos) > 1 else ""
            raise NeuligError(f"Portland loss is {losses[step, c].item()} at epoch {epoch + 1}, step {step}{which}; "
                              "lower merge.lr or check the expert features")

    # -- validation and selection --------------------------------------------------------------------
    def _record(self, epoch: int, losses: Tensor | None) -> None:
        with torch.no_grad():
            accs = self.evaluation.accuracies(*self._stacked(len(self.combos)))
        mean_loss = [float("nan")] * len(self.combos) if losses is None else \
            (losses.double().sum(0).cpu() / torch.tensor([r * self.t for r in self.rounds])).tolist()
        for c, acc in enumerate(accs):
            avg = sum(acc) / len(acc)
            self.histories[c].append({"epoch": epoch, "train/loss": mean_loss[c], "val/ensembled_avg": avg})
            if avg > self.best_acc[c]:
                self.best_acc[c], self.best_epoch[c] = avg, epoch
                self.best[c] = (self.weights[c].detach().cpu().clone(), self.biases[c].detach().cpu().clone())
        points = [h[-1] for h in self.histories]
        self.history.append({"epoch": epoch, **{k: sum(p[k] for p in points) / len(points)
                                                for k in ("train/loss", "val/ensembled_avg")}})

    def results(self) -> list[PortlandFit]:
        """Each combination's fit, in the order the combinations were given."""
        fits: list[PortlandFit | None] = [None] * len(self.combos)
        for c, original in enumerate(self.order):
            weight, bias = self.best[c]
            fits[original] = PortlandFit(self.combos[c].names, {"linear.weight": weight, "linear.bias": bias},
                                         self.best_epoch[c], self.best_acc[c], tuple(self.histories[c]))
        return fits


def fit(combos: Sequence[ComboInputs], train: ComboSources, val: ComboSources, method: PortlandMerge, seed: int,
        level: str, trainer, callbacks: Sequence = ()) -> list[PortlandFit]:
    """Train every combination's Portland at once with a Lightning Trainer of the ``trainer`` group
    (``config.trainer.TrainerConfig``); results in the order of ``combos``."""
    from neulig.lit.trainer import trainer_kwargs

    module = PortlandTraining(combos, train, val, method, seed, level)
    kwargs = trainer_kwargs(trainer)
    kwargs.update(max_epochs=method.global_epochs, use_distributed_sampler=False, num_sanity_val_steps=0,
                  enable_progress_bar=False)
    L.Trainer(callbacks=list(callbacks), **kwargs).fit(module)
    return module.results()


class Evaluation:
    """Heads of C combinations grouped by class count (per dataset position), and their ensembled
    accuracy at ``level`` on one split's sources, batched over the combinations in chunks of rows."""

    def __init__(self, combos: Sequence[ComboInputs], sources: ComboSources, device: torch.device, level: str,
                 eval_bytes: int = 64 << 20):
        n, self.t, self.device, self.sources, self.level = len(combos), sources.num_experts, device, sources, level
        self.head_groups: list[list[tuple[Tensor, list[int], Tensor]]] = []
        for j in range(self.t):
            by_classes: dict[int, list[int]] = {}
            for i, c in enumerate(combos):
                by_classes.setdefault(c.heads[j].shape[0], []).append(i)
            self.head_groups.append([(torch.tensor(members, device=device), members,
                                      torch.stack([combos[i].heads[j].float() for i in members]).to(device))
                                     for members in by_classes.values()])
        self.sizes = [[sources.size(c, j) for j in range(self.t)] for c in range(n)]
        self.sizes_dev = torch.tensor(self.sizes, device=sources.device)
        self.labels = []
        for j in range(self.t):
            padded = torch.zeros(n, max(s[j] for s in self.sizes), dtype=torch.long)
            for c in range(n):
                padded[c, : self.sizes[c][j]] = sources.labels(c, j).cpu()
            self.labels.append(padded.to(device))
        self.rows = max(1, eval_bytes // (n * self.t * sources.feature_dim * 4))

    def groups(self, j: int, a: int) -> list[HeadGroup]:
        """The head groups of position j among the first ``a`` combinations (no host read)."""
        out = []
        for members, host, heads in self.head_groups[j]:
            n = bisect.bisect_left(host, a)
            if n:
                out.append((members[:n], heads[:n]))
        return out

    @torch.no_grad()
    def accuracies(self, weight: Tensor, bias: Tensor) -> list[list[float]]:
        """Ensembled accuracy (%) of Portlands ``weight`` [C, T, T*d], ``bias`` [C, T] on each dataset."""
        n = len(self.sizes)
        weight, bias = weight.float(), bias.float()
        correct = torch.zeros(self.t, n, dtype=torch.long, device=self.device)
        for j in range(self.t):
            sizes, longest = self.sizes_dev[:, j, None], max(s[j] for s in self.sizes)
            for start in range(0, longest, self.rows):
                pos = torch.arange(start, min(start + self.rows, longest), device=self.sources.device)
                valid = pos < sizes  # [C, m]: rows past a dataset's end read its row 0 and do not count
                z = self.sources.gather(j, torch.where(valid, pos, 0)).to(self.device)
                pred = batched_predictions(weight, bias, z, self.groups(j, n), self.level)
                hit = (pred == self.labels[j][:, start : start + len(pos)]) & valid.to(self.device)
                correct[j] += hit.sum(-1)
        counts = correct.cpu().numpy()  # the one host read
        # 100 * the float32 mean of the hits (= float32(count) / float32(n))
        return [[100.0 * float(np.float32(counts[j, c]) / np.float32(self.sizes[c][j])) for j in range(self.t)]
                for c in range(n)]


def ensembled_accuracy(combos: Sequence[ComboInputs], states: Sequence[dict[str, Tensor]], sources: ComboSources,
                       level: str, device: torch.device | str = "cpu") -> list[dict[str, float]]:
    """Ensembled accuracy (%) at ``level`` of each combination's Portland ``states[c]`` on each of its
    datasets in ``sources`` (any split), all combinations at once (docs/neural_ligand.md §4, §9)."""
    device = torch.device(device)
    weight = torch.stack([s["linear.weight"] for s in states]).float().to(device)
    bias = torch.stack([s["linear.bias"] for s in states]).float().to(device)
    accs = Evaluation(combos, sources, device, level).accuracies(weight, bias)
    return [dict(zip(c.names, a)) for c, a in zip(combos, accs)]
