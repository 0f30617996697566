"""The Docker engine boundary: the only module that imports the docker SDK.

It speaks in fnctl's terms (ContainerSpec, ContainerInfo) and turns the engine's errors into fnctl errors;
what a container must look like is decided in `sandbox`, not here. The calls of an instance's life (image and
container inspection, create, start, update, remove, list) go straight to the engine's HTTP API
(`dockerapi`, its transport: no SDK to import, no client to set up); builds, logs and events use the SDK.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnctl.engine import dockerapi
from fnctl.engine.sandbox import ContainerSpec
from fnctl.errors import BuildFailed, EngineUnavailable, FnctlError

if TYPE_CHECKING:
    import docker


@cache
def _sdk() -> Any:
    """The docker SDK, imported on first use (tests/test_layout.py allows this one, with the reason): ~0.2 s
    of CPU to import, measured here, which `invoke --local` and the read commands (`fnctl history`, `get`,
    through commands.functions, deploy.live, engine.instances) would pay without ever needing it; a command
    pays for the SDK only when it builds an image, reads logs or events, or reaches an engine over TCP/SSH."""
    import docker
    import docker.errors
    import docker.types

    return docker


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


@contextmanager
def _engine_errors(action: str) -> Iterator[None]:
    errors = _sdk().errors
    try:
        yield
    except errors.NotFound as exc:
        raise FnctlError(f"{action}: not found: {_explain(exc)}") from None
    except errors.APIError as exc:
        raise FnctlError(f"{action}: the Docker engine refused: {_explain(exc)}") from None
    except errors.DockerException as exc:
        raise EngineUnavailable(f"{action}: no Docker engine answers ({exc}); {SETUP_HINT}") from None
    except OSError as exc:  # the socket vanished mid-call
        raise EngineUnavailable(f"{action}: lost the Docker engine ({exc}); {SETUP_HINT}") from None


def _explain(exc: Exception) -> str:
    return str(getattr(exc, "explanation", None) or exc)


@cache
def client() -> docker.DockerClient:
    sdk = _sdk()
    try:
        engine = sdk.from_env(timeout=60)
        engine.ping()
    except sdk.errors.DockerException as exc:
        raise EngineUnavailable(f"no Docker engine answers ({exc}); {SETUP_HINT}") from None
    return engine


def _call(
    action: str,
    method: str,
    where: str,
    *,
    query: dict[str, Any] | None = None,
    body: Any = None,
    missing_ok: bool = False,
) -> Any:
    """One call of the engine's API; its JSON answer, or None for a 404 when `missing_ok`."""
    try:
        if dockerapi.socket_path() is not None:
            reply = dockerapi.request(method, where, query=query, body=body)
        else:  # tcp:// or ssh://: the SDK's session knows how to reach (and authenticate to) the engine
            with _engine_errors(action):
                api = client().api
                answer = api.request(method, api.base_url + where, params=query, json=body, timeout=dockerapi.TIMEOUT)
                reply = dockerapi.Reply(answer.status_code, answer.json() if answer.content.strip() else None)
    except dockerapi.Unreachable as exc:
        raise EngineUnavailable(f"{action}: no Docker engine answers ({exc}); {SETUP_HINT}") from None
    if reply.status == 404:
        if missing_ok:
            return None
        raise FnctlError(f"{action}: not found: {reply.message}")
    if reply.status >= 400:
        raise FnctlError(f"{action}: the Docker engine refused: {reply.message}")
    return reply.body


def runtimes() -> set[str]:
    return set(_call("reading the engine's runtimes", "GET", "/info").get("Runtimes", {}))


def image_id(tag: str) -> str | None:
    """The image's ID, or None when the engine does not have it."""
    found = _call(f"inspecting image {tag}", "GET", dockerapi.path("/images/{}/json", tag), missing_ok=True)
    return None if found is None else str(found["Id"])


# What the engine says when a cached layer this build stands on was pruned meanwhile by a `docker rmi` of
# another image sharing it (the classic builder's cache is made of those untagged parent images).
_VANISHED_LAYER = ("No such image: sha256:", "failed to get digest sha256:", "unknown parent image ID sha256:")
BUILD_ATTEMPTS = 3


def build_image(
    context: Path, tag: str, buildargs: Mapping[str, str], labels: Mapping[str, str], on_line: Callable[[str], None]
) -> None:
    """Build `context` as `tag` with no network; `on_line` receives each line of output as it comes."""
    for attempt in range(1, BUILD_ATTEMPTS + 1):
        try:
            _build(context, tag, buildargs, labels, on_line)
            return
        except BuildFailed as exc:
            if attempt == BUILD_ATTEMPTS or not any(m in (exc.detail or "") for m in _VANISHED_LAYER):
                raise
        # The cache is looked up afresh on the next attempt: the vanished layer is simply built again.
        on_line(f"{tag}: a cached layer was removed during the build; building again")


def _build(
    context: Path, tag: str, buildargs: Mapping[str, str], labels: Mapping[str, str], on_line: Callable[[str], None]
) -> None:
    output: list[str] = []
    _label_instruction(context, labels)
    with _engine_errors(f"building {tag}"):
        stream = client().api.build(
            path=str(context),
            tag=tag,
            buildargs=dict(buildargs),
            rm=True,
            forcerm=True,
            network_mode="none",
            decode=True,
            pull=False,
        )
        for chunk in stream:
            if "error" in chunk:
                step = next((line for line in reversed(output) if line.startswith("Step ")), "")
                raise BuildFailed(
                    f"image build failed at {step or 'the first step'}",
                    detail="\n".join(output[-20:] + [str(chunk["error"]).strip()]),
                )
            for line in str(chunk.get("stream", "")).splitlines():
                if line.strip():
                    output.append(line.strip())
                    if line.startswith("Step "):
                        on_line(f"{tag}: {line.strip()}")


def _label_instruction(context: Path, labels: Mapping[str, str]) -> None:
    """The labels as one LABEL instruction at the end of the context's Dockerfile (idempotent, so a retried
    build adds it once). Given to the API instead, the classic builder makes each label a step of its own, a
    container committed apiece: ~0.5 s of a revision build's ~1.5 s for fnctl's three labels, measured."""
    if not labels:
        return
    dockerfile = context / "Dockerfile"
    line = "LABEL " + " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in sorted(labels.items())) + "\n"
    text = dockerfile.read_text(encoding="utf-8")
    if not text.endswith(line):
        dockerfile.write_text(text.rstrip("\n") + "\n" + line, encoding="utf-8")


def run_once(image: str, argv: list[str], *, entrypoint: str) -> str:
    """Run `argv` in a throwaway container of `image` (no network, read-only, unprivileged) and return its
    standard output; used to ask a base image about itself, never for user code."""
    with _engine_errors(f"running {entrypoint} in {image}"):
        try:
            output = client().containers.run(
                image,
                argv,
                entrypoint=[entrypoint],
                user="65534:65534",
                network_mode="none",
                read_only=True,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                remove=True,
                stdout=True,
                stderr=False,
            )
        except _sdk().errors.ContainerError as exc:
            raise FnctlError(f"{entrypoint} in {image} exited with {exc.exit_status}: {exc.stderr!r}") from None
    return bytes(output).decode()


def images_present(tags: set[str]) -> set[str]:
    """Which of `tags` the engine has: one call, whatever their number."""
    if not tags:
        return set()
    with _engine_errors("listing images"):
        found = client().api.images()
    have = {tag for image in found for tag in image.get("RepoTags") or []}
    return tags & have


def remove_image(tag: str) -> None:
    with _engine_errors(f"removing image {tag}"):
        try:
            client().api.remove_image(tag, force=True)
        except _sdk().errors.NotFound:
            pass


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
    with _engine_errors(f"reading events of {container_id[:12]}"):
        events = client().events(
            since=now - 600, until=now + 1, decode=True, filters={"container": container_id, "event": "oom"}
        )
        try:
            return any(True for _ in events)
        finally:
            events.close()


def logs(container_id: str, tail: int = 50) -> str:
    with _engine_errors(f"reading logs of {container_id[:12]}"):
        raw = client().api.logs(container_id, stdout=True, stderr=True, tail=tail)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def stream_logs(container_id: str, *, since: float | None, follow: bool) -> Iterator[str]:
    """The container's log lines (stdout and stderr), optionally following new ones."""
    with _engine_errors(f"reading logs of {container_id[:12]}"):
        kwargs: dict[str, Any] = {"stdout": True, "stderr": True, "stream": True, "follow": follow}
        if since is not None:
            kwargs["since"] = int(since)
        pending = ""
        for chunk in client().api.logs(container_id, **kwargs):
            pending += chunk.decode("utf-8", "replace")
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
