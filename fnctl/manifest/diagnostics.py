"""Diagnostics: one problem in a manifest, with its file, line, column and JSON path, and their rendering."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

JsonPath = tuple[str | int, ...]

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class Position(NamedTuple):  # a tuple: a manifest has one per value, and tuples are cheap to make
    line: int  # 1-based; 0 when the problem has no place in a file (a missing path)
    column: int


@dataclass(frozen=True)
class Diagnostic:
    """One problem: where it is (file, line and column, JSON path) and what it is."""

    file: Path
    position: Position
    path: JsonPath
    message: str
    in_code: bool = False  # about a function's code (a type error), not a manifest value: no JSON path

    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (str(self.file), self.position.line, self.position.column, json_path(self.path), self.message)

    def render(self) -> str:
        """`file.yaml:LINE:COL: $.json.path: message`, the format editors and CI annotations understand."""
        where = display_path(self.file)
        if self.position.line:
            where += f":{self.position.line}:{self.position.column}"
        if self.in_code:
            return f"{where}: {self.message}"
        return f"{where}: {json_path(self.path)}: {self.message}"

    def as_json(self) -> dict[str, Any]:
        return {
            "file": display_path(self.file),
            "line": self.position.line,
            "column": self.position.column,
            "path": None if self.in_code else json_path(self.path),
            "message": self.message,
        }


def json_path(path: JsonPath) -> str:
    """`("spec", "steps", 1, "setWeight")` → `$.spec.steps[1].setWeight`."""
    parts = ["$"]
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _PLAIN_KEY.match(part):
            parts.append(f".{part}")
        else:
            parts.append("[" + repr(part) + "]")
    return "".join(parts)


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else as given."""
    try:
        return os.path.relpath(path) if path.is_absolute() and Path.cwd() in path.parents else str(path)
    except ValueError:
        return str(path)


def sorted_diagnostics(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    unique = {(d.sort_key()): d for d in diagnostics}
    return [unique[k] for k in sorted(unique)]
