"""Permutation specifications: which state-dict axes index the same hidden units.

Renaming the hidden units of a network (moving a unit's row in the weight that produces it, its
entries in the norm and bias that follow, and its column in every weight that reads it, all by the
same permutation) leaves the function unchanged. Merging by alignment (Git Re-Basin, Ainsworth et
al., arXiv 2209.04836; MuDSC, Xu et al., arXiv 2403.01753) searches one such permutation per
*group* of units so that a second model's units line up with a reference's before averaging.

A :class:`Group` lists every stretch of a tensor axis (:class:`Slot`) that its permutation moves;
a :class:`PermutationSpec` lists the groups of one architecture. A group with ``heads > 1`` has
units in ``heads`` contiguous blocks that may only move as whole blocks (multi-head attention),
and groups named as each other's ``head_partner`` must pair the heads the same way (the Q/K and V
parts of one attention layer). :func:`spec_for` builds the spec of an open_clip image tower.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from torch import nn

from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict, first_mismatch

PROBE_KINDS = ("input", "output", "q", "k", "v")


@dataclass(frozen=True)
class Slot:
    """Indices ``start .. start + group.size - 1`` of axis ``axis`` of the tensor ``key``.

    ``in_similarity=False`` excludes the slot from the weight-space similarity (BatchNorm running
    statistics, which are moved with their channels but are not weights).
    """

    key: str
    axis: int
    start: int = 0
    in_similarity: bool = True


@dataclass(frozen=True)
class Probe:
    """Where the activations of a group's units are read during a forward pass.

    ``kind`` is ``"input"`` (first positional input of the module ``module``), ``"output"`` (its
    output), or ``"q"``/``"k"``/``"v"``: the projection that the attention module ``module``
    computes internally, recomputed from its input and its weights.
    """

    module: str
    kind: str


@dataclass(frozen=True)
class Group:
    """One set of ``size`` interchangeable units and every slot its permutation moves."""

    name: str
    size: int
    slots: tuple[Slot, ...]
    probes: tuple[Probe, ...] = ()
    heads: int = 1  # > 1: units come in `heads` contiguous blocks that move only as whole blocks
    head_partner: str | None = None  # a group that must pair heads exactly as this one does

    @property
    def head_dim(self) -> int:
        return self.size // self.heads


@dataclass(frozen=True)
class PermutationSpec:
    """The groups of one architecture, the shapes they were built for, and the keys no group moves."""

    arch: str
    groups: tuple[Group, ...]
    shapes: dict[str, tuple[int, ...]] = field(repr=False)
    fixed: tuple[str, ...] = ()  # keys in no group: integer buffers, outputs that must keep their order

    def __post_init__(self) -> None:
        _validate(self)

    @cached_property
    def by_name(self) -> dict[str, Group]:
        return {g.name: g for g in self.groups}

    def group(self, name: str) -> Group:
        return self.by_name[name]

    @cached_property
    def slots_by_key(self) -> dict[str, tuple[tuple[Group, Slot], ...]]:
        """Every (group, slot) that moves each key, in spec order."""
        out: dict[str, list[tuple[Group, Slot]]] = {}
        for group in self.groups:
            for slot in group.slots:
                out.setdefault(slot.key, []).append((group, slot))
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def neighbours(self) -> dict[str, tuple[str, ...]]:
        """Per group, the groups whose permutations enter its weight features (other axes of its tensors)."""
        out = {}
        for group in self.groups:
            found: dict[str, None] = {}
            for slot in group.slots:
                if slot.in_similarity:
                    found.update({g.name: None for g, s in self.slots_by_key[slot.key] if s.axis != slot.axis})
            out[group.name] = tuple(found)
        return out

    @cached_property
    def steps(self) -> tuple[tuple[str, ...], ...]:
        """Groups solved together: a group alone, or a group with its head partner."""
        seen: set[str] = set()
        steps = []
        for group in self.groups:
            if group.name in seen:
                continue
            step = (group.name,) if group.head_partner is None else (group.name, group.head_partner)
            seen.update(step)
            steps.append(step)
        return tuple(steps)

    def check_state(self, state: StateDict, what: str) -> None:
        """Raise a one-line NeuligError unless ``state`` has exactly this spec's keys and shapes."""
        problem = first_mismatch(state, self.shapes)
        if problem:
            raise NeuligError(f"{what} does not match the {self.arch} image tower: {problem}; align only state dicts "
                              "of this tower (clip.visual.state_dict())")


def _validate(spec: PermutationSpec) -> None:
    """Internal consistency: slots inside their tensors, no overlaps, whole heads, partners, coverage."""
    names = [g.name for g in spec.groups]
    if len(set(names)) != len(names):
        raise NeuligError(f"{spec.arch} permutation spec has duplicate group names")
    by_name = {g.name: g for g in spec.groups}
    taken: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for group in spec.groups:
        if group.size < 1 or group.heads < 1 or group.size % group.heads:
            raise NeuligError(
                f"group {group.name!r}: size {group.size} is not a positive multiple of {group.heads} heads")
        if group.head_partner is not None:
            partner = by_name.get(group.head_partner)
            if partner is None or partner.head_partner != group.name or partner.heads != group.heads:
                raise NeuligError(f"group {group.name!r}: head partner {group.head_partner!r} does not pair back")
        for probe in group.probes:
            if probe.kind not in PROBE_KINDS:
                raise NeuligError(f"group {group.name!r}: unknown probe kind {probe.kind!r}")
        for slot in group.slots:
            shape = spec.shapes.get(slot.key)
            if shape is None or not 0 <= slot.axis < len(shape) or slot.start + group.size > shape[slot.axis]:
                raise NeuligError(f"group {group.name!r}: slot {slot} does not fit the tensor shape {shape}")
            span = (slot.start, slot.start + group.size)
            for other in taken.setdefault((slot.key, slot.axis), []):
                if span[0] < other[1] and other[0] < span[1]:
                    raise NeuligError(f"group {group.name!r}: slot {slot} overlaps another group's slot")
            taken[(slot.key, slot.axis)].append(span)
    covered = {key for key, _ in taken} | set(spec.fixed)
    uncovered = sorted(set(spec.shapes) - covered)
    if uncovered:
        raise NeuligError(
            f"unsupported {spec.arch} variant: no permutation rule for {uncovered[:3]}; "
            "alignment supports the standard open_clip ViT and ModifiedResNet image towers"
        )


def module_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``module.state_dict()`` (works on the meta device)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def spec_for(visual: nn.Module) -> PermutationSpec:
    """The permutation spec of an open_clip image tower (VisionTransformer or ModifiedResNet)."""
    from neulig.models.openclip import open_clip
    ModifiedResNet = open_clip.modified_resnet.ModifiedResNet
    from neulig.models.openclip import open_clip
    VisionTransformer = open_clip.transformer.VisionTransformer
    if isinstance(visual, VisionTransformer):
        from neulig.alignment.vit import vit_spec

        return vit_spec(visual)
    if isinstance(visual, ModifiedResNet):
        from neulig.alignment.resnet import resnet_spec

        return resnet_spec(visual)
    raise NeuligError(
        f"cannot align a {type(visual).__name__} image tower; alignment supports open_clip "
        "VisionTransformer and ModifiedResNet towers (pass clip.visual)"
    )
