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
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

CHUNK = 1 << 20  # coordinates per step: [E, CHUNK] float64 is the only buffer besides the experts


@dataclass(frozen=True)
class OffsetStatistics:
    """One combination's statistics (float64): eps* [T] and the offsets' Gram matrix [T, T]."""

    eps_star: Tensor
    gram: Tensor


@dataclass(frozen=True)
class OffsetMoments:
    """The run's experts ``names`` [E]: their coordinate sums and inner products about their mean."""

    names: tuple[str, ...]
    sums: Tensor  # [E] float64
    inner: Tensor  # [E, E] float64

    def of(self, experts: Sequence[str]) -> OffsetStatistics:
        """The statistics of the combination whose experts are ``experts`` (in its order)."""
        index = torch.tensor([self.names.index(e) for e in experts])
        t = len(index)
        centre = torch.eye(t, dtype=torch.float64) - 1.0 / t
        sums = self.sums[index]
        s = sums - sums.mean()
        eps_star = (s - s.mean()) / s.std(unbiased=True).clamp_min(1e-30)
        return OffsetStatistics(eps_star, centre @ self.inner[index][:, index] @ centre)


def entry_keys(state: Mapping[str, Tensor], over: str) -> list[str]:
    """The entries the offsets run over: ``all`` (sorted keys) or the floating ``params`` only."""
    if over not in ("all", "params"):
        raise ValueError(f"offsets_over must be 'all' or 'params', got {over!r}")
    keys = sorted(state)
    return [k for k in keys if state[k].is_floating_point()] if over == "params" else keys


@torch.no_grad()
def offset_moments(experts: Mapping[str, Mapping[str, Tensor]], over: str, chunk: int = CHUNK) -> OffsetMoments:
    """:class:`OffsetMoments` of the named experts' state dicts, one [E, chunk] float64 slice at a time."""
    names = tuple(experts)
    states = [experts[n] for n in names]
    sums = torch.zeros(len(names), dtype=torch.float64)
    inner = torch.zeros(len(names), len(names), dtype=torch.float64)
    for key in entry_keys(states[0], over):
        flats = [s[key].detach().reshape(-1) for s in states]
        for start in range(0, flats[0].numel(), chunk):
            x = torch.stack([f[start : start + chunk].to("cpu", torch.float64) for f in flats])
            x -= x.mean(0)
            sums += x.sum(1)
            inner += x @ x.t()
    return OffsetMoments(names, sums, inner)


def offset_statistics(experts: Sequence[Mapping[str, Tensor]], over: str = "all") -> OffsetStatistics:
    """The statistics of one combination of expert state dicts (in its order)."""
    names = tuple(str(i) for i in range(len(experts)))
    return offset_moments(dict(zip(names, experts)), over).of(names)
