"""State-dict helpers shared by every merge method: key classes, checks, the buffer policy.

Buffer policy (docs/design.md, "Merging"):
1. floating-point parameters are merged by the method;
2. integer/bool buffers never take part in arithmetic: they are copied from the base;
3. BatchNorm ``running_mean`` / ``running_var`` are pooled as a count-weighted Gaussian mixture
   (the MTDA rule, Li et al. ECCV'24, arXiv 2407.13771):
   mu = sum_i w_i mu_i,  var = sum_i w_i (var_i + (mu_i - mu)^2),  w_i ∝ c_i n_i,
   where n_i is ``num_batches_tracked`` and c_i the method's (non-negative) expert coefficient.
   ``num_batches_tracked`` itself is an integer buffer and follows rule 2 (copied from the base; the
   pooled count sum_i n_i is returned by :func:`pool_batchnorm` for callers that want it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from neulig.errors import NeuligError

StateDict = dict[str, Tensor]

BN_MEAN, BN_VAR, BN_COUNT = "running_mean", "running_var", "num_batches_tracked"


@dataclass(frozen=True)
class KeyClasses:
    """Which keys of a state dict are merged how."""

    params: list[str]  # floating tensors merged by the method
    bn_prefixes: list[str]  # BatchNorm modules whose statistics are pooled
    fixed: list[str]  # integer/bool tensors (and BN counts) handled by the policy


def classify_keys(state: StateDict) -> KeyClasses:
    bn_prefixes = sorted(
        k[: -len(BN_MEAN)] for k in state if k.endswith(BN_MEAN) and k[: -len(BN_MEAN)] + BN_VAR in state
    )
    bn_keys = {p + s for p in bn_prefixes for s in (BN_MEAN, BN_VAR)}
    params = sorted(k for k, v in state.items() if v.is_floating_point() and k not in bn_keys)
    fixed = sorted(k for k, v in state.items() if not v.is_floating_point())
    return KeyClasses(params, bn_prefixes, fixed)


def _shape(value: object) -> str:
    shape = value if isinstance(value, tuple) else getattr(value, "shape", None)
    return str(tuple(shape)) if shape is not None else type(value).__name__


def under_prefix(state: Mapping, prefix: str) -> dict:
    """The entries of ``state`` whose key starts with ``prefix``, with the prefix removed (a sub-module's
    state dict: ``under_prefix(clip_state, "visual.")`` is the image tower's)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _kind(dtype: torch.dtype) -> str:
    return "bool" if dtype == torch.bool else "complex" if dtype.is_complex else \
        "floating-point" if dtype.is_floating_point else "integer"


def _placement(key: str, found: Tensor, ref: Tensor, dtypes: bool) -> str | None:
    """How tensor ``found`` differs from ``ref`` in layout, device or dtype (exactly, with ``dtypes``;
    else in kind: floating-point, integer, bool, complex), else None. A meta reference stands for any
    real device; a meta tensor is never found where data is expected."""
    if found.layout != ref.layout:
        return f"key {key!r} is a {found.layout} tensor, expected {ref.layout}"
    if found.device.type == "meta" and ref.device.type != "meta" or \
            ref.device.type != "meta" and found.device != ref.device:
        return f"key {key!r} is on {found.device}, expected {ref.device}"
    if ref.device.type == "meta" and found.device.type == "meta":
        return None  # two layouts compared with each other
    if dtypes and found.dtype != ref.dtype or _kind(found.dtype) != _kind(ref.dtype):
        return f"key {key!r} is {found.dtype}, expected {ref.dtype}"
    return None


def first_mismatch(state: Mapping, reference: Mapping, dtypes: bool = False) -> str | None:
    """The first key (in the reference's order) that is missing, of another shape, layout, device or
    kind of dtype (floating-point, integer, bool; with ``dtypes``, another dtype at all), else the first
    unexpected key, described with expected vs found; None when ``state`` fits. The one check every
    boundary uses (checkpoints, experts, merges, alignment). Reference values are tensors (meta tensors
    will do: then any real device fits) or shapes (then only shapes are compared)."""
    for key, ref in reference.items():
        if key not in state:
            return f"key {key!r} is missing (expected shape {_shape(ref)})"
        found = state[key]
        shape = getattr(found, "shape", None)
        if shape is None or tuple(shape) != tuple(ref if isinstance(ref, tuple) else ref.shape):
            return f"key {key!r} has shape {_shape(found)}, expected {_shape(ref)}"
        if isinstance(ref, Tensor) and isinstance(found, Tensor):
            problem = _placement(key, found, ref, dtypes)
            if problem:
                return problem
    extra = [k for k in state if k not in reference]
    return f"unexpected key {extra[0]!r} (shape {_shape(state[extra[0]])})" if extra else None


def check_compatible(base: StateDict, experts: Sequence[StateDict]) -> None:
    """Raise a one-line NeuligError unless every expert has the base's keys and shapes."""
    if len(experts) == 0:
        raise NeuligError("merge needs at least one expert state dict")
    for i, expert in enumerate(experts):
        problem = first_mismatch(expert, base)
        if problem:
            raise NeuligError(f"expert {i} does not match the base architecture: {problem}; "
                              "re-create the expert from this backbone")


def normalized(weights: Sequence[float] | Tensor | None, count: int) -> Tensor:
    """Coefficients as a float64 tensor summing to 1 (uniform when None)."""
    if weights is None:
        return torch.full((count,), 1.0 / count, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.numel() != count:
        raise NeuligError(f"got {w.numel()} weights for {count} experts; give one weight per expert")
    if (w < 0).any() or w.sum() <= 0:
        raise NeuligError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
    return w / w.sum()


def mixture_weights(counts: Tensor, coeffs: Tensor | None = None) -> Tensor:
    """The mixture weights of pooled BatchNorm statistics over the last axis (the N models):
    w_i = max(c_i, 0) n_i / sum_j max(c_j, 0) n_j, with n the ``num_batches_tracked`` counts and c the
    method's expert coefficients (uniform when None). Where every product is 0 (models that never saw a
    batch), the clamped coefficients alone."""
    c = torch.ones_like(counts) if coeffs is None else coeffs.to(counts).clamp_min(0).expand_as(counts)
    w = c * counts
    total = w.sum(-1, keepdim=True)
    fallback = c / c.sum(-1, keepdim=True).clamp_min(1e-30)
    return torch.where(total > 0, w / total.clamp_min(1e-30), fallback)


def mixture(means: Tensor, variances: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of a Gaussian mixture per channel (the MTDA rule, arXiv 2407.13771):
    mu = sum_i w_i mu_i, var = sum_i w_i (var_i + (mu_i - mu)^2). Inputs [..., N], weights summing to 1."""
    mu = (weights * means).sum(-1)
    return mu, (weights * (variances + (means - mu.unsqueeze(-1)) ** 2)).sum(-1)


def pool_batchnorm(
    means: Sequence[Tensor], variances: Sequence[Tensor], counts: Sequence[Tensor], weights: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """One BatchNorm layer's statistics pooled over the models (:func:`mixture_weights`, :func:`mixture`)
    in float64; returns (mean, var, summed count) in the dtypes of the inputs."""
    n = torch.stack([torch.as_tensor(c, dtype=torch.float64) for c in counts])
    w = mixture_weights(n, None if weights is None else torch.as_tensor(weights, dtype=torch.float64))
    mu_i = torch.stack([m.double().flatten() for m in means], -1)  # [C, N]
    var_i = torch.stack([v.double().flatten() for v in variances], -1)
    mu, var = mixture(mu_i, var_i, w)
    shape, dtype = means[0].shape, means[0].dtype
    total = torch.stack([torch.as_tensor(c) for c in counts]).sum().to(torch.as_tensor(counts[0]).dtype)
    return mu.view(shape).to(dtype), var.view(shape).to(variances[0].dtype), total


def finish_merge(
    merged_params: StateDict, base: StateDict, experts: Sequence[StateDict], weights: Tensor | None = None
) -> StateDict:
    """Complete a method's merged parameters with the buffer policy, in the base's key order.

    Merged floats are cast back to the base's dtype and kept on its device.
    """
    classes = classify_keys(base)
    out: StateDict = {}
    for prefix in classes.bn_prefixes:
        count_key = prefix + BN_COUNT
        counts = [e[count_key] if count_key in e else torch.tensor(1) for e in experts]
        mu, var, _ = pool_batchnorm(
            [e[prefix + BN_MEAN] for e in experts], [e[prefix + BN_VAR] for e in experts], counts, weights
        )
        out[prefix + BN_MEAN], out[prefix + BN_VAR] = mu, var
    for key in classes.fixed:
        out.setdefault(key, base[key].clone())
    for key in classes.params:
        out[key] = merged_params[key].to(dtype=base[key].dtype, device=base[key].device)
    return {k: out[k].to(base[k].device) for k in base}


def float_params(state: StateDict, keys: Sequence[str]) -> dict[str, Tensor]:
    """The given keys as float32 (arithmetic is done in fp32, docs/methods.md §0)."""
    return {k: state[k].float() for k in keys}
