"""The semantic checks of a function's code location: its source directory inside the project (lexically and
through symlinks, its own entries included) and, for Python, its handler found in that source (parsed with
`ast`, never imported). Paths are plain strings and results are cached: a thousand functions make pathlib's
overhead and repeated system calls count (benchmarks/bench_validate.py).
"""

from __future__ import annotations

import ast
import os
from collections import deque
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from fnctl.manifest.model import Finding, Function


def clear_caches() -> None:
    """Forget what earlier runs in this process saw: the files may have changed since."""
    for cached in (_top_level_names, _escaping_symlink, _real, _real_parent, _real_path):
        cached.cache_clear()


def source_and_handler(function: Function, root: Path) -> Iterator[Finding]:
    if function.document is None:
        return
    # `..` is taken lexically from the manifest's real directory (a symlinked path to the project is fine);
    # paths are plain strings here: a thousand functions make pathlib's overhead count
    base = _real_parent(function.document.file)
    source = os.path.normpath(os.path.join(base, function.source))
    real_root = _real_path(root)
    at = ("spec", "source")
    if os.path.isabs(function.source) or not _within(real_root, source):
        yield function, at, f"source {function.source!r} escapes the project root {root}"
        return
    if not _within(real_root, _real(source)):
        yield function, at, f"source {function.source!r} is a symlink pointing outside the project"
        return
    if not os.path.isdir(source):
        yield function, at, f"source directory {function.source!r} does not exist"
        return
    escaping = _escaping_symlink(source, real_root)
    if escaping:
        yield function, at, f"{escaping} inside the source is a symlink pointing outside the project"
        return
    # Python handlers are checked here; other runtimes' (parsed by their own tools) by fnctl.runtimes
    problem = handler_problem(source, function.handler) if function.runtime.startswith("python") else None
    if problem:
        yield function, ("spec", "handler"), problem


@cache
def _real_parent(file: Path) -> str:
    """The real directory of a manifest file: asked for once per function, computed once per file."""
    return _real(os.path.abspath(file.parent))


@cache
def _real_path(path: Path) -> str:
    return _real(os.path.abspath(path))


@cache
def _real(path: str) -> str:
    """os.path.realpath of an absolute, normalised `path`, one lstat per new component (parents are cached)."""
    parent, name = os.path.split(path)
    if not name or parent == path:
        return path
    full = os.path.join(_real(parent), name)
    return os.path.realpath(full) if os.path.islink(full) else full


def _within(base: str, path: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


@cache
def _escaping_symlink(source: str, root: str) -> str | None:
    """The first entry below `source` (in name order) that is a symlink resolving outside `root`."""
    if not _any_escaping_symlink(source, root):
        return None  # the common case, found without sorting every directory
    pending = deque([source])
    while pending:
        directory = pending.popleft()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                if not _within(root, os.path.realpath(entry.path)):
                    return os.path.relpath(entry.path, source)
            elif entry.is_dir():
                pending.append(entry.path)
    return None


def _any_escaping_symlink(source: str, root: str) -> bool:
    pending = [source]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        if not _within(root, os.path.realpath(entry.path)):
                            return True
                    elif entry.is_dir():
                        pending.append(entry.path)
        except OSError:
            continue
    return False


def handler_problem(source: str, handler: str) -> str | None:
    """Why `handler` cannot be found in the directory `source` (parsed, never imported), or None."""
    if ":" in handler:
        file_part, attr = handler.rsplit(":", 1)
        candidates = [file_part]
        shown = file_part
    else:
        module, attr = handler.rsplit(".", 1)
        rel = os.path.join(*module.split("."))
        candidates = [rel + ".py", os.path.join(rel, "__init__.py")]
        shown = module
    paths = [os.path.join(source, c) for c in candidates]
    if not _within(source, os.path.normpath(paths[0])):
        return f"handler file {shown!r} is outside the source directory"
    found = next((i for i, path in enumerate(paths) if os.path.isfile(path)), None)
    if found is None:
        return f"handler module {shown!r} not found in the source directory (looked for {', '.join(candidates)})"
    names, error = _top_level_names(paths[found])
    found_name = candidates[found]
    if error:
        return f"cannot parse {found_name}: {error}"
    if attr not in names and "*" not in names:  # a star import may provide it: only running the code could tell
        return f"{found_name} defines no top-level {attr!r}"
    return None


@cache
def _top_level_names(path: str) -> tuple[frozenset[str], str | None]:
    try:
        tree = ast.parse(_read(path), filename=path)
    except SyntaxError as exc:
        return frozenset(), f"line {exc.lineno}: {exc.msg}" if exc.lineno else exc.msg
    except (OSError, ValueError) as exc:
        return frozenset(), str(exc)
    except (RecursionError, MemoryError):
        return frozenset(), "the code is nested too deeply to parse"
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names), None


def _read(path: str) -> bytes:
    """The bytes of a file, through the system calls alone: a file object costs more than a small handler."""
    chunks, fd = [], os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)
