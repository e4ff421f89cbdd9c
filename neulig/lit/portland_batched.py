"""Portland for many combinations at once: the paper's study (arXiv 2503.01268: every k-combination
of the datasets) trains all combinations of the same k as one batched model.

Every combination keeps what ``PortlandModule`` gives it alone (docs/neural_ligand.md §7): the seeded
initialisation (``L.seed_everything(seed)`` then ``Portland(T, d)``, hence the same for every
combination of one T and d), its seeded batch order (per global epoch e a generator seeded
``seed * 100003 + e`` draws one ``randperm`` per dataset, in the combination's order), its
``min_k ceil(n_k / batch)`` rounds per epoch, its round-robin Adam steps (one per dataset per round),
its own Adam moments and step count, its validation schedule (epoch 0, every ``eval_every`` epochs and
the last) and its best state (strictly greater mean validation ensembled accuracy, §9). Its best state,
best epoch and history equal training it alone with ``PortlandModule`` up to float summation order.

How: combinations are sorted by their rounds per epoch (most first), so in round r the combinations
still training are a prefix 0..A_r-1 of the stack; a step computes the loss of that prefix's batches
(each combination's j-th dataset), sums the per-combination losses (independent parameters: the
gradient of the sum is each one's own gradient) and applies Adam to the prefix only. A combination
past its last round takes no step and its moments and count do not move. A short last batch is padded
and its padding rows weigh zero. Per-step work stays on the device; the host reads the losses once
per epoch (finiteness, as ``PortlandModule``) and the accuracies once per evaluation.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from neulig.data.feature_store import ComboSources
from neulig.errors import NeuligError
from neulig.merging.portland import Portland, regularizer_statistic
from neulig.merging.portland_batched import (
    HeadGroup,
    adam_scalars,
    adam_step,
    batched_beta,
    batched_loss,
    batched_predictions,
    rounds_of,
)


@dataclass(frozen=True)
class PortlandOptions:
    """Portland's training options (``conf/merge/portland.yaml``; docs/neural_ligand.md §6, §7)."""

    loss: str = "sup"
    regularizer: str = "reference"
    scaling: float = 100.0
    lr: float = 1e-3
    batch_size: int = 128
    global_epochs: int = 200
    eval_every: int = 10
    seed: int = 0

    @classmethod
    def of(cls, method, seed: int) -> PortlandOptions:
        """The options of a ``config.merge.PortlandMerge`` and the run's seed."""
        return cls(method.loss, method.regularizer, float(method.scaling), float(method.lr), int(method.batch_size),
                   int(method.global_epochs), int(method.eval_every), int(seed))


@dataclass(frozen=True)
class ComboInputs:
    """What one combination brings besides its features: its datasets (in order), the frozen head of
    each [K_j, d] and its experts' offset statistics (``merging.portland.offset_statistics``)."""

    names: tuple[str, ...]
    heads: tuple[Tensor, ...]
    eps_star: Tensor
    gram: Tensor


@dataclass(frozen=True)
class PortlandFit:
    """One combination's result, as ``PortlandModule`` leaves it: the Portland state of the best
    validation epoch (CPU), that epoch, its mean validation ensembled accuracy (%) and the history
    (``{"epoch", "train/loss", "val/ensembled_avg"}`` per evaluation)."""

    names: tuple[str, ...]
    state: dict[str, Tensor]
    best_epoch: int
    best_val_acc: float
    history: tuple[dict, ...]


def initial_state(num_experts: int, feature_dim: int, seed: int) -> dict[str, Tensor]:
    """Portland's initialisation after ``L.seed_everything(seed)`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # the CPU part of torch.manual_seed (CUDA's untouched)
        return Portland(num_experts, feature_dim).state_dict()


def fit_combinations(combos: Sequence[ComboInputs], train: ComboSources, val: ComboSources, options: PortlandOptions,
                     device: torch.device | str = "cpu", init: dict[str, Tensor] | None = None,
                     timings: dict | None = None, eval_bytes: int = 64 << 20) -> list[PortlandFit]:
    """Train the Portland of every combination (same T and d) at once; results in the order of ``combos``.

    ``train`` / ``val``: their features (combination c of the sources is ``combos[c]``); ``init``: the
    initial state (default: :func:`initial_state` of ``options.seed``); ``timings``, if given, receives
    ``setup_s`` and per-epoch ``epoch_s`` / per-evaluation ``eval_s`` lists; ``eval_bytes`` bounds the
    float32 features of one validation chunk."""
    start = time.perf_counter()
    trainer = _Batched(combos, train, val, options, torch.device(device), init, eval_bytes)
    clock: dict = {"setup_s": time.perf_counter() - start, "epoch_s": [], "eval_s": []}
    trainer.record(0, None, clock)
    for epoch in range(options.global_epochs):
        tick = time.perf_counter()
        losses = trainer.train_epoch(epoch)
        clock["epoch_s"].append(time.perf_counter() - tick)
        done = epoch + 1
        if done % options.eval_every == 0 or done == options.global_epochs:
            trainer.record(done, losses, clock)
    if timings is not None:
        timings.update(clock)
    return trainer.results()


class _Batched:
    """The stacked parameters, Adam moments and schedule of C combinations, sorted by rounds (most first)."""

    def __init__(self, combos: Sequence[ComboInputs], train: ComboSources, val: ComboSources, options: PortlandOptions,
                 device: torch.device, init: dict[str, Tensor] | None, eval_bytes: int):
        n, t, d = len(combos), train.num_experts, train.feature_dim
        if not (train.num_combinations == val.num_combinations == n) or any(len(c.names) != t for c in combos):
            raise ValueError(f"{n} combinations of {t} datasets expected in both sources")
        self.options, self.device, self.t, self.d, b = options, device, t, d, options.batch_size
        rounds = [rounds_of([train.size(c, j) for j in range(t)], b) for c in range(n)]
        self.order = sorted(range(n), key=lambda c: -rounds[c])  # sorted position -> original index
        self.combos = [combos[c] for c in self.order]
        self.train, self.val = train.select(self.order), val.select(self.order)
        self.rounds = [rounds[c] for c in self.order]
        self.active = [sum(1 for x in self.rounds if x > r) for r in range(self.rounds[0])]  # A_r
        self.train_sizes = [[self.train.size(c, j) for j in range(t)] for c in range(n)]
        kept = torch.tensor([[min(s, r * b) for s in sizes] for sizes, r in zip(self.train_sizes, self.rounds)])
        self.kept = kept.to(device)  # [C, T]: rows of each dataset used per epoch (rounds * batch, or fewer)
        self.positions = torch.arange(b, device=device)
        self.evaluation = _Evaluation(self.combos, self.val, device, eval_bytes)
        self.statistic = torch.stack([regularizer_statistic(options.regularizer, c.eps_star, c.gram).float()
                                      for c in self.combos]).to(device)
        init = init or initial_state(t, d, options.seed)
        self.params = [init["linear.weight"].to(device).expand(n, -1, -1).clone(),
                       init["linear.bias"].to(device).expand(n, -1).clone()]
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        self.best = [p.clone() for p in self.params]
        self.best_acc, self.best_epoch = [-1.0] * n, [-1] * n
        self.history: list[list[dict]] = [[] for _ in range(n)]
        self.neg_step, self.bc2_sqrt = adam_scalars(options.global_epochs * self.rounds[0] * t, options.lr)

    # -- one global epoch ----------------------------------------------------------------------------
    def _epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """This epoch's rows [T, C, R*B] (on the sources' device), their labels (on the device) and Adam
        scalars [R, T, C]: each combination's ``randperm`` per dataset from its seeded generator."""
        n, t, b, r_max = len(self.combos), self.t, self.options.batch_size, self.rounds[0]
        rows = torch.zeros(t, n, r_max * b, dtype=torch.int32)
        labels = torch.zeros(t, n, r_max * b, dtype=torch.int32)
        neg_step = np.zeros((r_max, t, n), dtype=np.float32)
        bc2_sqrt = np.ones((r_max, t, n), dtype=np.float32)
        for c in range(n):
            generator = torch.Generator().manual_seed(self.options.seed * 100003 + epoch)
            keep = self.rounds[c] * b
            for j in range(t):
                order = torch.randperm(self.train_sizes[c][j], generator=generator)[:keep]
                rows[j, c, : len(order)] = order.int()
                labels[j, c, : len(order)] = self.train.labels(c, j).cpu()[order].int()
            steps = epoch * self.rounds[c] * t + np.arange(self.rounds[c] * t).reshape(self.rounds[c], t) + 1
            neg_step[: self.rounds[c], :, c] = self.neg_step[steps]
            bc2_sqrt[: self.rounds[c], :, c] = self.bc2_sqrt[steps]
        return (_to(rows, self.train.device), _to(labels, self.device), _to(torch.from_numpy(neg_step), self.device),
                _to(torch.from_numpy(bc2_sqrt), self.device))

    def train_epoch(self, epoch: int) -> Tensor:
        """One global epoch of every combination; returns the step losses [R*T, C] (0 where none)."""
        opt, t, b = self.options, self.t, self.options.batch_size
        rows, labels, neg_step, bc2_sqrt = self._epoch_plan(epoch)
        losses = torch.zeros(self.rounds[0] * t, len(self.combos), device=self.device)
        weight, bias = self.params
        for r, a in enumerate(self.active):
            window = slice(r * b, (r + 1) * b)
            mask = (self.positions + r * b < self.kept[:a, :, None]).float()  # [A, T, B]
            length = (self.kept[:a] - r * b).clamp(max=b).float()  # [A, T]
            for j in range(t):
                z = self.train.gather(j, rows[j, :a, window].long()).to(self.device)
                w, c = weight[:a].detach().requires_grad_(), bias[:a].detach().requires_grad_()
                loss = batched_loss(batched_beta(w, c, z), z, self.evaluation.groups(j, a), labels[j, :a, window].long(),
                                    mask[:, j], length[:, j], opt.loss, opt.regularizer, self.statistic[:a], opt.scaling)
                grads = torch.autograd.grad(loss.sum(), (w, c))
                adam_step([p[:a] for p in self.params], grads, [m[:a] for m in self.exp_avgs],
                          [v[:a] for v in self.exp_avg_sqs], neg_step[r, j, :a], bc2_sqrt[r, j, :a])
                losses[r * t + j, :a] = loss.detach()
        bad = ~torch.isfinite(losses)
        if bool(bad.any()):  # the one host read of the epoch, as PortlandModule's
            c = min(range(len(self.combos)), key=lambda i: (not bool(bad[:, i].any()), self.order[i]))
            step = int(bad[:, c].nonzero()[0])
            raise NeuligError(f"Portland loss is {losses[step, c].item()} at epoch {epoch + 1}, step {step} of "
                              f"combination {','.join(self.combos[c].names)}; lower merge.lr or check the expert "
                              "features")
        return losses

    # -- validation and selection -----------------------------------------------------------------
    def record(self, epoch: int, losses: Tensor | None, clock: dict) -> None:
        tick = time.perf_counter()
        accs = self.evaluation.accuracies(*self.params)
        mean_loss = [float("nan")] * len(self.combos) if losses is None else \
            (losses.double().sum(0).cpu() / torch.tensor([r * self.t for r in self.rounds])).tolist()
        for c, acc in enumerate(accs):
            avg = sum(acc) / len(acc)
            self.history[c].append({"epoch": epoch, "train/loss": mean_loss[c], "val/ensembled_avg": avg})
            if avg > self.best_acc[c]:
                self.best_acc[c], self.best_epoch[c] = avg, epoch
                for best, p in zip(self.best, self.params):
                    best[c].copy_(p[c])
        clock["eval_s"].append(time.perf_counter() - tick)

    def results(self) -> list[PortlandFit]:
        fits: list[PortlandFit | None] = [None] * len(self.combos)
        for c, original in enumerate(self.order):
            state = {"linear.weight": self.best[0][c].cpu().clone(), "linear.bias": self.best[1][c].cpu().clone()}
            fits[original] = PortlandFit(self.combos[c].names, state, self.best_epoch[c], self.best_acc[c],
                                         tuple(self.history[c]))
        return fits


class _Evaluation:
    """Heads of C combinations grouped by class count (per dataset position), and their ensembled
    accuracy on one split's sources, batched over the combinations in chunks of rows."""

    def __init__(self, combos: Sequence[ComboInputs], sources: ComboSources, device: torch.device, eval_bytes: int):
        n, self.t, self.device, self.sources = len(combos), sources.num_experts, device, sources
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
        correct = torch.zeros(self.t, n, dtype=torch.long, device=self.device)
        for j in range(self.t):
            sizes, longest = self.sizes_dev[:, j, None], max(s[j] for s in self.sizes)
            for start in range(0, longest, self.rows):
                pos = torch.arange(start, min(start + self.rows, longest), device=self.sources.device)
                valid = pos < sizes  # [C, m]: rows past a dataset's end read its row 0 and do not count
                z = self.sources.gather(j, torch.where(valid, pos, 0)).to(self.device)
                pred = batched_predictions(weight, bias, z, self.groups(j, n))
                hit = (pred == self.labels[j][:, start : start + len(pos)]) & valid.to(self.device)
                correct[j] += hit.sum(-1)
        counts = correct.cpu().numpy()  # the one host read
        # as PortlandModule: 100 * float32 mean of the hits (= float32(count) / float32(n))
        return [[100.0 * float(np.float32(counts[j, c]) / np.float32(self.sizes[c][j])) for j in range(self.t)]
                for c in range(n)]


def ensembled_accuracy(combos: Sequence[ComboInputs], states: Sequence[dict[str, Tensor]], sources: ComboSources,
                       device: torch.device | str = "cpu", eval_bytes: int = 64 << 20) -> list[dict[str, float]]:
    """Ensembled accuracy (%) of each combination's Portland ``states[c]`` on each of its datasets in
    ``sources`` (any split, e.g. the test features), all combinations at once: ``PortlandModule
    .validation_accuracy`` of each (docs/neural_ligand.md §4, §9)."""
    device = torch.device(device)
    weight = torch.stack([s["linear.weight"] for s in states]).float().to(device)
    bias = torch.stack([s["linear.bias"] for s in states]).float().to(device)
    accs = _Evaluation(combos, sources, device, eval_bytes).accuracies(weight, bias)
    return [dict(zip(c.names, a)) for c, a in zip(combos, accs)]


def _to(tensor: Tensor, device: torch.device) -> Tensor:
    """A host tensor on ``device``; to a GPU through pinned memory without waiting for it (no host sync)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
