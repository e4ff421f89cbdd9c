"""docs/architecture.md draws the path of one Portland run: each ```path block lists ``file::function``
steps in call order, and each step's function exists and calls the next (or, where the line says
``via <yaml>``, the yaml names the next step's dotted path; ``via lightning``: the step builds the
LightningModule whose hook the next step is)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "architecture.md").read_text()
BLOCKS = [[line.split() for line in block.strip().splitlines()] for block in re.findall(r"```path\n(.*?)```", DOC, re.S)]


def definition(path: str, qualname: str) -> ast.AST:
    """The ``def`` of ``qualname`` (``f`` or ``Class.f``) in the file ``path``."""
    node: ast.AST = ast.parse((REPO / path).read_text())
    for part in qualname.split("."):
        node = next((n for n in ast.iter_child_nodes(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                     and n.name == part), None)
        assert node is not None, f"{path} defines no {qualname}"
    return node


def names_used(node: ast.AST) -> set[str]:
    return {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node) if isinstance(n, (ast.Name, ast.Attribute))}


def test_the_document_draws_the_path():
    assert len(BLOCKS) >= 3 and all(len(b) >= 2 for b in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b[0][0])
def test_each_step_exists_and_calls_the_next(block):
    for step, following in zip(block, block[1:]):
        path, qualname = step[0].split("::")
        next_path, next_name = following[0].split("::")
        node = definition(path, qualname)
        definition(next_path, next_name)
        callee = next_name.split(".")[-1]
        if step[1:] == ["via", "lightning"]:  # a hook: the step builds the module and Lightning calls it
            assert next_name.split(".")[0] in names_used(node), f"{path}::{qualname} does not build {next_name}"
        elif len(step) == 3 and step[1] == "via":
            dotted = next_path.removesuffix(".py").replace("/", ".") + "." + callee
            assert dotted in (REPO / step[2]).read_text(), f"{step[2]} does not name {dotted}"
        else:
            assert callee in names_used(node), f"{path}::{qualname} does not call {callee}"


def test_a_wrong_step_is_caught():
    with pytest.raises(AssertionError, match="defines no"):
        definition("neulig/portland/training.py", "PortlandTraining.no_such_step")
