"""A function's package.json and package-lock.json, read without npm: is the lock in step with package.json,
does `engines.node` admit the runtime's Node version. Pure (the caller reads the files); problems are placed
at the line and column of the key they are about."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnctl.toolchain.problems import CodeProblem, position_in
from fnctl.toolchain.semver import Version, satisfies

PACKAGE = "package.json"
LOCK = "package-lock.json"
DEPENDENCY_FIELDS = ("dependencies", "devDependencies", "optionalDependencies", "peerDependencies")


@dataclass(frozen=True)
class PackageFiles:
    """The texts of package.json and package-lock.json in a source directory (None: no such file)."""

    source: Path
    package: str | None
    lock: str | None


def package_problems(files: PackageFiles, node: Version | None) -> list[CodeProblem]:
    """Every problem of package.json and its lock, each at its place; `engines.node` against `node` unless None."""
    if files.package is None:
        if files.lock is not None:
            return [_at(files, LOCK, None, "package-lock.json without a package.json beside it")]
        return []
    package, problem = _json(files, PACKAGE, files.package)
    if problem:
        return [problem]
    problems = _engine_problems(files, package, node) if node else []
    declared = {field: _mapping(package.get(field)) for field in DEPENDENCY_FIELDS}
    problems += _local_problems(files, declared)
    if files.lock is None:
        if any(declared.values()):
            problems.append(
                _at(
                    files,
                    PACKAGE,
                    None,
                    "package.json declares dependencies but there is no package-lock.json: "
                    "run `npm install` and commit the lock (fnctl installs exactly what it pins)",
                )
            )
        return problems
    lock, problem = _json(files, LOCK, files.lock)
    if problem:
        return problems + [problem]
    if not isinstance(lock.get("packages"), dict) or int(lock.get("lockfileVersion") or 0) < 2:
        return problems + [
            _at(
                files,
                LOCK,
                "lockfileVersion",
                "package-lock.json is in the format of npm 6 or "
                "older: regenerate it with `npm install` (npm 7 or newer)",
            )
        ]
    root = _mapping(lock["packages"].get(""))
    for field, wanted in declared.items():
        locked = _mapping(root.get(field))
        for name in sorted(wanted.keys() | locked.keys()):
            if wanted.get(name) == locked.get(name):
                continue
            if name not in locked:
                detail = f"{field}.{name} is not in package-lock.json"
            elif name not in wanted:
                detail = f"package-lock.json still lists {field}.{name}, which package.json no longer does"
            else:
                detail = f"{field}.{name} is {wanted[name]!r} in package.json but {locked[name]!r} in the lock"
            problems.append(
                _at(
                    files,
                    PACKAGE,
                    (field, name) if name in wanted else field,
                    f"package-lock.json is out of date with package.json: {detail}; run `npm install`",
                )
            )
    return problems


def _engine_problems(files: PackageFiles, package: dict[str, Any], node: Version) -> list[CodeProblem]:
    engines = package.get("engines")
    wanted = engines.get("node") if isinstance(engines, dict) else None
    if wanted is None:
        return []
    version = ".".join(map(str, node))
    admitted = satisfies(node, wanted) if isinstance(wanted, str) else None
    if admitted is None:
        return [_at(files, PACKAGE, ("engines", "node"), f"engines.node {wanted!r} is not a version range npm reads")]
    if not admitted:
        return [
            _at(
                files,
                PACKAGE,
                ("engines", "node"),
                f"engines.node {wanted!r} does not admit Node.js {version}, the runtime's version",
            )
        ]
    return []


def is_local(spec: object) -> bool:
    """A dependency installed from a path (`file:`, `link:`, `./x`, `../x`, `/x`), not from the registry."""
    return isinstance(spec, str) and spec.startswith(("file:", "link:", "./", "../", "/", "~"))


def _local_problems(files: PackageFiles, declared: dict[str, dict[str, Any]]) -> list[CodeProblem]:
    """A dependency from a path outside the source directory would carry files from elsewhere on the host
    into the image."""
    root = os.path.normpath(os.path.abspath(files.source))
    problems = []
    for field, specs in declared.items():
        for name, spec in sorted(specs.items()):
            if not is_local(spec):
                continue
            path = os.path.normpath(os.path.join(root, os.path.expanduser(spec.split(":", 1)[-1])))
            if path != root and not path.startswith(root + os.sep):
                problems.append(
                    _at(
                        files,
                        PACKAGE,
                        (field, name),
                        f"{field}.{name}: {spec!r} lies outside the function's "
                        "source directory, and only that directory goes into the image",
                    )
                )
    return problems


def _json(files: PackageFiles, name: str, text: str) -> tuple[dict[str, Any], CodeProblem | None]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        line, column = getattr(exc, "lineno", 0), getattr(exc, "colno", 0)
        return {}, CodeProblem(files.source / name, line, column, f"not valid JSON: {getattr(exc, 'msg', exc)}")
    if not isinstance(data, dict):
        return {}, CodeProblem(files.source / name, 1, 1, f"{name} must hold a JSON object")
    return data, None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _at(files: PackageFiles, name: str, key: str | tuple[str, str] | None, message: str) -> CodeProblem:
    """A problem of `name`, placed at `key` (or `(section, key)`, the key inside that section) when found."""
    text = (files.package if name == PACKAGE else files.lock) or ""
    offset = 0
    for part in (key,) if isinstance(key, str) else key or ():
        found = re.compile(rf'"{re.escape(part)}"\s*:').search(text, offset)
        if found is None:
            break
        offset = found.start()
    line, column = position_in(text, offset)
    return CodeProblem(files.source / name, line, column, message)
