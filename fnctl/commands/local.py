"""`fnctl invoke --local`: build (cached) and run a function in a fresh sandbox with its production limits.

With `keep_warm` the instance stays up, found again by a key of everything that defines it (spec, code,
runtime, base, secrets), so the edit → invoke loop skips the container start. The warm path never loads
the docker SDK, and skips validation when the manifests, the project settings and the functions' source
trees are exactly what the last passing validation read (a record kept beside the warm instances:
fnctl.commands.localrecord).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets as _secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnctl.commands.localrecord import function_source, recorded_function, validated_function
from fnctl.data.caller import Caller
from fnctl.data.errors import DataError
from fnctl.data.plane import DataPlane
from fnctl.deploy.actor import actor
from fnctl.deploy.secrets import fingerprint, resolve
from fnctl.errors import BadInput, FnctlError
from fnctl.gateway.datacalls import CallSession, answer, call_failed, open_session, parse_policies
from fnctl.gateway.router import DataSettings
from fnctl.invocation.outcome import Failure, Outcome
from fnctl.invocation.protocol import CallFailed
from fnctl.manifest.model import Function, Policy, RunAs
from fnctl.manifest.project import Project
from fnctl.state import docstore
from fnctl.state.store import connect as connect_store

if TYPE_CHECKING:
    from fnctl.manifest.model import DesiredState


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
    data_from: Path | None = None,
) -> LocalResult:
    """Run `target` once: in a fresh sandbox, or with `keep_warm` in the kept-warm one while it still matches.
    The handler's `context.db` works on the project's local data file (its collections follow the manifests),
    or with `data_from` on the data file of that state store (a running one's: its collections and Policies)."""
    tried = ""
    if keep_warm:
        recorded = recorded_function(project, target)
        if recorded is not None:
            tried = warm_key(recorded, function_source(recorded), project.base_image, resolve(recorded, project.root))
            with LocalData.open(project, data_from, None) as data:
                warm = _invoke_warm(recorded, tried, event, payload_size, data)
            if warm is not None:
                return LocalResult(recorded.name, warm, warm=True)
    function, state = validated_function(project, target, record=keep_warm)
    source = function_source(function)
    secret_values = resolve(function, project.root)
    key = warm_key(function, source, project.base_image, secret_values)
    with LocalData.open(project, data_from, state) as data:
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
        )


class LocalData:
    """`context.db` for `invoke --local`: the data file (the project's own under the user's cache, or a state
    store's with `--data-from`), the Policies that apply (the manifests', or the store's live ones), and the
    calls of one invocation at a time, answered by the gateway broker's `answer` with the same rights,
    budget and procedure semantics. The caller is the operator running the command (every write is in the
    change log as `operator:<user>`); under `runAs: function` the function's own role."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.session: CallSession | None = None
        self._lock = threading.Lock()  # the transport answers calls on a pool of threads: one at a time here

    @classmethod
    @contextmanager
    def open(cls, project: Project, data_from: Path | None, state: DesiredState | None) -> Iterator[LocalData]:
        if data_from is not None:
            if not data_from.exists():
                raise BadInput(f"--data-from {data_from}: no state store there")
            documents = docstore.connect(docstore.data_path(data_from))
            plane = DataPlane(documents, _store_policies(data_from))
        else:
            documents = docstore.connect(local_data_path(project))
            policies = state.policies if state is not None else ()
            plane = DataPlane(documents, lambda: policies)
            if state is not None:  # the local file's collections follow the manifests (never dropping data)
                plane.sync_collections(state.collections, prune=False, force=False)
        try:
            yield cls(plane)
        finally:
            documents.close()

    def begin(self, function: Function) -> None:
        settings = DataSettings(
            run_as_function=function.run_as is RunAs.FUNCTION,
            transaction=function.transaction is not None,
            retries=0,
            db_operations=function.db_operations,
        )
        self.session = open_session(self.plane, Caller.operator(actor()), function.name, None, settings)

    def on_call(self, invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        with self._lock:
            if self.session is None:
                raise CallFailed("NoInvocation", "no invocation is in flight")
            try:
                return answer(self.plane, self.session, method, params)
            except DataError as error:
                raise call_failed(error) from None

    def finish(self, outcome: Outcome) -> Outcome:
        """The invocation's outcome after its data: a limit it hit fails it; a procedure commits only when
        the handler returned ok (a conflict fails it: nothing is re-run locally)."""
        session, self.session = self.session, None
        if session is None:
            return outcome
        if session.exceeded is not None:
            return replace(
                outcome,
                ok=False,
                result=None,
                failure=Failure.HANDLER_ERROR,
                message=f"LimitExceeded: {session.exceeded.detail_text}",
            )
        if session.txn is not None:
            if session.conflict is not None:
                session.txn.rollback()
                return replace(
                    outcome,
                    ok=False,
                    result=None,
                    failure=Failure.HANDLER_ERROR,
                    message=f"Conflict: {session.conflict.detail_text} (nothing was written)",
                )
            if not outcome.ok:
                session.txn.rollback()
                return outcome
            try:
                session.txn.commit()
            except DataError as error:
                return replace(
                    outcome,
                    ok=False,
                    result=None,
                    failure=Failure.HANDLER_ERROR,
                    message=f"{type(error).__name__}: {error.detail_text} (nothing was written)",
                )
        return outcome


def local_data_path(project: Project) -> Path:
    """The project's local data file for `invoke --local`, under the user's cache (one per project root)."""
    from fnctl.engine.images import cache_dir

    where = hashlib.sha256(os.path.realpath(project.root).encode()).hexdigest()[:16]
    return cache_dir() / "local-data" / f"{project.name}-{where}.data.db"


def _store_policies(state_file: Path) -> Callable[[], tuple[Policy, ...]]:
    """The live Policies of the state store at `state_file`, read once."""
    store = connect_store(state_file)
    try:
        policies = parse_policies(store.resources("Policy"))
    finally:
        store.close()
    return lambda: policies


def _invoke_warm(function: Function, key: str, event: Any, payload_size: int, data: LocalData) -> Any:
    from fnctl.engine import instances

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
    data: LocalData,
    *,
    keep_warm: bool,
    on_progress: Callable[[str], None],
) -> LocalResult:
    from fnctl.engine import dockerio, images, instances
    from fnctl.engine.sandbox import labels

    on_progress(f"image for {function.name}")
    image = images.ensure_image(
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
        boost=True,  # a local run waits for the start: not throttled by the quota until ready
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
    from fnctl.manifest.source import source_files
    from fnctl.runtimes import runtime_for

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
    from fnctl.engine.images import cache_dir

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
