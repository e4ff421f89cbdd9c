"""DARE then TIES (Yu et al., ICML 2024, arXiv 2311.03099 + Yadav et al., NeurIPS 2023, arXiv 2306.01708).

tau~_t = tau_t * (1 - drop_t) / (1 - p), drop_t ~ Bernoulli(p) seeded (see ``dare``); then TIES on the
tau~_t: global top-k trim per task (``density``), mass sign election, disjoint ``merge_fn``, and
theta = theta_0 + lambda * tau_m (docs/methods.md §5: "TIES (trim, elect and disjoint-merge the DARE'd
deltas)", MergeLM ``mask_merging`` with TIES). Defaults: p = 0.5 and TIES's own defaults (density 0.2,
dis-mean, lambda 1). ``density: 1.0`` skips the trim (mergekit's dare_ties, which also uses
``merge_fn: sum`` and an L1 rescale that is not implemented here). For a fixed seed the result depends on
the expert order (each position gets its own mask). Buffers follow finish_merge.
"""
from __future__ import annotations

from typing import Sequence

from neulig.merging.dare import Masks, dare_task_vectors
from neulig.merging.state_dict import StateDict, check_compatible, finish_merge
from neulig.merging.task_vectors import apply, flatten, param_keys, unflatten
from neulig.merging.ties import ties_vector


def merge(base: StateDict, experts: Sequence[StateDict], p: float = 0.5, density: float = 0.2,
          scaling: float = 1.0, merge_fn: str = "mean", trim: str = "exact", seed: int = 0,
          masks: Masks | None = None) -> StateDict:
    check_compatible(base, experts)
    keys = param_keys(base)
    tv = flatten(dare_task_vectors(base, experts, p, seed, masks), keys)
    tau_m = ties_vector(tv, density, merge_fn, trim)
    return finish_merge(apply(base, unflatten(tau_m, base, keys), scaling), base, experts)
