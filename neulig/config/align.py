"""Schema of ``conf/align/``: permutation alignment of experts of different origins, before any merge.

Hidden units of networks trained from different initialisations are permuted relative to each other;
aligning each expert to the combination's first one (which shares the base's origin) before merging
puts matched units at the same indices (docs/methods.md §2). Experts of one origin are left untouched
(bit-identical) unless ``always`` asks otherwise, a diagnostic: they should stay near the identity.
"""
from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from neulig.config.fields import option, positive


@dataclass
class AlignConfig:
    method: Optional[str] = option(MISSING, choices=(None, "weight", "activation", "mudsc"))  # null: none
    fix_rate: float = option(0.5, low=0, high=1)  # f of S = f S_weight + (1 - f) S_activation (mudsc)
    similarity: str = option("pearson", choices=("pearson", "cosine"))
    images: int = positive(256)  # unlabeled images for activations, drawn from the train splits only
    batch_size: int = positive(64)  # images per forward pass while collecting activations
    max_sweeps: int = option(100, low=0)  # weight-space coordinate-descent sweeps (weight, mudsc)
    tol: int = positive(5)  # stop after this many sweeps without progress
    seed: int = 0  # the sweeps' random group order and the images drawn
    always: bool = False  # align experts of one origin too (a diagnostic)
