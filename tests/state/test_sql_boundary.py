"""All SQL lives in fnctl.state (docs/architecture.md, "Where is the SQL?"): the rest of fnctl speaks to the
store through named, typed methods, so that another backend (PostgreSQL) has one package to implement.
import-linter keeps sqlite3 itself inside the package; this test keeps SQL text and the store's SQL primitives
out of everything else.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fnctl"
STATE = PACKAGE / "state"

# Statements as fnctl writes them (upper-case keywords), and the placeholders of a parameterised one.
_SQL = re.compile(
    r"\b(SELECT\b.*\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX|TRIGGER|VIEW)"
    r"|DROP\s+(TABLE|INDEX|TRIGGER|VIEW)|ALTER\s+TABLE|PRAGMA\s+\w+|BEGIN\s+IMMEDIATE)\b|\(\?(,\s*\?)*\)",
    re.DOTALL,
)
# The store's SQL primitives (private to fnctl.state) and its test-facing raw access.
_PRIMITIVES = {"_query", "_execute", "raw"}
# Any object's query/execute called with SQL text: a string, not (like GitPython's) an argument list.
_SQL_CALLS = {"query", "execute", "executemany", "executescript"}


def sql_outside_state(source: str) -> list[tuple[int, str]]:
    """(line, what) of every piece of SQL in a module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.search(node.value):
            found.append((node.lineno, f"SQL text {node.value[:60]!r}"))
        elif isinstance(node, ast.Attribute) and node.attr in _PRIMITIVES:
            found.append((node.lineno, f"the store's SQL access .{node.attr}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _SQL_CALLS
            and node.args
            and isinstance(node.args[0], ast.Constant | ast.JoinedStr)
        ):
            found.append((node.lineno, f".{node.func.attr}() of a string"))
    return sorted(found)


@pytest.mark.parametrize(
    "source",
    [
        'store.query("PRAGMA data_version")',
        'rows = store.query("SELECT function, number, status FROM revisions")',
        'store.execute("UPDATE cron_state SET last_tick = ? WHERE trigger = ?", (1, "t"))',
        'x = f"INSERT INTO deploys (at) VALUES (?)"',
        "store._query(sql)",
        "store.raw().execute(statement)",
        'with store.transaction():\n    store.execute(f"DELETE FROM {table}")',
    ],
)
def test_the_check_finds_sql(source: str) -> None:
    assert sql_outside_state(source)


@pytest.mark.parametrize(
    "source",
    [
        'repo.git.execute(["git", "status"])',
        'print("select a function from the list, then update its settings")',
        "store.audit_mark()",
        'with store.transaction():\n    store.set_route("hello", {1: 100})',
    ],
)
def test_the_check_leaves_other_code_alone(source: str) -> None:
    assert sql_outside_state(source) == []


def test_no_sql_outside_the_state_package() -> None:
    modules = [p for p in sorted(PACKAGE.rglob("*.py")) if STATE not in p.parents]
    assert len(modules) > 50  # the walk found the package
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {what}"
        for path in modules
        for line, what in sql_outside_state(path.read_text(encoding="utf-8"))
    ]
    assert found == [], "SQL belongs in fnctl/state/, behind a named method:\n" + "\n".join(found)
