"""`fnctl invoke --local`: build (cached) and run a function in a fresh sandbox with its production limits.

With `keep_warm` the instance stays up, found again by a key of everything that defines it (spec, code,
runtime, base, secrets), so the edit → invoke loop skips the container start. Neither path loads the docker
SDK (an image build aside), and both skip validation when the manifests, the project settings and the
functions' source trees are exactly what the last passing validation read (a record kept beside the warm
instances: fnctl.commands.localrecord). `context.db` is opened on a handler's first call
(`fnctl.commands.localdata`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets as _secrets
import shutil
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from fnctl.commands.localrecord import Validator, function_source, recorded_function, validated_function
from fnctl.deploy.secrets import fingerprint, resolve
from fnctl.engine import dockerio, instances
from fnctl.engine.sandbox import labels
from fnctl.errors import BadInput, FnctlError
from fnctl.invocation.outcome import Outcome
from fnctl.invocation.protocol import CallFailed
from fnctl.manifest.model import DesiredState, Function
from fnctl.manifest.project import Project, cache_dir
from fnctl.manifest.source import source_files
from fnctl.runtimes import runtime_for
from fnctl.state.location import StateLocation


@dataclass(frozen=True)
class LocalResult:
    function: str
    outcome: Any  # instances.Outcome
    warm: bool  # True when a kept-warm instance answered


def invoke_local(
    project: Project,
    target: str,
    event: Any,
    payload_size: int,
    *,
    keep_warm: bool,
    on_progress: Callable[[str], None],
    open_data: DataOpener,
    validate: Validator,
    ensure_image: ImageMaker,
    data_from: StateLocation | None = None,
) -> LocalResult:
    """Run `target` once: in a fresh sandbox, or with `keep_warm` in the kept-warm one while it still matches.
    The handler's `context.db` (`open_data`: `fnctl.commands.localdata.LocalData.open`) works on the project's
    local data file (its collections follow the manifests), or with `data_from` on the data file of that
    state store (a running one's: its collections and Policies). `validate` (`fnctl.runtimes.validation.
    validate_project`) runs only when the record of the last passing validation does not stand, and
    `ensure_image` (`fnctl.engine.images.ensure_image`) only when no kept-warm instance answers."""
    if data_from is not None and data_from.url is None and not data_from.path.exists():
        raise BadInput(f"--data-from {data_from}: no state store there")
    # While nothing validation read has changed since it last passed, the recorded function is the one it
    # would give; the desired state (context.db's collections and Policies) is then validated only if the
    # handler calls context.db.
    recorded = recorded_function(project, target)
    state: Callable[[], DesiredState | None] = partial(_desired_state, project, target, validate)
    tried = ""
    if keep_warm and recorded is not None:
        tried = warm_key(recorded, function_source(recorded), project.base_image, resolve(recorded, project.root))
        with _OnFirstCall(open_data, project, data_from, state) as data:
            warm = _invoke_warm(recorded, tried, event, payload_size, data)
        if warm is not None:
            return LocalResult(recorded.name, warm, warm=True)
    if recorded is not None and not keep_warm:
        function = recorded
    else:  # a kept-warm instance that no longer answers is started again from a fresh validation
        function, validated = validated_function(project, target, validate, record=True)
        state = partial(_given, validated)
    source = function_source(function)
    secret_values = resolve(function, project.root)
    key = warm_key(function, source, project.base_image, secret_values)
    with _OnFirstCall(open_data, project, data_from, state) as data:
        if keep_warm and key != tried:  # not twice: a socket that never answers costs its connect timeout
            warm = _invoke_warm(function, key, event, payload_size, data)
            if warm is not None:
                return LocalResult(function.name, warm, warm=True)
        return _invoke_cold(
            project,
            function,
            source,
            secret_values,
            key,
            event,
            payload_size,
            data,
            keep_warm=keep_warm,
            on_progress=on_progress,
            ensure_image=ensure_image,
        )


def _desired_state(project: Project, target: str, validate: Validator) -> DesiredState:
    return validated_function(project, target, validate, record=False)[1]


def _given(state: DesiredState) -> DesiredState:
    return state


class MadeImage(Protocol):
    @property
    def tag(self) -> str: ...

    @property
    def built(self) -> bool: ...


class ImageMaker(Protocol):
    """`fnctl.engine.images.ensure_image`: the function's image, built if the engine does not have it. Handed in
    by the caller: a kept-warm invocation never needs it, nor the build machinery it imports."""

    def __call__(
        self,
        project: str,
        function: str,
        source: Path,
        base_image: str,
        on_line: Callable[[str], None],
        *,
        runtime_name: str,
    ) -> MadeImage: ...


class DataCalls(Protocol):
    """What a local invocation needs of `context.db` (`fnctl.commands.localdata.LocalData`)."""

    def begin(self, function: Function) -> None: ...

    def on_call(self, invocation_id: str, method: str, params: dict[str, Any]) -> Any: ...

    def finish(self, outcome: Outcome) -> Outcome: ...


# Opens `context.db` for a project: its local data file, or with `data_from` a state store's; `state` is the
# validated desired state whose collections and Policies apply (None: the file's as they are).
DataOpener = Callable[[Project, "StateLocation | None", "DesiredState | None"], AbstractContextManager[DataCalls]]


class _OnFirstCall:
    """`context.db` of a local invocation, opened when its handler first calls it: most handlers never do,
    and loading the data plane costs more than a warm invocation's whole work."""

    def __init__(
        self,
        open_data: DataOpener,
        project: Project,
        data_from: StateLocation | None,
        state: Callable[[], DesiredState | None],
    ):
        self._open_data, self._project, self._data_from, self._state = open_data, project, data_from, state
        self._opened = ExitStack()
        self._calls: DataCalls | None = None
        self._function: Function | None = None
        self._lock = threading.Lock()  # calls come from the transport's pool of threads

    def __enter__(self) -> _OnFirstCall:
        return self

    def __exit__(self, *exc: object) -> None:
        self._opened.close()

    def begin(self, function: Function) -> None:
        with self._lock:
            self._function = function
            if self._calls is not None:
                self._calls.begin(function)

    def on_call(self, invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        with self._lock:
            if self._calls is None:
                if self._function is None:
                    raise CallFailed("NoInvocation", "no invocation is in flight")
                try:
                    opened = self._open_data(self._project, self._data_from, self._state())
                    calls = self._opened.enter_context(opened)
                except FnctlError as error:
                    raise CallFailed("DataUnavailable", error.message) from None
                calls.begin(self._function)
                self._calls = calls
            calls = self._calls
        return calls.on_call(invocation_id, method, params)

    def finish(self, outcome: Outcome) -> Outcome:
        with self._lock:
            calls, self._function = self._calls, None
        return outcome if calls is None else calls.finish(outcome)


def _invoke_warm(function: Function, key: str, event: Any, payload_size: int, data: _OnFirstCall) -> Any:
    socket_dir = instances.runtime_root() / f"w{key[:11]}"
    container_id = instances.recorded_container(socket_dir)
    if not container_id:
        return None
    transport = instances.host_transport(socket_dir, container_id)
    try:
        # A live runtime connects within its scan interval (~20 ms); a gone one never.
        transport.connect(timeout=0.3)
    except FnctlError:
        transport.close()
        return None
    instance = instances.Instance(f"w{key[:11]}", container_id, socket_dir, transport, function)
    transport.on_call = data.on_call
    data.begin(function)
    try:
        outcome = data.finish(instances.invoke(instance, event, payload_size=payload_size))
    finally:
        transport.close()
    return outcome


def _invoke_cold(
    project: Project,
    function: Function,
    source: Path,
    secret_values: dict[str, str],
    key: str,
    event: Any,
    payload_size: int,
    data: _OnFirstCall,
    *,
    keep_warm: bool,
    on_progress: Callable[[str], None],
    ensure_image: ImageMaker,
) -> LocalResult:
    on_progress(f"image for {function.name}")
    image = ensure_image(
        project.name, function.name, source, project.base_image, on_progress, runtime_name=function.runtime
    )
    on_progress(f"{'built' if image.built else 'cached'} {image.tag}; starting a sandbox")
    extra = {"local": "true"} | ({"local_warm": key[:11]} if keep_warm else {})
    if keep_warm:  # a warm instance of an older version, or one that no longer answered, is stale now
        root = instances.runtime_root()
        for stale in dockerio.list_containers(labels(project.name, function.name, local_warm="")):
            dockerio.kill(stale.id)
            _remove_socket_dir(root, stale.labels.get("io.fnctl.socket-dir", ""))
        # Also left behind when the container went without fnctl (`docker rm -f`, an engine restart).
        _remove_socket_dir(root, str(root / f"w{key[:11]}"))
    instance = instances.start(
        function,
        image=image.tag,
        revision="local",
        secret_values=secret_values,
        labels=labels(project.name, function.name, **extra),
        instance_id=f"w{key[:11]}" if keep_warm else None,
    )
    instance.transport.on_call = data.on_call
    data.begin(function)
    try:
        outcome = data.finish(instances.invoke(instance, event, payload_size=payload_size))
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
    language = runtime_for(function.runtime)
    digest = hashlib.sha256(json.dumps(function.spec, sort_keys=True, default=str).encode())
    digest.update(f"{function.name}\0{language.base_image(base_image)}\0".encode())
    runtime = language.runtime_dir()
    for path in [*(runtime / name for name in language.runtime_files), *source_files(source)]:
        status = path.stat()  # size and mtime: cheap, and any edit changes them
        digest.update(f"{path}\0{status.st_size}\0{status.st_mtime_ns}\0".encode())
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
