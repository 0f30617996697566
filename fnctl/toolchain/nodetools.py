"""The pinned build tools (node-tools/package.json and its lock: esbuild, TypeScript 7's native tsc,
@types/node), installed with `npm ci` into fnctl's cache under a directory named by the lock's hash.

scripts/install-node-tools.sh installs them ahead of time; a build that finds them missing installs them
itself, so an fnctl installed from a wheel works too. Both the compilers are native binaries: fnctl runs
them directly, without a Node.js process in front (that saves ~40 ms a call).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fnctl.errors import BuildFailed
from fnctl.manifest.project import cache_dir
from fnctl.manifest.schemas import data_dir
from fnctl.toolchain import npm
from fnctl.toolchain.npm import OnLine

_COMPLETE = ".complete"  # written last: a directory without it is an interrupted install


@dataclass(frozen=True)
class Tools:
    esbuild: Path
    tsc: Path
    types: Path  # node_modules/@types: @types/node, the Node 22 API as handlers see it
    key: str  # the lock's hash: what changes when a tool's version does


def tools_key() -> str:
    return hashlib.sha256((data_dir("node-tools") / "package-lock.json").read_bytes()).hexdigest()[:16]


def ensure_tools(on_line: OnLine = lambda _: None) -> Tools:
    """The pinned tools, installed first if they are not in the cache yet."""
    key = tools_key()
    target = cache_dir() / "node-tools" / key
    if not (target / _COMPLETE).is_file():
        _install(target, on_line)
    modules = target / "node_modules"
    return Tools(
        esbuild=_native(modules, "@esbuild/*/bin/esbuild", "esbuild"),
        tsc=_native(modules, "@typescript/typescript-*/lib/tsc", "tsc"),
        types=modules / "@types",
        key=key,
    )


def _install(target: Path, on_line: OnLine) -> None:
    on_line(f"npm ci: fnctl's Node.js build tools into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(data_dir("node-tools") / name, staging / name)
        npm.ci(staging, production=False)
        (staging / _COMPLETE).touch()
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except OSError as exc:
        if not (target / _COMPLETE).is_file():  # else another build installed them meanwhile
            raise BuildFailed(f"cannot install fnctl's Node.js build tools into {target}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _native(modules: Path, pattern: str, name: str) -> Path:
    """The platform package's binary (npm installed only this host's), else the package's own launcher."""
    found = sorted(modules.glob(pattern))
    if found:
        return found[0]
    launcher = modules / ".bin" / name
    if launcher.exists():
        return launcher
    raise BuildFailed(
        f"{name} is missing from fnctl's Node.js build tools in {modules}; reinstall them with "
        "bash scripts/install-node-tools.sh"
    )
