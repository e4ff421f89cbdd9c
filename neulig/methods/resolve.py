"""Dotted paths in configs (``runner``, ``fn``, ...) to the objects they name."""
from __future__ import annotations

import importlib
from typing import Any


def resolve(path: str) -> Any:
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)
