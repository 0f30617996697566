"""The package keeps the layout docs/architecture.md describes: modules named for what they own and small
enough to read (at most MAX_LINES lines), no class name defined twice, and no import hidden inside a function
outside fnctl/cli/ (the CLI's imports wait for the command that needs them, for start-up time, each with its
reason in a comment).
The layers, cycles and library boundaries are import-linter's contracts (pyproject.toml).

Only the package is held to this: runtime-image/ (fnctl_runtime.py, the Node runtime's .mjs files) is exempt, as
each of its files is copied into the function images as one self-contained file, run by the container's own
interpreter with the standard library alone (see docs/protocol.md), so it cannot be split into modules."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fnctl"
MAX_LINES = 400


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _function_imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, list[ast.stmt]]]:
    """Every import statement inside a function, with the statement list it belongs to."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    block = getattr(inner, field, None)
                    if isinstance(block, list):
                        for statement in block:
                            if isinstance(statement, ast.Import | ast.ImportFrom):
                                yield statement, block


def _library(statement: ast.Import | ast.ImportFrom) -> str:
    name = statement.names[0].name if isinstance(statement, ast.Import) else statement.module or ""
    return name.split(".")[0]


def _has_reason(statement: ast.stmt, block: list[ast.stmt], lines: list[str]) -> bool:
    """A comment on the import's line, or on the line above the run of imports it belongs to."""
    if "#" in lines[statement.lineno - 1]:
        return True
    index = block.index(statement)
    while index > 0 and isinstance(block[index - 1], ast.Import | ast.ImportFrom):
        index -= 1
        if "#" in lines[block[index].lineno - 1]:
            return True
    first = block[index].lineno
    return first >= 2 and lines[first - 2].strip().startswith("#")


def test_every_module_is_at_most_max_lines() -> None:
    long = {_name(p): n for p in _modules() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"split these by what each part owns (at most {MAX_LINES} lines): {long}"


def test_no_class_name_is_defined_twice() -> None:
    """One name, one meaning: a reader (and a grep) finds the one class a name stands for."""
    where: dict[str, list[str]] = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(f"fnctl/{_name(path)}:{node.lineno}")
    twice = {name: places for name, places in where.items() if len(places) > 1}
    assert twice == {}, f"class names defined more than once (name each for what it is): {twice}"


def test_no_import_inside_a_function_outside_the_cli() -> None:
    found = set()
    for path in _modules():
        if _name(path).startswith("cli/"):
            continue
        for statement, _ in _function_imports(ast.parse(path.read_text(encoding="utf-8"))):
            found.add((_name(path), _library(statement), statement.lineno))
    unexpected = sorted(f"fnctl/{m}:{line}: {lib}" for m, lib, line in found)
    assert unexpected == [], (
        "imports inside functions outside fnctl/cli/ (move them to the top of the module; a cycle means a shared "
        "piece belongs in a lower layer): " + ", ".join(unexpected)
    )


def test_the_clis_imports_inside_commands_say_why() -> None:
    silent = []
    for path in _modules():
        if not _name(path).startswith("cli/"):
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for statement, block in _function_imports(ast.parse("\n".join(lines))):
            if not _has_reason(statement, block, lines):
                silent.append(f"fnctl/{_name(path)}:{statement.lineno}")
    assert silent == [], "imports inside a CLI function without a comment saying why: " + ", ".join(silent)


def test_the_detection_sees_an_import_inside_a_function() -> None:
    """The checks above cannot pass vacuously: a function-level import is found, and its reason too."""
    source = "def f():\n    # start-up time\n    import json\n    import os\n\n\ndef g():\n    import re\n"
    lines = source.splitlines()
    found = [(s.lineno, _has_reason(s, b, lines)) for s, b in _function_imports(ast.parse(source))]
    assert sorted(found) == [(3, True), (4, True), (8, False)]
