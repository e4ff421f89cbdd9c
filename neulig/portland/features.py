"""Expert features held once, and what the Portland trainer reads of them.

Neural Ligand (arXiv 2503.01268) trains Portland on the frozen experts' features of each input,
z(x) = [z_1(x); ...; z_T(x)] (docs/neural_ligand.md §2, §7), which neulig computes once per
(expert, dataset) and caches. Combination c of T datasets reads, on its j-th dataset, the [B, T, d]
features of the rows it draws. Two sources give them:

- :class:`StackedSources`: per combination and dataset a stacked [N, T, d] tensor (one copy per
  combination; tests and benchmarks);
- :class:`StoreSources`: an index into one :class:`FeatureStore`, which holds each expert's features
  on each dataset once (float16 or float32; computation is float32), so that the 120 combinations of
  the paper's study share one copy of the features instead of stacking 120.

Both implement :class:`ComboSources`; the trainer asks for the combinations 0..A-1 of a batch at once.
"""
from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import torch
from torch import Tensor


class ComboSources(Protocol):
    """One split's features of C combinations of the same T (experts = datasets) and d.

    ``size(c, j)`` and ``labels(c, j)`` describe combination c's j-th dataset (j < T, in the
    combination's order); ``gather(j, rows)`` returns, for the first A combinations, the features of
    the rows ``rows`` [A, B] (int64, on ``device``) of their j-th dataset: [A, B, T, d] float32 on
    ``device``. ``select(order)`` is the same sources with combination i being ``order[i]``."""

    @property
    def num_combinations(self) -> int: ...

    @property
    def num_experts(self) -> int: ...

    @property
    def feature_dim(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def size(self, c: int, j: int) -> int: ...

    def labels(self, c: int, j: int) -> Tensor: ...

    def gather(self, j: int, rows: Tensor) -> Tensor: ...

    def select(self, order: Sequence[int]) -> ComboSources: ...


class StackedSources:
    """Sources from stacked tensors: ``sets[c][j] = (features [N, T, d], labels [N])``."""

    def __init__(self, sets: Sequence[Sequence[tuple[Tensor, Tensor]]]):
        self.sets = [list(s) for s in sets]
        first = self.sets[0][0][0]
        self._t, self._d, self._device = first.shape[1], first.shape[2], first.device

    @property
    def num_combinations(self) -> int:
        return len(self.sets)

    @property
    def num_experts(self) -> int:
        return self._t

    @property
    def feature_dim(self) -> int:
        return self._d

    @property
    def device(self) -> torch.device:
        return self._device

    def size(self, c: int, j: int) -> int:
        return len(self.sets[c][j][1])

    def labels(self, c: int, j: int) -> Tensor:
        return self.sets[c][j][1]

    def gather(self, j: int, rows: Tensor) -> Tensor:
        return torch.stack([self.sets[a][j][0][rows[a]] for a in range(rows.shape[0])]).float()

    def select(self, order: Sequence[int]) -> StackedSources:
        return StackedSources([self.sets[i] for i in order])


class FeatureStore:
    """One split's features of E experts on D datasets, each held once: ``bank`` [E, R, d] with the
    datasets' rows end to end (dataset ``name`` at rows ``offsets[name]`` ..), in ``dtype``.

    Fill it with :meth:`put` (one (expert, dataset) at a time, so a caller loading cache files never
    holds a second copy), then :meth:`sources` indexes it for a list of combinations."""

    def __init__(self, experts: Sequence[str], sizes: Mapping[str, int], dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.experts = tuple(experts)
        self.sizes = {name: int(n) for name, n in sizes.items()}
        self.offsets, start = {}, 0
        for name, n in self.sizes.items():
            self.offsets[name], start = start, start + n
        self.bank = torch.empty(len(self.experts), start, dim, dtype=dtype, device=device)
        self.label_sets: dict[str, Tensor] = {}
        self._written: dict[tuple[str, str], int] = {}

    @property
    def nbytes(self) -> int:
        return self.bank.numel() * self.bank.element_size()

    def rows(self, expert: str, dataset: str) -> Tensor:
        """The [n, d] view of ``expert``'s features on ``dataset``."""
        start = self.offsets[dataset]
        return self.bank[self.experts.index(expert), start : start + self.sizes[dataset]]

    def put(self, expert: str, dataset: str, features: Tensor, labels: Tensor | None = None, start: int = 0) -> None:
        """Copy ``expert``'s features [n, d] on ``dataset`` into the bank at the dataset's rows ``start``..
        (a large block may come in parts), and the dataset's labels [all rows] if given."""
        target = self.rows(expert, dataset)[start : start + len(features)]
        if start < 0 or tuple(features.shape) != tuple(target.shape):
            raise ValueError(f"features of {expert} on {dataset} at row {start}: expected at most "
                             f"{self.sizes[dataset] - start} rows of {self.bank.shape[-1]}, got {tuple(features.shape)}")
        target.copy_(features)
        if labels is not None:
            self.put_labels(dataset, labels)
        self._written[(expert, dataset)] = self._written.get((expert, dataset), 0) + len(features)

    def put_labels(self, dataset: str, labels: Tensor) -> None:
        """The labels of all of ``dataset``'s rows (one per row: refused otherwise)."""
        if len(labels) != self.sizes[dataset]:
            raise ValueError(f"labels of {dataset}: expected {self.sizes[dataset]}, got {len(labels)}")
        self.label_sets[dataset] = labels.long().cpu()

    def filled(self, expert: str, dataset: str) -> bool:
        """Whether every row of ``expert`` on ``dataset`` was written (once each, by :meth:`put`)."""
        return self._written.get((expert, dataset), 0) == self.sizes[dataset]

    def sources(self, groups: Sequence[Sequence[str]], experts: Sequence[Sequence[str]]) -> StoreSources:
        """Sources of combinations ``groups[c]`` (datasets) whose experts are ``experts[c]``."""
        return StoreSources(self, groups, experts)


class StoreSources:
    """Sources that index a :class:`FeatureStore`: combination c reads experts ``experts[c]`` on its
    datasets ``groups[c]``; a batch is one ``index_select`` of the bank."""

    def __init__(self, store: FeatureStore, groups: Sequence[Sequence[str]], experts: Sequence[Sequence[str]]):
        self.store, self.groups, self.experts = store, [tuple(g) for g in groups], [tuple(e) for e in experts]
        needed = {(e, d) for g, es in zip(self.groups, self.experts) for e in es for d in g}
        missing = sorted(pair for pair in needed if not store.filled(*pair))
        missing += sorted({("labels", d) for g in self.groups for d in g if d not in store.label_sets})
        if missing:
            raise ValueError(f"the feature store lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        device = store.bank.device
        rows_per_expert = store.bank.shape[1]
        self._base = torch.tensor([[store.experts.index(e) * rows_per_expert for e in es] for es in self.experts],
                                  dtype=torch.long, device=device)  # [C, T]: first bank row of each expert
        self._offsets = torch.tensor([[store.offsets[d] for d in g] for g in self.groups], dtype=torch.long,
                                     device=device)  # [C, T]: first row of each dataset

    @property
    def num_combinations(self) -> int:
        return len(self.groups)

    @property
    def num_experts(self) -> int:
        return len(self.experts[0])

    @property
    def feature_dim(self) -> int:
        return self.store.bank.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.store.bank.device

    def size(self, c: int, j: int) -> int:
        return self.store.sizes[self.groups[c][j]]

    def labels(self, c: int, j: int) -> Tensor:
        return self.store.label_sets[self.groups[c][j]]

    def gather(self, j: int, rows: Tensor) -> Tensor:
        a, b = rows.shape
        flat = self._base[:a, None, :] + (self._offsets[:a, j, None] + rows).unsqueeze(-1)  # [A, B, T]
        bank = self.store.bank.view(-1, self.store.bank.shape[-1])
        return bank.index_select(0, flat.flatten()).view(a, b, -1, bank.shape[-1]).float()

    def select(self, order: Sequence[int]) -> StoreSources:
        return StoreSources(self.store, [self.groups[i] for i in order], [self.experts[i] for i in order])
