"""Manifest files: which files under the paths given are manifests, how large one may be, and the `Document`
a file's YAML yields (built by `fnctl.manifest.loader`). Apart from the loader, so that what only reads
documents (the kinds, the model, `invoke --local`'s validation record) does not load the YAML parser."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnctl.manifest.diagnostics import Diagnostic, JsonPath, Position

MAX_FILE_BYTES = 4 * 2**20
MANIFEST_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Document:
    """One YAML document of a manifest file, as plain data, with where each value starts.

    `marks` holds the parser's marks (0-based line and column), made into a `Position` only when asked
    for: most documents are valid, and their positions are never needed. For a file read on the fast path
    they are not even found until then.
    """

    file: Path
    index: int
    data: Any
    marks: Mapping[JsonPath, Any] = field(compare=False, repr=False)

    def position(self, path: Iterable[str | int]) -> Position:
        """Position of the value at `path`, or of its nearest ancestor that has one."""
        key, marks = tuple(path), self.marks
        while key and key not in marks:
            key = key[:-1]
        mark = marks.get(key)
        return Position(mark.line + 1, mark.column + 1) if mark is not None else Position(1, 1)

    @property
    def positions(self) -> dict[JsonPath, Position]:
        return {path: Position(m.line + 1, m.column + 1) for path, m in self.marks.items()}


def find_manifest_files(paths: Iterable[Path]) -> tuple[list[Path], list[Diagnostic]]:
    """Manifest files under `paths` (files as given, directories recursively), sorted; missing paths are errors."""
    found: set[Path] = set()
    errors: list[Diagnostic] = []
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.update(Path(root, f) for f in files if f.endswith(MANIFEST_SUFFIXES))
        elif path.is_file():
            found.add(path)
        else:
            errors.append(Diagnostic(path, Position(0, 0), (), f"no such file or directory: {path}"))
    return sorted(found), errors
