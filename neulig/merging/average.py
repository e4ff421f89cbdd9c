"""Simple averaging / Model Soups (Wortsman et al., ICML 2022, arXiv 2203.05482).

theta = (1/T) sum_t theta_t  (or sum_t w_t theta_t with normalised weights ``weights``).
The base is used only for the buffer policy (integer buffers); BatchNorm statistics are pooled.
"""
from __future__ import annotations

from typing import Sequence

from neulig.merging.state_dict import StateDict, check_compatible, classify_keys, finish_merge, normalized


def merge(base: StateDict, experts: Sequence[StateDict], weights: Sequence[float] | None = None) -> StateDict:
    check_compatible(base, experts)
    w = normalized(weights, len(experts))
    merged = {}
    for key in classify_keys(base).params:
        acc = sum(float(w[i]) * e[key].float() for i, e in enumerate(experts))
        merged[key] = acc
    return finish_merge(merged, base, experts, w)


def ensemble_weights(num_experts: int, weights: Sequence[float] | None = None) -> list[float]:
    """Per-expert coefficients of the ensemble counterpart."""
    return normalized(weights, num_experts).tolist()
