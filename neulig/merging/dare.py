"""DARE, drop and rescale (Yu et al., ICML 2024, arXiv 2311.03099), then Task Arithmetic.

For every expert t and parameter tensor, drop_t ~ Bernoulli(p) element-wise (1 = drop) and
tau~_t = tau_t * (1 - drop_t) / (1 - p)   (no rescale at p = 1: everything is dropped),
so E[tau~_t] = tau_t (docs/methods.md §5, MergeLM ``mask_input_with_mask_rate``, strategy random, rescale on).
Then theta = theta_0 + lambda * sum_t tau~_t (MergeLM ``mask_merging`` + task arithmetic).
Masks are independent across experts and tensors and drawn from a ``torch.Generator`` on the tensors'
device seeded with ``seed`` (experts in order, keys sorted): a merge is reproducible on a given device
type (CPU and CUDA random streams differ; CUDA draws them ~100x faster). For a fixed seed
the result depends on the expert order (each position gets its own mask); in distribution it does not.
Defaults: p = 0.5 (the middle of MergeLM's grid {0.1, ..., 0.9}; no single published default),
lambda = 0.3 (Task Arithmetic's 8-task CLIP value: DARE reuses the base merge's hyperparameters).
mergekit's L1-norm rescale (since 2024) is a different estimator and is not implemented.
BatchNorm statistics are pooled and integer buffers copied (finish_merge), never dropped.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict, check_compatible, finish_merge
from neulig.merging.task_vectors import apply, param_keys, task_vector

Masks = Sequence[dict[str, Tensor]]


def drop_and_rescale(tau: Tensor, keep: Tensor, p: float) -> Tensor:
    """tau * keep / (1 - p); all zeros when p = 1."""
    if p >= 1.0:
        return torch.zeros_like(tau)
    return tau * keep.to(tau.dtype) / (1.0 - p)


def draw_keep_masks(base: StateDict, keys: Sequence[str], num_experts: int, p: float,
                    seed: int) -> list[dict[str, Tensor]]:
    """Independent keep masks (keep with probability 1 - p), one dict per expert, seeded per device."""
    if not 0.0 <= p <= 1.0:
        raise NeuligError(f"DARE drop rate p must lie in [0, 1], got {p}")
    generators: dict[torch.device, torch.Generator] = {}

    def generator(device: torch.device) -> torch.Generator:
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(int(seed))
        return generators[device]

    return [{k: torch.rand(base[k].shape, generator=generator(base[k].device), device=base[k].device) >= p
             for k in keys} for _ in range(num_experts)]


def dare_task_vectors(base: StateDict, experts: Sequence[StateDict], p: float, seed: int,
                      masks: Masks | None = None) -> list[dict[str, Tensor]]:
    """The experts' drop-and-rescaled task vectors (float32), with given or freshly drawn keep masks."""
    keys = param_keys(base)
    if masks is None:
        masks = draw_keep_masks(base, keys, len(experts), p, seed)
    elif len(masks) != len(experts):
        raise NeuligError(f"got {len(masks)} DARE masks for {len(experts)} experts; give one per expert")
    out = []
    for expert, mask in zip(experts, masks):
        tau = task_vector(base, expert, keys)
        out.append({k: drop_and_rescale(tau[k], mask[k].to(tau[k].device), p) for k in keys})
    return out


def merge(base: StateDict, experts: Sequence[StateDict], p: float = 0.5, scaling: float = 0.3, seed: int = 0,
          masks: Masks | None = None) -> StateDict:
    """DARE then Task Arithmetic; ``masks`` (keep masks per expert and key) overrides the random draw."""
    check_compatible(base, experts)
    taus = dare_task_vectors(base, experts, p, seed, masks)
    summed = {k: sum(t[k] for t in taus) for k in taus[0]}
    return finish_merge(apply(base, summed, scaling), base, experts)
