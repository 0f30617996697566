"""`fnctl invoke --local`: build (cached) and run a function in a fresh sandbox with its production limits.

With `keep_warm` the instance stays up, found again by a key of everything that defines it (spec, code,
runtime, base, secrets), so the edit → invoke loop skips the container start; the warm path never loads
the docker SDK.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets as _secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnctl.errors import BadInput, FnctlError
from fnctl.images import RUNTIME_FILES, cache_dir, source_files
from fnctl.model import Function
from fnctl.project import Project
from fnctl.schemas import data_dir
from fnctl.secretref import fingerprint, resolve
from fnctl.transport import UnixSocketTransport

WARM_LABEL = "io.fnctl.local-warm"


@dataclass(frozen=True)
class LocalResult:
    function: str
    outcome: Any  # instances.Outcome
    warm: bool  # True when a kept-warm instance answered


def find_function(project: Project, target: str) -> Function:
    """`target` is a function name in the project's manifests, or a manifest file holding one function."""
    from fnctl.validate import validate_paths

    path = Path(target)
    by_path = path.suffix in (".yaml", ".yml") or path.is_file()
    result = validate_paths(project, [path] if by_path else None)
    if not result.ok:
        raise BadInput("the manifests are invalid:\n" + "\n".join(d.render() for d in result.diagnostics))
    functions = result.state.functions
    if by_path:
        if len(functions) != 1:
            raise BadInput(f"{target} defines {len(functions)} functions; name one instead")
        return functions[0]
    for function in functions:
        if function.name == target:
            return function
    known = ", ".join(sorted(f.name for f in functions)) or "none"
    raise BadInput(f"no function named {target!r} in the manifests (known: {known})")


def invoke_local(project: Project, target: str, event: Any, payload_size: int, *, keep_warm: bool,
                 on_progress: Callable[[str], None]) -> LocalResult:
    function = find_function(project, target)
    assert function.document is not None
    source = function.document.file.parent / function.source
    secret_values = resolve(function, project.root)
    key = warm_key(function, source, project.base_image, secret_values)
    if keep_warm:
        warm = _invoke_warm(function, key, event, payload_size)
        if warm is not None:
            return LocalResult(function.name, warm, warm=True)
    return _invoke_cold(project, function, source, secret_values, key, event, payload_size,
                        keep_warm=keep_warm, on_progress=on_progress)


def _invoke_warm(function: Function, key: str, event: Any, payload_size: int) -> Any:
    from fnctl import instances

    socket_dir = instances.runtime_root() / f"w{key[:11]}"
    if not (socket_dir / instances.SOCKET_NAME).exists():
        return None
    transport = UnixSocketTransport(str(socket_dir / instances.SOCKET_NAME))
    try:
        transport.connect(timeout=0.3)  # a live runtime answers in about a millisecond; a stale socket never
    except FnctlError:
        transport.close()
        return None
    # The container id is only needed to kill the instance after a limit; it is looked up then.
    instance = instances.Instance(f"w{key[:11]}", "", socket_dir, transport, function)
    try:
        outcome = instances.invoke(instance, event, payload_size=payload_size)
    finally:
        transport.close()
    return outcome


def _invoke_cold(project: Project, function: Function, source: Path, secret_values: dict[str, str], key: str,
                 event: Any, payload_size: int, *, keep_warm: bool, on_progress: Callable[[str], None]) -> LocalResult:
    from fnctl import dockerio, images, instances
    from fnctl.sandbox import labels

    on_progress(f"image for {function.name}")
    image = images.ensure_image(project.name, function.name, source, project.base_image, on_progress)
    on_progress(f"{'built' if image.built else 'cached'} {image.tag}; starting a sandbox")
    extra = {"local": "true"} | ({"local_warm": key[:11]} if keep_warm else {})
    if keep_warm:  # a warm instance of an older version, or one that no longer answered, is stale now
        root = instances.runtime_root()
        for stale in dockerio.list_containers(labels(project.name, function.name, local_warm="")):
            dockerio.kill(stale.id)
            _remove_socket_dir(root, stale.labels.get("io.fnctl.socket-dir", ""))
        # Also left behind when the container went without fnctl (`docker rm -f`, an engine restart).
        _remove_socket_dir(root, str(root / f"w{key[:11]}"))
    instance = instances.start(function, image=image.tag, revision="local", secret_values=secret_values,
                               labels=labels(project.name, function.name, **extra),
                               instance_id=f"w{key[:11]}" if keep_warm else None)
    try:
        outcome = instances.invoke(instance, event, payload_size=payload_size)
    finally:
        if keep_warm:
            instance.transport.close()
        else:
            instances.kill(instance)
    return LocalResult(function.name, outcome, warm=False)


def _remove_socket_dir(root: Path, path: str) -> None:
    """Remove an instance's socket directory; only ever one directly inside `root`, whatever a label says."""
    if path and Path(path).parent == root and Path(path).name not in ("", ".."):
        shutil.rmtree(path, ignore_errors=True)


def warm_key(function: Function, source: Path, base_image: str, secret_values: dict[str, str]) -> str:
    """Changes whenever anything the instance was started from changes."""
    digest = hashlib.sha256(json.dumps(function.spec, sort_keys=True, default=str).encode())
    digest.update(f"{function.name}\0{base_image}\0".encode())
    runtime = data_dir("runtime-image")
    for path in [*(runtime / name for name in RUNTIME_FILES), *source_files(source)]:
        stat = path.stat()  # size and mtime: cheap, and any edit changes them
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    digest.update(fingerprint(secret_values, _local_salt()).encode())
    return digest.hexdigest()


def _local_salt() -> str:
    """A random per-machine salt, so a hash of secret values in a socket path reveals nothing."""
    path = cache_dir() / "local-salt"
    try:
        return path.read_text()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        salt = _secrets.token_hex(16)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(salt)
        return salt
