"""A function's source as fnctl sees it: the files of its code (caches and VCS metadata left out) and their
hash, which is part of a revision's identity."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_SKIP_DIRS = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", "node_modules"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


def source_files(source: Path) -> list[Path]:
    """The files that make up a function's code, sorted, without caches and VCS metadata."""
    files: list[Path] = []
    for directory, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        files += [Path(directory, n) for n in sorted(names) if not n.endswith(_SKIP_SUFFIXES)]
    return files


def code_hash(source: Path) -> str:
    """Hash of a function's code: file names and bytes."""
    digest = hashlib.sha256()
    for path in source_files(source):
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
