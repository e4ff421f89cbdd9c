"""Declaring an option's allowed values next to its type, and checking a composed config against them.

Types are Hydra's business: every group's yaml is merged into a dataclass of this package (Hydra
structured configs), so ``merge.lr=abc`` fails while the config is composed. What a type cannot say
(ranges, choices, which datasets exist) is declared with :func:`option` as field metadata and checked by
:func:`check_fields` once the config is composed, before anything heavy is imported or any work starts.
Cross-field rules are a dataclass's own ``check(self, prefix)`` method.

An option's default is stated once: in the dataclass when every variant of a group shares it, otherwise
in the group's yaml files (the dataclass field is then ``MISSING``, and a yaml that forgets it fails).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from omegaconf import MISSING


class ConfigError(Exception):
    """One wrong option: printed as ``neulig: error: <option>=<value>: <what is allowed>``."""

    def __init__(self, option: str, value: Any, allowed: str):
        self.option, self.value, self.allowed = option, value, allowed
        super().__init__(f"{option}={show(value)}: {allowed}")


def show(value: Any) -> str:
    """A value as a user would type it on the command line (lists without quotes)."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{show(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Allowed:
    """What a field may hold beyond its type: a closed set, or bounds (open or closed)."""

    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self, integer: bool) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(show(c) for c in self.choices)
        kind = "an integer" if integer else "a number"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {show(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {show(self.high)}")
        return f"{kind} " + " and ".join(parts) if parts else f"a finite {kind[2:] if not integer else 'integer'}"

    def admits(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True


def option(default: Any = MISSING, *, choices: Sequence | None = None, low: float | None = None,
           high: float | None = None, low_open: bool = False, high_open: bool = False) -> Any:
    """A dataclass field whose value must be one of ``choices`` or lie within the bounds.

    For list-valued fields the rule applies to every element. ``default`` is MISSING unless every
    variant of the group shares the value (then it is stated here, and only here).
    """
    allowed = Allowed(tuple(choices) if choices is not None else None, low, high, low_open, high_open)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"allowed": allowed})
    return field(default=default, metadata={"allowed": allowed})


def mapping(values: type, doc: str) -> Any:
    """A free-form ``{name: value}`` option, null by default (e.g. ``{dataset: file}``).

    Typed ``Any`` for Hydra: a command line can set it (``model.experts={digits:a.pt}``), which a typed
    dict node of a composed config refuses (it takes no new keys, and OmegaConf cannot merge a dict into
    an Optional[Dict] that is null). Its keys and value type are checked with every other option.
    """
    return field(default=None, metadata={"mapping": (values, doc)})


def check_mapping(name: str, value: Any, values: type, doc: str) -> None:
    if value is None:
        return
    ok = isinstance(value, dict) and all(isinstance(k, str) for k in value) and all(
        isinstance(v, values) and not (values is not bool and isinstance(v, bool)) for v in value.values())
    if not ok:
        raise ConfigError(name, value, f"null or {doc}")


def positive(default: Any = MISSING) -> Any:
    """A number > 0 (sizes, steps, learning rates)."""
    return option(default, low=0, low_open=True)


def non_negative(default: Any = MISSING) -> Any:
    return option(default, low=0)


def check_value(name: str, value: Any, allowed: Allowed, integer: bool) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    for item in values:
        if item is not None and not allowed.admits(item):
            raise ConfigError(name, value, allowed.describe(integer))


def check_fields(node: Any, prefix: str) -> None:
    """Check every declared rule of the dataclass ``node`` and of the dataclasses inside it, depth first,
    then the node's own cross-field ``check``; raise the first :class:`ConfigError`."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        name = f"{prefix}{f.name}"
        if "mapping" in f.metadata:
            check_mapping(name, value, *f.metadata["mapping"])
        allowed = f.metadata.get("allowed")
        if allowed is not None:
            check_value(name, value, allowed, integer="int" in str(f.type) and "float" not in str(f.type))
        if dataclasses.is_dataclass(value):
            check_fields(value, name + ".")
    own_check = getattr(node, "check", None)
    if callable(own_check):
        own_check(prefix)


def dotted_path_exists(path: str) -> bool:
    """Whether ``module.attr`` names a top-level definition, found without importing the module (its
    source is parsed), so a mistyped runner or function fails before any heavy import."""
    import ast

    module, _, attr = path.rpartition(".")
    if not module or not attr:
        return False
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return spec is not None and spec.origin is not None and _has_attr_by_import(module, attr)
    with open(spec.origin, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == attr:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == attr for a in node.names):
            return True
    return False


def _has_attr_by_import(module: str, attr: str) -> bool:  # compiled modules: no source to read
    return hasattr(importlib.import_module(module), attr)


def check_dotted(name: str, value: str) -> None:
    if not dotted_path_exists(value):
        raise ConfigError(name, value, "the dotted path of a function (package.module.function) that exists")
