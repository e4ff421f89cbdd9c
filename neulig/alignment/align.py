"""Align experts of different origins to a reference by permuting their hidden units.

Each other model is aligned to the reference independently; the result can then be merged by any
averaging method, because matched units now sit at the same indices. Methods:

- ``"weight"``: weight matching (Git Re-Basin, Ainsworth et al., arXiv 2209.04836): no data; start
  from the identity and run coordinate descent on S = S_w (f = 1).
- ``"activation"``: activation matching (ZipIt!-style correlation, Stoica et al., arXiv 2305.03053,
  solved as an alignment): one LAP per group on S = S_act (f = 0).
- ``"mudsc"``: MuDSC (Xu et al., CVPR 2024, arXiv 2403.01753): initial matching from S_act, then
  coordinate descent on S = f S_w + (1 - f) S_act with S_act fixed, whole-head matching for attention.

See :mod:`neulig.alignment.similarity` for S_w and S_act and :mod:`neulig.alignment.solvers` for the
solvers and the stopping rule.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from neulig.alignment.activations import collect_moments
from neulig.alignment.permute import Permutation, identity_permutation, permute_state
from neulig.alignment.similarity import WeightSimilarity, activation_similarity, blend
from neulig.alignment.solvers import coordinate_descent, matched_similarity, solve_once
from neulig.alignment.spec import PermutationSpec, spec_for
from neulig.config.align import AlignConfig
from neulig.config.fields import ConfigError, check_fields
from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict

METHODS = ("weight", "activation", "mudsc")


@dataclass(frozen=True)
class GroupReport:
    similarity: float  # mean matched similarity under the method's S at the returned permutation
    unmoved: float  # fraction of units that stay in place


@dataclass(frozen=True)
class AlignResult:
    method: str
    states: tuple[StateDict, ...]  # the reference (a new dict of its own, unchanged tensors), then each aligned model
    permutations: tuple[Permutation, ...]  # per other model: group -> p (aligned unit i = original unit p[i])
    reports: tuple[dict[str, GroupReport], ...]  # per other model, per group
    sweeps: tuple[int, ...]  # refinement sweeps run per other model (0 for activation matching)
    sweep_scores: tuple[tuple[float, ...], ...]  # per other model, each sweep's score (mean of group scores)
    seconds: float
    # activations (hooked forward passes), matching (S_act and its LAPs), refinement (weight-space sweeps and
    # the final scores), permuting (applying the permutations)
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def aligned(self) -> tuple[StateDict, ...]:
        return self.states[1:]


def _method_fix_rate(method: str, options: AlignConfig) -> float:
    return {"weight": 1.0, "activation": 0.0}.get(method, options.fix_rate)


def _align_one(spec: PermutationSpec, method: str, options: AlignConfig, other: StateDict,
               s_weight: WeightSimilarity, s_act: dict[str, Tensor] | None,
               phases: dict[str, float]) -> tuple[Permutation, tuple[float, ...], dict[str, GroupReport]]:
    f = _method_fix_rate(method, options)
    cache: dict[str, tuple[list[Tensor], Tensor]] = {}  # group -> (neighbour permutations, S)

    def similarity(name: str, perm: Permutation) -> Tensor:
        """S of group ``name``; it depends only on the neighbours' permutations, so it is cached on them."""
        key = [perm[n] for n in spec.neighbours[name]] if f > 0 else []
        hit = cache.get(name)
        if hit is not None and all(torch.equal(a, b) for a, b in zip(hit[0], key)):
            return hit[1]
        sw = s_weight(other, name, perm) if f > 0 else None
        s = blend(sw, None if s_act is None else s_act[name], f)
        cache[name] = ([k.clone() for k in key], s)
        return s

    tick = time.perf_counter()
    perm = identity_permutation(spec)
    history: tuple[float, ...] = ()
    if s_act is not None:  # activation matching, or MuDSC's initial matching from S_act alone
        perm = solve_once(spec, lambda name, _: s_act[name], perm)
    phases["matching"] += time.perf_counter() - tick
    tick = time.perf_counter()
    if f > 0:
        refined = coordinate_descent(spec, similarity, perm, options.max_sweeps, options.tol, options.seed)
        perm, history = refined.permutation, refined.history
    reports = {}
    for group in spec.groups:
        p = perm[group.name]
        reports[group.name] = GroupReport(matched_similarity(similarity(group.name, perm), p),
                                          float((p == torch.arange(group.size)).double().mean()))
    phases["refinement"] += time.perf_counter() - tick
    return perm, history, reports


def align(reference: StateDict, others: Sequence[StateDict], visual: nn.Module, method: str,
          batches: Iterable[Tensor] | None = None, options: AlignConfig | None = None) -> AlignResult:
    """Align every model of ``others`` to ``reference`` (image-tower state dicts of ``visual``'s architecture).

    ``visual`` supplies the architecture (``clip.visual``; its own weights are not used). ``batches`` of images
    (normalised [B, 3, H, W] batches, iterated once) are needed by ``activation`` and ``mudsc``.
    ``options``: the ``align`` group's typed config (``fix_rate``, ``similarity``, ``max_sweeps``, ``tol``,
    ``seed``), checked here; None: the schema's defaults.
    """
    options = AlignConfig(method=method) if options is None else options
    try:
        check_fields(options, "align.")
    except ConfigError as err:
        raise NeuligError(str(err)) from None
    start = time.perf_counter()
    if method not in METHODS:
        raise NeuligError(f"unknown alignment method {method!r}; choose one of {', '.join(METHODS)}")
    if len(others) == 0:
        raise NeuligError("align needs at least one model besides the reference")
    spec = spec_for(visual)
    spec.check_state(reference, "the reference state dict")
    for i, other in enumerate(others):
        spec.check_state(other, f"model {i + 1}")
    phases = {"activations": 0.0, "matching": 0.0, "refinement": 0.0, "permuting": 0.0}
    moments = None
    if method != "weight":
        if batches is None:
            raise NeuligError(
                f"alignment method {method!r} needs unlabeled images; pass batches=, or use method='weight'")
        unprobed = [g.name for g in spec.groups if not g.probes]
        if unprobed:
            raise NeuligError(f"method {method!r} needs activations, but group {unprobed[0]!r} has no probe site")
        tick = time.perf_counter()
        moments = collect_moments(visual, spec, reference, others, batches)
        phases["activations"] = time.perf_counter() - tick
    s_weight = WeightSimilarity(reference, spec, options.similarity)
    states, perms, reports, histories = [dict(reference)], [], [], []
    for i, other in enumerate(others):
        tick = time.perf_counter()
        s_act = None
        if moments is not None:
            s_act = {name: activation_similarity(sites, options.similarity) for name, sites in moments[i].items()}
        phases["matching"] += time.perf_counter() - tick
        perm, history, report = _align_one(spec, method, options, other, s_weight, s_act, phases)
        tick = time.perf_counter()
        states.append(permute_state(other, spec, perm))
        phases["permuting"] += time.perf_counter() - tick
        perms.append(perm)
        reports.append(report)
        histories.append(history)
    return AlignResult(method, tuple(states), tuple(perms), tuple(reports), tuple(len(h) for h in histories),
                       tuple(histories), time.perf_counter() - start, phases)
