"""Task Arithmetic (Ilharco et al., ICLR 2023, arXiv 2212.04089).

tau_t = theta_t - theta_0;  theta = theta_0 + lambda * sum_t tau_t,  lambda = ``scaling`` (0.3 default,
the value used for the 8-task CLIP benchmark; docs/methods.md §6). BatchNorm statistics are pooled over the
experts, never extrapolated (a negated task vector could make a variance negative).
"""
from __future__ import annotations

from typing import Sequence

from neulig.merging.state_dict import StateDict, check_compatible, classify_keys, finish_merge


def merge(base: StateDict, experts: Sequence[StateDict], scaling: float = 0.3) -> StateDict:
    check_compatible(base, experts)
    merged = {}
    for key in classify_keys(base).params:
        theta_0 = base[key].float()
        merged[key] = theta_0 + scaling * sum(e[key].float() - theta_0 for e in experts)
    return finish_merge(merged, base, experts)
