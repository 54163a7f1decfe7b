"""Rules about the worker's code that a linter does not check (issue 20 item 6)."""

from __future__ import annotations

import ast
from pathlib import Path

import processors

ROOT = Path(processors.__file__).parent


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_no_assert_guards_control_flow() -> None:
    # ``python -O`` removes asserts: a guard written as one is no guard.
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert found == []


# Underscored names that are their libraries' public API.
PUBLIC = {"_exit", "_PARTITION_EOF"}


def test_no_private_member_is_used_outside_its_owner() -> None:
    # ``x._name`` only on self or cls; processors/faust_engine.py reads Faust's private state
    # on purpose (and says so), nowhere else does.
    found = []
    for path in _modules():
        if path.name == "faust_engine.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in PUBLIC
                and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert found == []
