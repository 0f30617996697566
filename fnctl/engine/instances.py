"""One sandboxed instance: its socket directory, its container, its connection, and the typed failures of
an invocation (timeout, out of memory, too large, process limit, disk full, crash, import error).

The socket directory is the sandbox's only host path, and it is read-only inside the sandbox: made here
(mode 0755, owned by the host user, inside the private `runtime_root`), holding only the host processes'
listeners (`fnctl.invocation.rendezvous.Rendezvous`) and the container's ID (`CONTAINER_FILE`, written once the container
exists, so that a later process can check its peer without asking the engine).

An instance whose invocation hit a limit that can leave it broken (timeout, crash, OOM, process limit) is
killed; the caller replaces it.
"""

from __future__ import annotations

import json
import os
import secrets as _secrets
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fnctl.engine import dockerio
from fnctl.engine.sandbox import GVISOR_RUNTIME, boosted, container_spec, cpu_quota
from fnctl.errors import EngineUnavailable, FnctlError
from fnctl.invocation.outcome import RECYCLE, Failure, Outcome, outcome_of
from fnctl.invocation.protocol import ConnectionLost, InvocationResult, RuntimeStartFailed
from fnctl.invocation.rendezvous import Rendezvous, container_peer
from fnctl.invocation.transport import TransportTimeout, UnixSocketTransport
from fnctl.manifest.model import Function, Isolation

START_TIMEOUT = 30.0
CONTAINER_FILE = "container-id"  # in the socket directory: the container the runtime must connect from
SOCKET_DIR_MODE = 0o755  # the sandbox's uid lists it (to find listeners) and connects; it writes nothing


class StartFailed(FnctlError):
    """The instance never became ready: the handler did not load, or the container died at start."""


def runtime_root() -> Path:
    """Where instance socket directories live: short paths (a socket path must fit in 108 bytes), private."""
    if os.geteuid() == 0:
        base = Path("/run/fnctl")
    else:
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/fnctl-{os.geteuid()}") / "fnctl"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    return base


def make_socket_dir(path: Path) -> None:
    """An instance's socket directory, owned by this user; mounted read-only into the sandbox."""
    path.mkdir(mode=0o700)
    os.chmod(path, SOCKET_DIR_MODE)  # mkdir's mode is cut by the umask


def recorded_container(socket_dir: Path) -> str:
    """The container ID written when the instance started ("" when there is none to read)."""
    try:
        return (socket_dir / CONTAINER_FILE).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return ""


def host_transport(socket_dir: str | Path, container_id: str) -> UnixSocketTransport:
    """A transport that accepts only the runtime of `container_id` (read from the socket directory when the
    caller does not know it: the warm path of `invoke --local` never asks the engine)."""
    container_id = container_id or recorded_container(Path(socket_dir))
    return UnixSocketTransport(str(socket_dir), peer=container_peer(container_id))


@dataclass
class Instance:
    id: str
    container_id: str
    socket_dir: Path
    transport: UnixSocketTransport
    function: Function

    def container(self) -> str:
        """The container's ID; an instance reached through its socket alone looks it up by label."""
        if not self.container_id:
            found = dockerio.list_containers({"io.fnctl.instance": self.id})
            self.container_id = found[0].id if found else ""
        return self.container_id


def new_instance_id() -> str:
    return _secrets.token_hex(6)


def start(
    function: Function,
    *,
    image: str,
    revision: str,
    labels: Mapping[str, str],
    secret_values: Mapping[str, str],
    instance_id: str | None = None,
    settle_cpu: bool = True,
) -> Instance:
    """Start one instance of `function` from `image` and wait until it is ready and configured. It starts
    with more CPU (sandbox.STARTUP_CPUS); `settle_cpu` sets the function's own quota before returning, else
    the caller must (`settle_cpu`) as soon as it can (the gateway: beside the first request)."""
    instance_id = instance_id or new_instance_id()
    socket_dir = runtime_root() / instance_id
    container_id, transport = _create_and_start(function, image, revision, labels, instance_id, _sync_listener)
    transport.peer = container_peer(container_id)
    instance = Instance(instance_id, container_id, socket_dir, transport, function)
    try:
        wait_ready(function, container_id, lambda timeout: instance.transport.connect(timeout=timeout))
        if settle_cpu and boosted(function):
            dockerio.set_cpus(container_id, cpu_quota(function))  # the start's extra CPU ends before any request
        instance.transport.configure(secret_values)
    except BaseException:
        remove(instance)
        raise
    return instance


@dataclass(frozen=True)
class Launched:
    """A container started by `launch`; its runtime connects to `listener` (up in `socket_dir` before it started)."""

    container_id: str
    socket_dir: Path
    listener: Rendezvous


def launch(function: Function, *, image: str, revision: str, labels: Mapping[str, str], instance_id: str) -> Launched:
    """`start` without the waiting: the gateway waits for the runtime on its event loop with its own transport
    (which takes the listener over), so the runtime connects once, straight to the connection that serves
    it. `discard` undoes a launch whose runtime never became ready."""
    container_id, listener = _create_and_start(function, image, revision, labels, instance_id, Rendezvous)
    return Launched(container_id, runtime_root() / instance_id, listener)


def discard(launched: Launched) -> None:
    """Remove a launched instance (its listener, container and socket directory)."""
    launched.listener.close()
    dockerio.kill(launched.container_id)
    remove_socket_dir(launched.socket_dir)


L = TypeVar("L", Rendezvous, UnixSocketTransport)  # the listener a start puts up: the caller's or its own


def _sync_listener(socket_dir: str) -> UnixSocketTransport:
    # Nobody is accepted before the container's ID is known (the runtime waits in the listen backlog).
    transport = UnixSocketTransport(socket_dir, peer=lambda pid: False)
    transport.listen()
    return transport


def _create_and_start(
    function: Function,
    image: str,
    revision: str,
    labels: Mapping[str, str],
    instance_id: str,
    listen: Callable[[str], L],
) -> tuple[str, L]:
    """Make the socket directory, put up the listener (`listen`) before the container exists, so that its
    runtime finds it at once (and can report a failed start over it), create and start the container and
    record its ID in the directory; all undone on failure."""
    if function.isolation is Isolation.GVISOR and GVISOR_RUNTIME not in dockerio.runtimes():
        raise EngineUnavailable(
            "isolation: gvisor needs the runsc runtime, which this Docker engine does not have. Register it: "
            '`apt-get install -y runsc`, add {"runtimes": {"runsc": {"path": "/usr/bin/runsc", '
            '"runtimeArgs": ["--network=none", "--host-uds=all"]}}} to /etc/docker/daemon.json, then '
            "`kill -HUP $(pidof dockerd)` (scripts/setup.sh does all of this)"
        )
    socket_dir = runtime_root() / instance_id
    make_socket_dir(socket_dir)
    spec = container_spec(
        function,
        image=image,
        name=f"fnctl-{function.name}-{instance_id}",
        socket_dir=str(socket_dir),
        revision=revision,
        container_labels=dict(labels) | {"io.fnctl.instance": instance_id, "io.fnctl.socket-dir": str(socket_dir)},
    )
    container_id, listener = "", None
    try:
        listener = listen(str(socket_dir))
        container_id = dockerio.run_container(spec)
        _record_container(socket_dir, container_id)
    except BaseException:
        if listener is not None:
            listener.close()
        if container_id:
            dockerio.kill(container_id)
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise
    return container_id, listener


def settle_cpu(function: Function, container_id: str) -> None:
    """Give a started instance its function's own CPU quota (after `start(..., settle_cpu=False)`, or for an
    instance adopted from a gateway that may have stopped before it did so). FnctlError when the engine
    refuses: the caller must then remove the instance."""
    if boosted(function):
        dockerio.set_cpus(container_id, cpu_quota(function))


def _record_container(socket_dir: Path, container_id: str) -> None:
    # O_EXCL | O_NOFOLLOW: a fresh file of our own, never through a name someone else made.
    fd = os.open(socket_dir / CONTAINER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(container_id)


def wait_ready(function: Function, container_id: str, connect: Callable[[float], object]) -> None:
    """Wait until the runtime of a just-started container is connected and ready: `connect(timeout)` waits
    up to `timeout` seconds for it (TransportTimeout when it did not come); between waits the container's
    state says whether it is still worth waiting. StartFailed, with its last log lines, when not."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            connect(0.5)
            return
        except RuntimeStartFailed as exc:
            raise StartFailed(exc.message, detail=exc.detail) from None
        except (TransportTimeout, ConnectionLost):
            pass  # nobody yet, or the runtime went away while we connected: the exit state says why
        check_starting(function, container_id, deadline)


def check_starting(function: Function, container_id: str, deadline: float) -> None:
    """StartFailed when the container of a starting instance exited (saying why) or `deadline` (monotonic)
    passed; nothing while it is still worth waiting for its runtime."""
    state = dockerio.exit_state(container_id)
    if not state.running:
        raise StartFailed(_start_failure(function, state), detail=dockerio.logs(container_id, 30))
    if time.monotonic() > deadline:
        raise StartFailed(
            f"the instance did not become ready within {START_TIMEOUT:g}s", detail=dockerio.logs(container_id, 30)
        )


def _start_failure(function: Function, state: dockerio.ExitState) -> str:
    if state.oom_killed:
        return f"the instance ran out of memory while starting (limit {function.limits.memory // 2**20}Mi)"
    return f"the instance exited with code {state.exit_code} before it was ready {state.error}".strip()


def connect_existing(function: Function, container_id: str, socket_dir: Path, instance_id: str) -> Instance | None:
    """An already running instance (e.g. kept warm), or None when its runtime no longer answers."""
    transport = host_transport(socket_dir, container_id)
    try:
        transport.connect(timeout=1.0)
    except FnctlError:
        transport.close()
        return None
    return Instance(instance_id, container_id, socket_dir, transport, function)


def invoke(
    instance: Instance, event: Any, *, caller: Mapping[str, Any] | None = None, payload_size: int | None = None
) -> Outcome:
    """Run one invocation with the function's limits; a limit hit comes back as a typed Outcome."""
    limits = instance.function.limits
    if payload_size is None:  # measured here: the runtime drops a connection whose frame is far over the limit
        payload_size = _encoded_size(event)
    if payload_size > limits.payload:
        return _failed(
            Failure.PAYLOAD_TOO_LARGE, f"the event is {payload_size} bytes; the limit is {limits.payload} bytes", 0.0
        )
    started = time.monotonic()
    try:
        result = instance.transport.invoke(
            event,
            invocation_id=uuid.uuid4().hex,
            deadline=time.time() + limits.timeout,
            caller=caller,
            timeout=limits.timeout + 0.5,
        )
    except TransportTimeout:
        kill(instance)
        return _failed(
            Failure.TIMEOUT,
            f"the function did not finish within its timeout of {limits.timeout:g}s; the instance was stopped",
            _since(started),
        )
    except ConnectionLost:
        return _lost(instance, started)
    return _outcome(instance, result)


def _encoded_size(event: Any) -> int:
    try:
        return len(json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode())
    except (TypeError, ValueError):
        return 0  # not JSON at all: the transport refuses to send it, with its own message


def _lost(instance: Instance, started: float) -> Outcome:
    state = _wait_exited(instance.container())
    kill(instance)
    if state is not None and state.oom_killed:
        return _failed(
            Failure.OUT_OF_MEMORY,
            f"the function ran out of memory (limit {instance.function.limits.memory // 2**20}Mi)",
            _since(started),
        )
    code = f" (exit code {state.exit_code})" if state is not None and not state.running else ""
    return _failed(Failure.CRASHED, f"the instance crashed during the invocation{code}", _since(started))


def _wait_exited(container_id: str) -> dockerio.ExitState | None:
    """The container's state once it has stopped (give the engine a moment to record an OOM kill)."""
    if not container_id:
        return None
    deadline = time.monotonic() + 3.0
    state = None
    while time.monotonic() < deadline:
        try:
            state = dockerio.exit_state(container_id)
        except FnctlError:
            return state
        if not state.running:
            return state
        time.sleep(0.05)
    return state


def _outcome(instance: Instance, result: InvocationResult) -> Outcome:
    outcome = outcome_of(result)
    if outcome.failure in RECYCLE:
        kill(instance)
    return outcome


def _failed(failure: Failure, message: str, duration_ms: float) -> Outcome:
    return Outcome(False, None, failure, message, "", "", duration_ms)


def _since(started: float) -> float:
    return (time.monotonic() - started) * 1000


def kill(instance: Instance) -> None:
    """Stop at once (no drain): for instances that hit a limit or are being cleaned up."""
    instance.transport.close()
    if instance.container():
        dockerio.kill(instance.container_id)
    shutil.rmtree(instance.socket_dir, ignore_errors=True)


def remove_socket_dir(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove(instance: Instance, *, drain: bool = False) -> None:
    """Stop the instance, letting in-flight invocations finish first when `drain`."""
    if drain:
        try:
            instance.transport.drain(timeout=instance.function.limits.timeout + 1)
        except FnctlError:
            pass
    kill(instance)
