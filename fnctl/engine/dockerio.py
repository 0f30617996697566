"""The Docker engine boundary: every call fnctl makes of the engine goes through here.

It speaks in fnctl's terms (ContainerSpec, ContainerInfo) and turns the engine's errors into fnctl errors;
what a container must look like is decided in `sandbox`, not here. The calls go straight to the engine's HTTP
API (`dockerapi`, its transport, with the standard library): no SDK to import (~0.2 s of CPU, measured, on
every `invoke --local` and read command before), no client to set up (two round trips before its first call).
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fnctl.engine import dockerapi
from fnctl.engine.sandbox import ContainerSpec
from fnctl.errors import EngineUnavailable, FnctlError

SETUP_HINT = "start one with `bash scripts/setup.sh` (or `dockerd &`), or point DOCKER_HOST at an engine"


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    status: str  # created | running | exited | dead | ...
    labels: dict[str, str] = field(default_factory=dict)
    image: str = ""


@dataclass(frozen=True)
class ExitState:
    running: bool
    exit_code: int
    oom_killed: bool
    error: str


def _call(
    action: str,
    method: str,
    where: str,
    *,
    query: dict[str, Any] | None = None,
    body: Any = None,
    missing_ok: bool = False,
    raw: bool = False,
) -> Any:
    """One call of the engine's API; its JSON answer (with `raw`, its bytes), or None for a 404 when
    `missing_ok`."""
    try:
        reply = dockerapi.request(method, where, query=query, body=body)
    except dockerapi.Unreachable as exc:
        raise EngineUnavailable(f"{action}: no Docker engine answers ({exc}); {SETUP_HINT}") from None
    if _refused(action, reply, missing_ok):
        return None
    return reply.content if raw else reply.body


def _refused(action: str, reply: dockerapi.EngineReply, missing_ok: bool) -> bool:
    """True for an absence that is fine; raises for any other refusal."""
    if reply.status == 404:
        if missing_ok:
            return True
        raise FnctlError(f"{action}: not found: {reply.message}")
    if reply.status >= 400:
        raise FnctlError(f"{action}: the Docker engine refused: {reply.message}")
    return False


def streamed(action: str, method: str, where: str, **kwargs: Any) -> Iterator[bytes]:
    """A call whose answer is read as it comes: its pieces."""
    try:
        with dockerapi.Stream(method, where, **kwargs) as answer:
            if answer.status >= 400:
                body = b"".join(answer.chunks())
                reply = dockerapi.EngineReply(answer.status, _json_or_none(body), body)
                _refused(action, reply, missing_ok=False)
            yield from answer.chunks()
    except dockerapi.Unreachable as exc:
        raise EngineUnavailable(f"{action}: lost the Docker engine ({exc}); {SETUP_HINT}") from None


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def json_lines(pieces: Iterable[bytes]) -> Iterator[Any]:
    """The JSON objects of a stream that sends one a line (a build's progress, events)."""
    pending = b""
    for piece in pieces:
        *lines, pending = (pending + piece).split(b"\n")
        for line in lines:
            if line.strip():
                yield _json_or_none(line)
    if pending.strip():
        yield _json_or_none(pending)


def _frames(pieces: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """A non-TTY container's log stream, demultiplexed: each frame is a header (stream, 0, 0, 0, size as a
    big-endian 32-bit number) and that many bytes of stdout (1) or stderr (2)."""
    pending = b""
    for piece in pieces:
        pending += piece
        while len(pending) >= 8:
            size = struct.unpack(">I", pending[4:8])[0]
            if len(pending) < 8 + size:
                break
            yield pending[0], pending[8 : 8 + size]
            pending = pending[8 + size :]


def runtimes() -> set[str]:
    return set(_call("reading the engine's runtimes", "GET", "/info").get("Runtimes", {}))


def image_id(tag: str) -> str | None:
    """The image's ID, or None when the engine does not have it."""
    found = _call(f"inspecting image {tag}", "GET", dockerapi.path("/images/{}/json", tag), missing_ok=True)
    return None if found is None else str(found["Id"])


def run_once(image: str, argv: list[str], *, entrypoint: str) -> str:
    """Run `argv` in a throwaway container of `image` (no network, read-only, unprivileged) and return its
    standard output; used to ask a base image about itself, never for user code."""
    action = f"running {entrypoint} in {image}"
    host = {"NetworkMode": "none", "ReadonlyRootfs": True, "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"]}
    config = {"Image": image, "Cmd": argv, "Entrypoint": [entrypoint], "User": "65534:65534", "HostConfig": host}
    container_id = str(_call(action, "POST", "/containers/create", body=config)["Id"])
    try:
        _call(action, "POST", dockerapi.path("/containers/{}/start", container_id))
        code = int(_call(action, "POST", dockerapi.path("/containers/{}/wait", container_id)).get("StatusCode", -1))
        query = {"stdout": "1", "stderr": "1"}
        raw = _call(action, "GET", dockerapi.path("/containers/{}/logs", container_id), query=query, raw=True)
    finally:
        kill(container_id)
    frames = list(_frames([raw]))
    if code != 0:
        stderr = b"".join(data for stream, data in frames if stream == 2)
        raise FnctlError(f"{entrypoint} in {image} exited with {code}: {stderr!r}")
    return b"".join(data for stream, data in frames if stream == 1).decode()


def images_present(tags: set[str]) -> set[str]:
    """Which of `tags` the engine has: one call, whatever their number."""
    if not tags:
        return set()
    found = _call("listing images", "GET", "/images/json")
    have = {tag for image in found for tag in image.get("RepoTags") or []}
    return tags & have


def remove_image(tag: str) -> None:
    _call(f"removing image {tag}", "DELETE", dockerapi.path("/images/{}", tag), query={"force": "1"}, missing_ok=True)


CPU_PERIOD = 100_000  # microseconds: the kernel's default CFS period


def cpu_quota(nano_cpus: int) -> int:
    """`nano_cpus` as a CFS quota per CPU_PERIOD; the kernel refuses quotas under 1 ms."""
    return max(1000, nano_cpus * CPU_PERIOD // 1_000_000_000)


def container_config(spec: ContainerSpec) -> dict[str, Any]:
    """The engine's create request for `spec` (the fields and values the docker SDK sends for the same
    arguments). The CPU limit is a CFS quota, not NanoCpus, which the engine's update cannot change: a
    starting instance gets `start_nano_cpus`, lowered to `nano_cpus` by `set_cpus` once it is ready."""
    host_config: dict[str, Any] = {
        "Memory": spec.memory,
        "MemorySwap": spec.memory,
        "ReadonlyRootfs": spec.read_only,
        "NetworkMode": spec.network,
        "CapDrop": list(spec.cap_drop),
        "SecurityOpt": list(spec.security_opt),
        "Ulimits": [
            {"Name": "nofile", "Soft": spec.nofile, "Hard": spec.nofile},
            {"Name": "fsize", "Soft": spec.fsize, "Hard": spec.fsize},
        ],
        "LogConfig": {"Type": "json-file", "Config": {"max-size": spec.log_max_size, "max-file": "1"}},
        "Tmpfs": {"/tmp": f"rw,nosuid,nodev,noexec,size={spec.tmp_size},mode=1777"},
        "PidsLimit": spec.pids,
        "CpuPeriod": CPU_PERIOD,
        "CpuQuota": cpu_quota(spec.start_nano_cpus or spec.nano_cpus),
        "Mounts": [
            {"Target": spec.socket_target, "Source": spec.socket_dir, "Type": "bind", "ReadOnly": spec.socket_read_only}
        ],
        "Privileged": False,
    }
    if spec.runtime:
        host_config["Runtime"] = spec.runtime
    return {
        "Image": spec.image,
        "User": spec.user,
        "Env": [f"{k}={v}" for k, v in spec.environment.items()],
        "Labels": dict(spec.labels),
        "NetworkDisabled": spec.network == "none",
        "AttachStdout": True,
        "AttachStderr": True,
        "HostConfig": host_config,
    }


def run_container(spec: ContainerSpec) -> str:
    """Create and start the container; returns its ID."""
    action = f"starting container {spec.name}"
    created = _call(action, "POST", "/containers/create", query={"name": spec.name}, body=container_config(spec))
    container_id = str(created["Id"])
    try:
        _call(action, "POST", dockerapi.path("/containers/{}/start", container_id))
    except FnctlError:
        kill(container_id)
        raise
    return container_id


def set_cpus(container_id: str, nano_cpus: int) -> None:
    """Set a running container's CPU quota (`run_container` gave it its starting quota)."""
    where = dockerapi.path("/containers/{}/update", container_id)
    body = {"CpuPeriod": CPU_PERIOD, "CpuQuota": cpu_quota(nano_cpus)}
    _call(f"setting the CPU quota of {container_id[:12]}", "POST", where, body=body)


def pause(container_id: str, paused: bool) -> None:
    """Freeze (`paused`) or thaw every process of a container: a paused one uses no CPU, keeps its memory."""
    verb = "pause" if paused else "unpause"
    where = dockerapi.path("/containers/{}/" + verb, container_id)
    _call(f"{'pausing' if paused else 'unpausing'} {container_id[:12]}", "POST", where)


def list_containers(labels: Mapping[str, str], *, all_states: bool = True) -> list[ContainerInfo]:
    """Containers carrying every label in `labels` (a value of "" matches any value): one engine call."""
    filters = {"label": [f"{k}={v}" if v else k for k, v in labels.items()]}
    query = {"all": "1" if all_states else "0", "filters": json.dumps(filters)}
    found = _call("listing containers", "GET", "/containers/json", query=query)
    return [
        ContainerInfo(
            c["Id"],
            c["Names"][0].lstrip("/") if c.get("Names") else "",
            c.get("State", ""),
            dict(c.get("Labels") or {}),
            c.get("Image", ""),
        )
        for c in found
    ]


def inspect_container(container_id: str) -> dict[str, Any]:
    return dict(
        _call(f"inspecting container {container_id[:12]}", "GET", dockerapi.path("/containers/{}/json", container_id))
    )


def exit_state(container_id: str) -> ExitState:
    state = inspect_container(container_id).get("State", {})
    running, code, oom = bool(state.get("Running")), int(state.get("ExitCode") or 0), bool(state.get("OOMKilled"))
    if not running and code == 137 and not oom:
        oom = _oom_event(container_id)
    return ExitState(running, code, oom, str(state.get("Error") or ""))


def _oom_event(container_id: str) -> bool:
    """Whether the engine reported an OOM kill of the container. Its OOMKilled flag misses the kill when
    containerd delivers the OOM event after the exit event (seen here under load); the engine still logs
    the event, so its recent events are read, waiting up to a second for a late one."""
    now = int(time.time())
    filters = json.dumps({"container": [container_id], "event": ["oom"]})
    query = {"since": str(now - 600), "until": str(now + 1), "filters": filters}
    raw = _call(f"reading events of {container_id[:12]}", "GET", "/events", query=query, raw=True)
    return any(event is not None for event in json_lines([raw]))


def logs(container_id: str, tail: int = 50) -> str:
    query = {"stdout": "1", "stderr": "1", "tail": str(tail)}
    where = dockerapi.path("/containers/{}/logs", container_id)
    raw = _call(f"reading logs of {container_id[:12]}", "GET", where, query=query, raw=True)
    return b"".join(data for _, data in _frames([raw])).decode("utf-8", "replace")


def stream_logs(container_id: str, *, since: float | None, follow: bool) -> Iterator[str]:
    """The container's log lines (stdout and stderr), optionally following new ones."""
    query = {"stdout": "1", "stderr": "1", "follow": "1" if follow else "0"}
    if since is not None:
        query["since"] = str(int(since))
    where = dockerapi.path("/containers/{}/logs", container_id)
    # A followed log may stay silent for as long as the function does: no read timeout then.
    yield from log_lines(streamed(f"reading logs of {container_id[:12]}", "GET", where, query=query, timeout=None))


def log_lines(pieces: Iterable[bytes]) -> Iterator[str]:
    """The lines of a non-TTY log stream (a container's, a Swarm service's), stdout and stderr as they come."""
    pending = ""
    for _, data in _frames(pieces):
        pending += data.decode("utf-8", "replace")
        *lines, pending = pending.split("\n")
        yield from lines
    if pending:
        yield pending


def kill(container_id: str) -> None:
    """Kill and remove; a container already gone (or going) is fine."""
    where = dockerapi.path("/containers/{}", container_id)
    try:
        _call(f"removing container {container_id[:12]}", "DELETE", where, query={"force": "1"}, missing_ok=True)
    except EngineUnavailable:
        raise
    except FnctlError as exc:
        if "already in progress" not in exc.message:
            raise


def stop(container_id: str, timeout: int = 10) -> None:
    """Stop gracefully (SIGTERM: the runtime drains), then remove."""
    where = dockerapi.path("/containers/{}/stop", container_id)
    try:
        if _call(f"stopping {container_id[:12]}", "POST", where, query={"t": str(timeout)}, missing_ok=True) is None:
            return
    except EngineUnavailable:
        raise
    except FnctlError:
        pass  # the removal below forces it
    kill(container_id)
