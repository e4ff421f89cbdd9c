"""The offline pretraining corpus of the tiny backbone: clean renderings with their concept names.

Concepts are the class names of every embedded family (digits, shapes, textures, letters); each
image's caption is a random template of its family filled with its concept. The corpus is rendered in
the *clean* style (plain backgrounds, font-rendered digits), while the tasks are handwritten or
cluttered, so zero-shot heads transfer but leave room for fine-tuning.
"""
from __future__ import annotations

import torch

from neulig.data import procedural as proc
from neulig.data.registry import SPECS


def pretraining_corpus(n_per_family: int, seed: int, size: int = 32):
    """Returns (images uint8 [N,3,S,S], concept ids [N], concepts, templates per concept)."""
    families = [
        (proc.make_glyphs(n_per_family, seed + 1, chars=tuple("0123456789"), size=size), SPECS["digits"]),
        (proc.make_shapes(n_per_family, seed + 2, size=size, style="clean"), SPECS["shapes"]),
        (proc.make_textures(n_per_family, seed + 3, size=size, style="clean"), SPECS["textures"]),
        (proc.make_glyphs(n_per_family, seed + 4, chars=proc.LETTERS, size=size), SPECS["glyphs"]),
    ]
    images, concepts, labels, templates = [], [], [], []
    for (x, y), spec in families:
        images.append(x)
        labels.append(y + len(concepts))
        concepts.extend(spec.classnames)
        templates.extend([spec.templates] * spec.num_classes)
    return torch.cat(images), torch.cat(labels), concepts, templates
