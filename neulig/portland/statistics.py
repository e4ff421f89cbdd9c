"""The experts' offset statistics Portland's regulariser reads (arXiv 2503.01268, docs/neural_ligand.md
§6), computed once per run for every combination, streaming over the parameters.

For a combination S of T experts, eps_t = theta_t - mean_{u in S} theta_u (flattened over the state
dict's entries, sorted by key: ``all`` of them, buffers cast to float, as the reference, or only the
floating ``params``); s_t = sum_p eps_t,p; eps*_t = (s_t - mean s) / std(s, unbiased); G_uv = <eps_u, eps_v>.

Both follow from two moments of the run's E experts about their common mean c (float64, accumulated
chunk by chunk so nothing larger than [E, chunk] is held besides the experts): r_e = sum_p (theta_e - c)_p
and K_ef = <theta_e - c, theta_f - c>. Centring on S: s = r_S - mean r_S and G = H K_SS H with
H = I - 11^T / T, exactly (the common shift c cancels), so every combination's statistics come from
one pass over the weights.

With the experts' diagonal Fishers F_e (``fisher_variance``), the same pass also accumulates
W_t,ef = sum_p F_t,p (theta_e - c)_p (theta_f - c)_p for every expert t, so that a combination's Gram
matrix in the metric of its mean Fisher, G^F = H (mean_{t in S} W_t,SS) H, is exact as well
(docs/neural_ligand.md §13). An entry a Fisher does not cover (buffers) weighs zero there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

CHUNK = 1 << 20  # coordinates per step: [E, CHUNK] float64 is the only buffer besides the experts


@dataclass(frozen=True)
class OffsetStatistics:
    """One combination's statistics (float64): eps* [T], the offsets' Gram matrix [T, T] and, when the
    experts' Fishers were given, their Gram matrix in the metric of the combination's mean diagonal
    Fisher, G^F_uv = sum_p Fbar_p eps_u,p eps_v,p [T, T]."""

    eps_star: Tensor
    gram: Tensor
    fisher_gram: Tensor | None = None

    def require_fisher_gram(self) -> Tensor:
        if self.fisher_gram is None:
            raise ValueError("this regulariser reads the experts' Fishers, but the offset statistics were "
                             "computed without them: pass fishers= to offset_moments")
        return self.fisher_gram


@dataclass(frozen=True)
class OffsetMoments:
    """The run's experts ``names`` [E]: their coordinate sums and inner products about their mean."""

    names: tuple[str, ...]
    sums: Tensor  # [E] float64
    inner: Tensor  # [E, E] float64
    fisher_inner: Tensor | None = None  # [E, E, E] float64: W_t,ef in the metric of expert t's Fisher

    def of(self, experts: Sequence[str]) -> OffsetStatistics:
        """The statistics of the combination whose experts are ``experts`` (in its order)."""
        index = torch.tensor([self.names.index(e) for e in experts])
        t = len(index)
        centre = torch.eye(t, dtype=torch.float64) - 1.0 / t
        s = self.sums[index]
        eps_star = (s - s.mean()) / s.std(unbiased=True).clamp_min(1e-30)
        fisher_gram = None
        if self.fisher_inner is not None:
            fisher_gram = centre @ self.fisher_inner[index].mean(0)[index][:, index] @ centre
        return OffsetStatistics(eps_star, centre @ self.inner[index][:, index] @ centre, fisher_gram)


def entry_keys(state: Mapping[str, Tensor], over: str) -> list[str]:
    """The entries the offsets run over: ``all`` (sorted keys) or the floating ``params`` only."""
    if over not in ("all", "params"):
        raise ValueError(f"offsets_over must be 'all' or 'params', got {over!r}")
    keys = sorted(state)
    return [k for k in keys if state[k].is_floating_point()] if over == "params" else keys


@torch.no_grad()
def offset_moments(experts: Mapping[str, Mapping[str, Tensor]], over: str, chunk: int = CHUNK,
                   fishers: Mapping[str, Mapping[str, Tensor]] | None = None) -> OffsetMoments:
    """:class:`OffsetMoments` of the named experts' state dicts, one [E, chunk] float64 slice at a time;
    with ``fishers`` (each expert's diagonal Fisher, by name) also the Fisher-weighted inner products."""
    names = tuple(experts)
    states = [experts[n] for n in names]
    e = len(names)
    sums = torch.zeros(e, dtype=torch.float64)
    inner = torch.zeros(e, e, dtype=torch.float64)
    fisher_inner = None if fishers is None else torch.zeros(e, e, e, dtype=torch.float64)
    for key in entry_keys(states[0], over):
        flats = [s[key].detach().reshape(-1) for s in states]
        weights = None if fishers is None else [fisher_entry(fishers[n], key, s[key]) for n, s in zip(names, states)]
        for start in range(0, flats[0].numel(), chunk):
            x = torch.stack([f[start : start + chunk] for f in flats]).to("cpu", torch.float64)
            x -= x.mean(0)
            sums += x.sum(1)
            inner.addmm_(x, x.t())
            for t, w in enumerate(weights or ()):
                if w is not None:
                    fisher_inner[t] += (x * w[start : start + chunk].to("cpu", torch.float64)) @ x.t()
    return OffsetMoments(names, sums, inner, fisher_inner)


def fisher_entry(fisher: Mapping[str, Tensor], key: str, entry: Tensor) -> Tensor | None:
    """A Fisher's flattened diagonal for the state-dict entry ``key`` (None where it has none: weight 0)."""
    if key not in fisher:
        return None
    if fisher[key].shape != entry.shape:
        raise ValueError(f"the Fisher of {key} has shape {tuple(fisher[key].shape)}, its weight {tuple(entry.shape)}")
    return fisher[key].detach().reshape(-1)


def offset_statistics(experts: Sequence[Mapping[str, Tensor]], over: str = "all",
                      fishers: Sequence[Mapping[str, Tensor]] | None = None) -> OffsetStatistics:
    """The statistics of one combination of expert state dicts (in its order), with their Fishers if given."""
    names = tuple(str(i) for i in range(len(experts)))
    by_name = None if fishers is None else dict(zip(names, fishers))
    return offset_moments(dict(zip(names, experts)), over, fishers=by_name).of(names)
