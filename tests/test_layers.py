"""Imports point downward: a module of neulig imports (at the top or inside a function) only modules of
its own layer or a lower one, so a reader follows one run from the CLI down without coming back up."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "neulig"
# lowest first; a module belongs to the first layer whose prefix it starts with
LAYERS = [
    ("errors", "utils", "data/catalog", "data/classnames"),
    ("config",),
    ("merging", "alignment", "models", "data", "evaluate",
     "portland/model", "portland/statistics", "portland/loss", "portland/features"),
    ("lit", "results", "plots", "tracking", "portland/training"),
    ("stages",),
    ("methods", "portland"),  # portland/runner, portland/evaluation (and the package's map)
    ("recipe",),
    ("callbacks", "run", "report", "diagnose", "__init__", "__main__"),
]


def layer(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + "/") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def module_path(name: str) -> str:
    """``neulig.stages.backbone`` -> ``stages/backbone`` (a package -> its folder)."""
    return "/".join(name.split(".")[1:]) or "__init__"


MODULES = sorted(p.relative_to(PACKAGE).with_suffix("").as_posix() for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_downward(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    own = layer(module.removesuffix("/__init__") if module.endswith("/__init__") else module)
    for node in ast.walk(tree):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            if name and name.startswith("neulig.") and name != "neulig":
                target = module_path(name)
                assert layer(target) <= own, f"neulig/{module}.py imports {name}, a layer above it"
