"""Keyword arguments checked against a function's signature, read from its source (no import).

A static merge method with the generic ``static`` schema has free-form ``hparams``; they must be
keyword parameters of its ``fn``, of the annotated type (int, float, bool, str, lists of them, or
Optional thereof), and every parameter without a default must be given. The module is parsed with
:mod:`ast`, so the check costs milliseconds and imports nothing.
"""
from __future__ import annotations

import ast
import importlib.util
from typing import Any, Iterable

from neulig.config.fields import ConfigError

SCALARS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def function_node(path: str) -> ast.FunctionDef | None:
    module, _, name = path.rpartition(".")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def accepts(annotation: str, value: Any) -> bool:
    """Whether ``value`` fits a simple annotation; anything the check cannot read is accepted."""
    text = annotation.replace(" ", "")
    optional = "|None" in text or text.startswith("Optional[") or "None|" in text
    if value is None:
        return optional
    core = text.replace("|None", "").replace("None|", "")
    if core.startswith("Optional[") and core.endswith("]"):
        core = core[len("Optional["):-1]
    if core in SCALARS:
        return isinstance(value, SCALARS[core]) and not (core != "bool" and isinstance(value, bool))
    for prefix in ("Sequence[", "list[", "List[", "tuple[", "Iterable["):
        if core.startswith(prefix):
            inner = core[len(prefix):-1].split(",")[0]
            return isinstance(value, (list, tuple)) and all(accepts(inner, v) for v in value)
    return True


def describe(annotation: str) -> str:
    return f"a value of type {annotation}"


def check_keywords(option: str, path: str, values: dict[str, Any], skip: Iterable[str] = ()) -> None:
    """Raise a ConfigError unless ``values`` bind to the keyword parameters of the function ``path``."""
    node = function_node(path)
    if node is None:
        return  # compiled or dynamic: nothing to read, the call itself checks
    args = node.args.args + node.args.kwonlyargs
    defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults) + \
        list(node.args.kw_defaults)
    params = {a.arg: (ast.unparse(a.annotation) if a.annotation else "", d) for a, d in zip(args, defaults)}
    skipped = set(skip)
    free = {name: spec for name, spec in params.items() if name not in skipped}
    for key, value in values.items():
        if key not in free:
            raise ConfigError(f"{option}.{key}", value, f"a parameter of {path}: {', '.join(free) or 'none'}")
        annotation = free[key][0]
        if annotation and not accepts(annotation, value):
            raise ConfigError(f"{option}.{key}", value, describe(annotation))
    for name, (_, default) in free.items():
        if default is None and name not in values and not node.args.kwarg:
            raise ConfigError(f"{option}.{name}", None, f"required by {path}")
