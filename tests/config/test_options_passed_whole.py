"""Each option is stated once, in its schema, and used: a field that no code reads is refused, and so
is a constructor or function of a method's own modules that declares a default for a field the
method's schema owns (the typed config is passed whole instead; docs/architecture.md §2)."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import neulig.config as config_package
from neulig.config.align import AlignConfig
from neulig.config.merge import AdaMergingMerge, PortlandMerge, WeMoEMerge

PACKAGE = Path(config_package.__file__).resolve().parents[1]
SOURCES = sorted(PACKAGE.rglob("*.py"))

# The modules that implement one method or group, and the schema whose fields they must not restate.
OWNERS = {
    "portland": PortlandMerge, "lit/adamerging.py": AdaMergingMerge, "methods/adamerging.py": AdaMergingMerge,
    "lit/wemoe.py": WeMoEMerge, "methods/wemoe.py": WeMoEMerge, "lit/test_time.py": AdaMergingMerge,
    "alignment": AlignConfig, "methods/align.py": AlignConfig,
}
# Schemas whose fields are handed on by name without being read one by one: Lightning's Trainer arguments
# (``TrainerConfig.kwargs()``), a method's ``hparams`` and ``statistics`` options (keyword arguments of its
# ``fn``, checked against that function's signature when the config is composed), the pretraining recipe
# (``asdict`` into its cache key and trainer) and the paths the yaml interpolates into other options.
PASSED_ON_WHOLE = {"TrainerConfig", "StatisticsConfig", "FisherStatistics", "PretrainConfig", "PathsConfig"}


def schemas() -> list[type]:
    """Every dataclass declared in ``neulig.config``'s modules."""
    found = {}
    for info in pkgutil.iter_modules(config_package.__path__):
        module = importlib.import_module(f"neulig.config.{info.name}")
        for _, cls in inspect.getmembers(module, dataclasses.is_dataclass):
            if isinstance(cls, type) and cls.__module__ == module.__name__:
                found[cls.__qualname__] = cls
    return [found[k] for k in sorted(found)]


def read_names() -> set[str]:
    """Attribute names read anywhere in the package (``x.name``, ``getattr(x, "name")``), except inside
    the schemas' own ``check`` methods (checking a value is not using it)."""
    names: set[str] = set()
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        skip = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "check"
                for n in ast.walk(f)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant):
                names.add(node.args[1].value)
    return names


@pytest.mark.parametrize("schema", schemas(), ids=lambda s: s.__qualname__)
def test_every_schema_field_is_read_somewhere(schema):
    if schema.__qualname__ in PASSED_ON_WHOLE or schema.__qualname__.endswith("Hparams"):
        return
    unread = [f.name for f in dataclasses.fields(schema) if f.name not in READ]
    assert not unread, f"{schema.__qualname__} declares {unread}, which no code reads: remove them or use them"


READ = read_names()


def owned_defaults(path: Path, schema: type) -> list[str]:
    """``function(parameter=default)`` and class attributes with a default in ``path`` named as a field of ``schema``."""
    fields = {f.name for f in dataclasses.fields(schema)}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            with_default = positional[len(positional) - len(args.defaults):] + \
                [a for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            found += [f"{node.name}({a.arg}=...)" for a in with_default if a.arg in fields]
        if isinstance(node, ast.ClassDef):
            found += [f"{node.name}.{s.target.id} = ..." for s in node.body
                      if isinstance(s, ast.AnnAssign) and s.value is not None and isinstance(s.target, ast.Name)
                      and s.target.id in fields]
    return found


OWNED = [(path, schema) for path in SOURCES for prefix, schema in OWNERS.items()
         if path.relative_to(PACKAGE).as_posix() == prefix or path.relative_to(PACKAGE).as_posix().startswith(prefix + "/")]


@pytest.mark.parametrize("path,schema", OWNED, ids=lambda v: v.relative_to(PACKAGE).as_posix() if isinstance(v, Path)
                         else v.__qualname__)
def test_no_method_module_restates_a_default_its_schema_owns(path, schema):
    found = owned_defaults(path, schema)
    assert not found, f"{path.relative_to(PACKAGE)} restates defaults of {schema.__qualname__}: {found}; pass the config"


def test_the_checks_would_catch_a_restated_default_and_an_unread_field(tmp_path):
    """The two rules fail on a module that breaks them (the tests above cannot pass vacuously)."""
    module = tmp_path / "restates.py"
    module.write_text("class Trainer:\n    lr: float = 1e-3\n\ndef fit(data, batch_size=128, other=1):\n    pass\n")
    assert sorted(owned_defaults(module, PortlandMerge)) == ["Trainer.lr = ...", "fit(batch_size=...)"]
    assert "no_such_field_anywhere" not in READ and "merged_batch_size" in READ
