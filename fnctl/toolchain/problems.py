"""A problem in a function's code or package files, where a compiler or fnctl found it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CodeProblem:
    """One problem at FILE:LINE:COL (1-based; line 0 when the tool gave no place)."""

    file: Path
    line: int
    column: int
    message: str

    def render(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}" if self.line else f"{self.file}: {self.message}"


def position_in(text: str, offset: int) -> tuple[int, int]:
    """The 1-based line and column of `offset` in `text`."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1
