"""The package keeps the layout docs/architecture.md describes: modules named for what they own and small
enough to read (at most MAX_LINES lines), and no import hidden inside a function outside fnctl/cli/ (the
CLI's imports wait for the command that needs them, for start-up time, each with its reason in a comment).
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

# The imports left inside functions outside the CLI, by (module, library), both on `fnctl validate`'s path
# (measured): jsonschema and referencing only explain a value that failed its compiled check
# (fnctl.manifest.fastschema); eager, they add ~0.065 s of CPU to every command (every command reads
# fnctl.toml through the schemas), a tenth of benchmarks/bench_validate.py's figure. croniter (with dateutil)
# only checks a cron trigger's schedule; eager, ~0.025 s of CPU on every validate. The docker SDK only builds
# images, reads logs and events, and reaches an engine over TCP/SSH (an instance's calls go over the engine's
# HTTP API, engine.dockerapi); eager, ~0.2 s of CPU on every `invoke --local`, a warm one's whole CPU time
# (docs/local-invoke.md), and on read commands that never call the engine. psycopg (fnctl.state.pgbackend) only
# serves a state on PostgreSQL; eager, ~0.18 s of CPU on every command that opens a SQLite state (the document
# store's fnctl.state.docpg likewise).
ALLOWED_OUTSIDE_CLI = {
    ("manifest/schemas.py", "jsonschema"),
    ("manifest/schemas.py", "referencing"),
    ("manifest/triggerchecks.py", "croniter"),
    ("engine/dockerio.py", "docker"),
    ("state/backends.py", "fnctl.state.pgbackend"),
    ("state/docstore.py", "fnctl.state.docpg"),
}


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
    if isinstance(statement, ast.ImportFrom) and name == "fnctl.state":  # fnctl's own modules: which one
        return f"{name}.{statement.names[0].name}"
    return name if name.startswith("fnctl.") else name.split(".")[0]


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


def test_no_import_inside_a_function_outside_the_cli() -> None:
    found = set()
    for path in _modules():
        if _name(path).startswith("cli/"):
            continue
        for statement, _ in _function_imports(ast.parse(path.read_text(encoding="utf-8"))):
            found.add((_name(path), _library(statement), statement.lineno))
    unexpected = sorted(f"fnctl/{m}:{line}: {lib}" for m, lib, line in found if (m, lib) not in ALLOWED_OUTSIDE_CLI)
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
