"""AdaMerging (Yang et al., ICLR 2024, arXiv 2310.02575): merging coefficients learned at test time.

Model (docs/methods.md §9), with tau_k = theta_k - theta_0 and clamp(.) = clamp(., 0, 1):
 - task-wise:  theta   = theta_0   + sum_k clamp(lambda_k)   tau_k        (one lambda per task)
 - layer-wise: theta^j = theta_0^j + sum_k clamp(lambda_k^j) tau_k^j      (one per state-dict tensor j)
The coefficient of theta_0 is fixed at 1; every lambda starts at ``init_lambda`` = 0.3 (the "prior").
The clamp has zero gradient outside [0, 1], so a lambda that leaves the interval stays frozen at
the bound: that is the reference's behaviour and the default; ``clamp=False`` (FusionBench's recipe)
uses the raw lambdas, and :meth:`AdaMergingWeights.drift` says how far they left [0, 1].
Objective: the sum over tasks k of the mean prediction entropy H(softmax(head_k(f(x; theta)))),
H(p) = -sum_c p_c log p_c, on *unlabeled test images* (test-time adaptation, as the reference).

Tensors are keyed by name (never by zipping ``named_parameters`` with ``state_dict``, the reference's
bug when a module has buffers). Only floating parameters are merged; BatchNorm statistics (none in
a CLIP ViT) are pooled by the MTDA rule of ``state_dict.py`` with the normalised task coefficients
of :meth:`AdaMergingWeights.ensemble_coefficients`, integer buffers come from theta_0. AdaMerging is
thus defined for any architecture (the arXiv 2503.01268 Table 2a caption "not applicable to ResNet-based models" is
about its published results, not its maths), so neulig runs it on every backbone.

Everything here is pure tensor code; training lives in ``neulig.lit.adamerging``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from neulig.errors import NeuligError
from neulig.merging.flat import FlatStack
from neulig.merging.state_dict import StateDict, classify_keys

GRANULARITIES = ("task", "layer")


def entropy(logits: Tensor) -> Tensor:
    """Per-sample prediction entropy H = -sum_c softmax * log_softmax (the reference's form), [B]."""
    logits = logits.float()
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def entropy_objective(logits_per_task: Sequence[Tensor]) -> Tensor:
    """L = sum_k mean_{x in batch_k} H(softmax(head_k(f(x)))) (arXiv 2310.02575, also WeMoE's loss)."""
    return torch.stack([entropy(logits).mean() for logits in logits_per_task]).sum()


def clamped(lambdas: Tensor) -> Tensor:
    """clamp(lambda, 0, 1): the coefficients the forward pass uses (zero gradient outside [0, 1])."""
    return lambdas.clamp(0.0, 1.0)


def merge_params(base: Mapping[str, Tensor], task_vectors: Sequence[Mapping[str, Tensor]], lambdas: Tensor,
                 keys: Sequence[str]) -> dict[str, Tensor]:
    """theta^j = theta_0^j + sum_k clamp(lambda_k^j) tau_k^j for every key j, in float32 (reference form).

    ``lambdas`` is [T] (task-wise, shared by every key) or [len(keys), T] (layer-wise, row j for keys[j]).
    """
    coeffs = clamped(lambdas)
    if coeffs.dim() == 1:
        coeffs = coeffs.expand(len(keys), -1)
    if coeffs.shape != (len(keys), len(task_vectors)):
        raise ValueError(f"lambdas {tuple(lambdas.shape)} do not match {len(keys)} tensors x {len(task_vectors)} tasks")
    return {key: base[key].float() + sum(coeffs[j, k] * tau[key].float() for k, tau in enumerate(task_vectors))
            for j, key in enumerate(keys)}


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise NeuligError(f"merge.granularity must be 'task' or 'layer', got {granularity!r}")
    return granularity


class AdaMergingWeights(nn.Module):
    """The trainable lambdas ([1, T] task-wise or [J, T] layer-wise) and the merged state they define.

    The checkpoints live once on the lambdas' device as a [T+1, P] float32 matrix whose rows are
    theta_0 and tau_1..tau_T (a :class:`FlatStack`); a merge is one [T] x [T, n_j] GEMV per tensor j,
    and :meth:`merged_state` returns a state dict usable with ``torch.func.functional_call``, so a
    training step copies no module.
    """

    def __init__(self, base: StateDict, experts: Sequence[StateDict], granularity: str = "layer",
                 init_lambda: float = 0.3, clamp: bool = True):
        super().__init__()
        self.granularity = check_granularity(granularity)
        self.clamp = clamp  # clamp(lambda, 0, 1) in the forward pass (the original repository; FusionBench: off)
        self.base, self.experts = base, list(experts)
        self.keys = classify_keys(base).params  # sorted, as FlatStack's slots
        rows = 1 if granularity == "task" else len(self.keys)
        self.lambdas = nn.Parameter(torch.full((rows, len(self.experts)), float(init_lambda)))
        self._flat: FlatStack | None = None

    @property
    def num_tasks(self) -> int:
        return len(self.experts)

    def flat(self) -> FlatStack:
        """[theta_0; tau_1..tau_T] on the lambdas' device, (re)built lazily after a device move."""
        device = self.lambdas.device
        if self._flat is None or self._flat.theta.device != device:
            self._flat = None
            flat = FlatStack([self.base, *self.experts], device=device)
            flat.theta[1:] -= flat.theta[0]  # rows 1.. become task vectors: theta = theta_0 + c @ tau
            self._flat = flat
        return self._flat

    def coefficients(self) -> Tensor:
        """The lambdas the forward pass uses, [J, T] (layer-wise) or [1, T] (task-wise): clamped to [0, 1]
        unless ``clamp`` is off."""
        return clamped(self.lambdas) if self.clamp else self.lambdas

    @torch.no_grad()
    def drift(self) -> dict[str, float]:
        """How far the raw lambdas left the unit interval: the share outside [0, 1], their min and max."""
        raw = self.lambdas.detach()
        return {"lambda_outside_unit": float(((raw < 0) | (raw > 1)).float().mean()),
                "lambda_min": float(raw.min()), "lambda_max": float(raw.max())}

    @torch.no_grad()
    def ensemble_coefficients(self) -> Tensor:
        """Per-task coefficients [T] of the ensemble counterpart: the lambdas the forward pass uses
        (task-wise) or their mean over tensors (layer-wise), clipped at 0 and normalised to sum 1
        (uniform if every coefficient is 0)."""
        c = self.coefficients().mean(0).float().clamp_min(0)
        total = c.sum()
        return c / total if total > 0 else torch.full_like(c, 1.0 / c.numel())

    def merged_state(self) -> StateDict:
        """The full merged state dict (views; differentiable w.r.t. the lambdas)."""
        flat = self.flat()
        coeffs = self.coefficients().to(flat.theta).expand(len(flat.slots), -1)  # task-wise: one shared row
        theta_0, taus = flat.theta[0], flat.theta[1:]
        state = {}
        for j, s in enumerate(flat.slots):  # per tensor, so the backward costs O(T P), not O(#tensors P)
            cols = slice(s.offset, s.offset + s.numel)
            state[s.key] = (theta_0[cols] + coeffs[j] @ taus[:, cols]).view(s.shape).to(s.dtype)
        state.update(pooled_buffers(flat, self.ensemble_coefficients()))
        return state


def pooled_buffers(flat: FlatStack, weights: Tensor) -> StateDict:
    """BatchNorm statistics pooled over the experts (rows 1..T of ``flat``) with ``weights`` [T] (row 0,
    theta_0, takes no part), and the integer buffers of theta_0 (row 0)."""
    return {**flat.pool_batchnorm(torch.cat([weights.new_zeros(1), weights]).to(flat.theta)), **flat.fixed}
