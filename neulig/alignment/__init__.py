"""Permutation alignment of image-tower experts of different origins, before merging.

Git Re-Basin weight matching (arXiv 2209.04836), activation matching, and MuDSC's dual-space
similarity with whole-head attention matching (arXiv 2403.01753), for open_clip ViT and
ModifiedResNet image towers. Entry point: :func:`align`.
"""
from neulig.alignment.align import METHODS, AlignResult, GroupReport, align
from neulig.alignment.permute import (
    Permutation,
    check_permutation,
    identity_permutation,
    inverse_permutation,
    permute_state,
    random_permutation,
)
from neulig.alignment.spec import Group, PermutationSpec, Probe, Slot, spec_for

__all__ = [
    "METHODS",
    "AlignResult",
    "Group",
    "GroupReport",
    "Permutation",
    "PermutationSpec",
    "Probe",
    "Slot",
    "align",
    "check_permutation",
    "identity_permutation",
    "inverse_permutation",
    "permute_state",
    "random_permutation",
    "spec_for",
]
