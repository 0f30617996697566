"""What every runtime's staging shares: copying a function's code into a build context."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from fnctl.manifest.source import source_files

OnLine = Callable[[str], None]


def copy_code(source: Path, code: Path) -> None:
    """Copy the function's files (caches, VCS metadata and node_modules left out) into `code`, symlinks
    followed (the manifest checks refused any that leave the project)."""
    for path in source_files(source):
        target = code / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target, follow_symlinks=True)
    code.mkdir(exist_ok=True)
