"""A function's npm dependencies: `npm ci --omit=dev --ignore-scripts` for linux-x64 from its
package-lock.json, on the host, into fnctl's cache under the hash of the lock (and package.json), so the
image gets them without any network inside a container and an unchanged lock is never installed twice.

Native addons need a compiler at install (node-gyp runs from an install script, which fnctl never runs):
one without a prebuilt linux-x64 binary in its package is refused, by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from fnctl.errors import BuildFailed
from fnctl.manifest.project import cache_dir
from fnctl.manifest.source import code_hash, source_files
from fnctl.toolchain import npm
from fnctl.toolchain.npm import TARGET_PLATFORM, OnLine
from fnctl.toolchain.packages import DEPENDENCY_FIELDS, LOCK, PACKAGE, is_local

_COMPLETE = ".complete"
_FORMAT = "1"  # bump when what an install puts in the cache changes


def dependencies_key(source: Path) -> str | None:
    """The hash naming the install of `source`'s lock; None when it has no dependencies to install."""
    package, lock = source / PACKAGE, source / LOCK
    if not package.is_file() or not lock.is_file() or not _has_dependencies(package):
        return None
    digest = hashlib.sha256(f"{_FORMAT};{' '.join(TARGET_PLATFORM)}\0".encode())
    digest.update(hashlib.sha256(package.read_bytes()).digest())
    digest.update(hashlib.sha256(lock.read_bytes()).digest())
    if _has_local_dependencies(package):  # installed from files of the source, which the lock does not pin
        digest.update(code_hash(source).encode())
    return digest.hexdigest()[:24]


def installed_modules(source: Path, on_line: OnLine) -> Path | None:
    """The node_modules/ of `source`'s production dependencies, installed first if not cached yet (None:
    it has none). Raises BuildFailed naming a native addon without a prebuilt linux-x64 binary."""
    key = dependencies_key(source)
    if key is None:
        return None
    target = cache_dir() / "npm-deps" / key
    if not (target / _COMPLETE).is_file():
        _install(source, target, on_line)
    return target / "node_modules"


def _install(source: Path, target: Path, on_line: OnLine) -> None:
    on_line(f"npm ci --omit=dev --ignore-scripts for linux-x64 ({source / LOCK}, cached by its hash)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        # the whole source (node_modules left out), so that `file:vendor/x.tgz` is found where it is said to be
        # and no .npmrc: npm's settings are fnctl's (a project .npmrc can name programs npm runs, such as `git`)
        for path in (p for p in source_files(source) if p.name != ".npmrc"):
            target_path = staging / path.relative_to(source)
            target_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target_path)
        npm.ci(staging, production=True)
        modules = staging / "node_modules"
        modules.mkdir(exist_ok=True)
        addons = addons_without_binary(modules)
        if addons:
            raise BuildFailed(
                "native addon" + ("s" if len(addons) > 1 else "") + f" without a prebuilt linux-x64 binary: "
                f"{', '.join(addons)} (fnctl installs with --ignore-scripts, so nothing is compiled; use a version "
                "that ships a linux-x64 prebuild, or a pure-JavaScript package)"
            )
        (staging / _COMPLETE).touch()
        shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if not (target / _COMPLETE).is_file():  # else another build installed the same lock meanwhile
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def addons_without_binary(modules: Path) -> list[str]:
    """The names of the installed packages that build a native addon (binding.gyp, `gypfile`) and ship no
    linux-x64 `.node` binary (prebuilds/<platform>/ of other platforms do not count)."""
    found: list[str] = []
    for package in _packages(modules):
        meta = _read_json(package / PACKAGE)
        if not ((package / "binding.gyp").is_file() or meta.get("gypfile") is True):
            continue
        binaries = [p.relative_to(package) for p in package.rglob("*.node")]
        if not any("prebuilds" not in p.parts or any("linux-x64" in part for part in p.parts) for p in binaries):
            found.append(str(meta.get("name") or package.name))
    return sorted(set(found))


def _packages(modules: Path) -> list[Path]:
    """Every package directory under `modules`, nested node_modules/ and @scopes included."""
    packages: list[Path] = []
    pending = [modules]
    while pending:
        directory = pending.pop()
        for entry in sorted(os.scandir(directory), key=lambda e: e.name) if directory.is_dir() else []:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            path = Path(entry.path)
            if entry.name.startswith("@"):
                pending.append(path)
            elif (path / PACKAGE).is_file():
                packages.append(path)
                pending.append(path / "node_modules")
    return packages


def _has_local_dependencies(package: Path) -> bool:
    meta = _read_json(package)
    sections = [meta.get(field) for field in DEPENDENCY_FIELDS]
    return any(is_local(spec) for section in sections if isinstance(section, dict) for spec in section.values())


def _has_dependencies(package: Path) -> bool:
    meta = _read_json(package)
    return any(isinstance(meta.get(f), dict) and meta[f] for f in ("dependencies", "optionalDependencies"))


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
