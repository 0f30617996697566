"""A cold start taken apart, step by step, for bench_gateway's cold-start figures.

One round starts an instance of a deployed function the way the gateway does (`fnctl.engine.instances.launch`'s
order: a listener up in the socket directory, then `docker create`, `docker start`; the runtime connects out,
says ready, is configured, takes its first invocation), each step timed on its own:

- create, start: the engine's API calls (start returns once the container's process runs);
- exec: from the start request to the container's process starting (the engine's StartedAt);
- runtime up: from exec to the runtime connecting to the listener (interpreter, the runtime's and the
  handler's imports, its first look at the directory);
- ready, configure, invoke: the ready frame, the configure round trip, the first invocation's round trip.

Beside it, in the same round, the baselines: `docker create` + `docker start` of a plain container of the same
image (no sandbox settings; its process is `true`), and a socket-pair round trip between two processes (the
floor of any host <-> runtime exchange).
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from benchcommon import echo_child

from fnctl.engine import dockerapi, dockerio, instances, sandbox
from fnctl.invocation.protocol import FrameDecoder, configure_frame, invoke_frame
from fnctl.invocation.rendezvous import Rendezvous, container_peer
from fnctl.manifest.model import Function

STEPS = ("create", "start", "exec", "runtime up", "ready", "configure", "invoke", "total")
BASELINES = ("plain create+start", "socketpair round trip")
# `profile_round`: `docker start` of a container running `true`, plain (no network) and in the sandbox profile,
# then the profile without one of its settings at a time. Measured only, to see what each setting costs: never
# a configuration fnctl uses (DESIGN.md's profile is not negotiable).
WITHOUT = {
    "/tmp tmpfs": ("Tmpfs",),
    "socket bind mount": ("Mounts",),
    "cgroup limits": ("Memory", "MemorySwap", "PidsLimit", "CpuPeriod", "CpuQuota"),
    "memory limit": ("Memory", "MemorySwap"),
    "pids limit": ("PidsLimit",),
    "cpu quota": ("CpuPeriod", "CpuQuota"),
    "ulimits": ("Ulimits",),
    "cap-drop": ("CapDrop",),
    "no-new-privs": ("SecurityOpt",),
    "read-only root": ("ReadonlyRootfs",),
    "json-file log": ("LogConfig",),
}
# The profile with one setting changed: the seccomp filter off, or a form the profile does not use (an init
# process, a cgroup parent, a network of its own, gVisor), to see what each costs or would cost.
BRIDGE = "fnctl-bench-coldsteps"  # an internal network (no route out) made for `profile_round` alone
CHANGED: dict[str, dict[str, object]] = {
    "seccomp unconfined": {"SecurityOpt": ["no-new-privileges:true", "seccomp=unconfined"]},
    "+ init (docker-init)": {"Init": True},
    "+ cgroup parent": {"CgroupParent": "fnctl-bench"},
    "network: internal bridge": {"NetworkMode": BRIDGE},
    "runtime runsc": {"Runtime": "runsc"},
}
PROFILE = (
    "start: plain",
    "start: sandbox profile",
    *(f"start: profile - {k}" for k in WITHOUT),
    *(f"start: profile, {k}" for k in CHANGED),
)
# `interpreter_round`: start -> exit of a process in the sandbox profile (with its start-up CPU), each minus
# `true`'s: what the interpreter and the runtime's imports cost before it can connect.
PROGRAMS = {
    "python3 -I -B -c pass": ["python3", "-I", "-B", "-c", "pass"],
    "python3 ... import asyncio": ["python3", "-I", "-B", "-c", "import asyncio"],
    "python3 ... import fnctl_runtime": [
        "python3",
        "-I",
        "-B",
        "-c",
        "import sys; sys.path.insert(0, '/opt/fnctl'); import fnctl_runtime",
    ],
}
INTERPRETER = tuple(f"run: {k}" for k in PROGRAMS)


@dataclass
class Rounds:
    """Milliseconds of each step and baseline, one value per round."""

    steps: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in STEPS + BASELINES})

    def median(self, step: str) -> float:
        return statistics.median(self.steps[step])


def _started_at(container_id: str) -> float:
    """The engine's StartedAt of a container, as epoch seconds (RFC 3339 with nanoseconds, in UTC)."""
    text = str(dockerio.inspect_container(container_id)["State"]["StartedAt"]).rstrip("Z")
    whole, _, fraction = text.partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + (fraction or "0"))


def _call(method: str, where: str, body: object = None, query: dict[str, str] | None = None) -> object:
    reply = dockerapi.request(method, where, query=query, body=body)
    if reply.status >= 400:
        raise SystemExit(f"{method} {where}: the engine answered {reply.status}: {reply.message}")
    return reply.body


def instance_round(function: Function, image: str, into: Rounds) -> None:
    """One instance started step by step, its steps added to `into`; removed afterwards."""
    instance_id = instances.new_instance_id()
    socket_dir = instances.runtime_root() / instance_id
    instances.make_socket_dir(socket_dir)
    spec = sandbox.container_spec(
        function,
        image=image,
        name=f"fnctl-{function.name}-{instance_id}",
        socket_dir=str(socket_dir),
        revision="bench",
        container_labels={"io.fnctl.bench": "coldsteps", "io.fnctl.socket-dir": str(socket_dir)},
    )
    listener = Rendezvous(str(socket_dir))
    container_id = ""
    try:
        began = time.time()
        created = _call("POST", "/containers/create", dockerio.container_config(spec), {"name": spec.name})
        assert isinstance(created, dict)
        container_id = str(created["Id"])
        was_created = time.time()
        _call("POST", dockerapi.path("/containers/{}/start", container_id))
        was_started = time.time()
        conn = listener.accept(time.monotonic() + 30, container_peer(container_id))
        connected = time.time()
        decoder = FrameDecoder()
        ready = decoder.read_from(conn.recv)
        said_ready = time.time()
        assert ready is not None and ready.get("type") == "ready", ready
        conn.sendall(configure_frame(1, {}))
        assert (decoder.read_from(conn.recv) or {}).get("type") == "configured"
        configured = time.time()
        conn.sendall(invoke_frame(2, {}, uuid.uuid4().hex, time.time() + 10, None))
        result = decoder.read_from(conn.recv) or {}
        done = time.time()
        assert result.get("type") == "result" and result.get("ok"), result
        conn.close()
        execed = _started_at(container_id)
    finally:
        listener.close()
        if container_id:
            dockerio.kill(container_id)
        instances.remove_socket_dir(socket_dir)
    for step, (a, b) in {
        "create": (began, was_created),
        "start": (was_created, was_started),
        "exec": (was_created, execed),
        "runtime up": (execed, connected),
        "ready": (connected, said_ready),
        "configure": (said_ready, configured),
        "invoke": (configured, done),
        "total": (began, done),
    }.items():
        into.steps[step].append((b - a) * 1000)


def plain_round(image: str, into: Rounds) -> None:
    """`docker create` + `docker start` of a plain container of `image` (process `true`, no network: no sandbox
    settings but that one, which the engine spends ~100 ms on otherwise)."""
    began = time.perf_counter()
    plain = {
        "Image": image,
        "Entrypoint": ["true"],
        "Cmd": [],
        "NetworkDisabled": True,
        "HostConfig": {"NetworkMode": "none"},
    }
    created = _call("POST", "/containers/create", plain)
    assert isinstance(created, dict)
    try:
        _call("POST", dockerapi.path("/containers/{}/start", str(created["Id"])))
        into.steps["plain create+start"].append((time.perf_counter() - began) * 1000)
    finally:
        dockerio.kill(str(created["Id"]))


def _spec_config(function: Function, image: str, socket_dir: str) -> dict[str, object]:
    spec = sandbox.container_spec(
        function,
        image=image,
        name="",
        socket_dir=socket_dir,
        revision="bench",
        container_labels={"io.fnctl.bench": "coldsteps"},
    )
    return dockerio.container_config(spec)


def _start_ms(config: dict[str, object], command: list[str], *, wait: bool = False) -> float:
    """Milliseconds of `docker start` of a container made from `config` running `command` (with `wait`: until
    its process exits, which must succeed); created before the clock starts, removed after."""
    created = _call("POST", "/containers/create", config | {"Entrypoint": command[:1], "Cmd": command[1:]})
    assert isinstance(created, dict)
    container_id = str(created["Id"])
    try:
        began = time.perf_counter()
        _call("POST", dockerapi.path("/containers/{}/start", container_id))
        if wait:
            status = _call("POST", dockerapi.path("/containers/{}/wait", container_id))
            assert isinstance(status, dict) and status.get("StatusCode") == 0, (command, status)
        return (time.perf_counter() - began) * 1000
    finally:
        dockerio.kill(container_id)


def profile_round(function: Function, image: str, into: Rounds) -> None:
    """`docker start` of `true`: plain, in the sandbox profile, in the profile less each of `WITHOUT`, and with
    each of `CHANGED` (runsc only when the engine has it)."""
    socket_dir = instances.runtime_root() / ("bench-" + instances.new_instance_id())
    instances.make_socket_dir(socket_dir)
    network = {"Name": BRIDGE, "Internal": True, "Labels": {"io.fnctl.bench": "coldsteps"}}
    dockerapi.request("POST", "/networks/create", body=network)  # 409 when a stopped run left it: reused
    try:
        profile = _spec_config(function, image, str(socket_dir))
        host = profile["HostConfig"]
        assert isinstance(host, dict)
        plain = {"Image": image, "NetworkDisabled": True, "HostConfig": {"NetworkMode": "none"}}
        into.steps.setdefault("start: plain", []).append(_start_ms(plain, ["true"]))
        into.steps.setdefault("start: sandbox profile", []).append(_start_ms(profile, ["true"]))
        for what, keys in WITHOUT.items():
            less = profile | {"HostConfig": {k: v for k, v in host.items() if k not in keys}}
            into.steps.setdefault(f"start: profile - {what}", []).append(_start_ms(less, ["true"]))
        for what, changed in CHANGED.items():
            if changed.get("Runtime") == sandbox.GVISOR_RUNTIME and sandbox.GVISOR_RUNTIME not in dockerio.runtimes():
                continue
            config = profile | {"HostConfig": host | changed}
            if "NetworkMode" in changed:
                config["NetworkDisabled"] = False
            into.steps.setdefault(f"start: profile, {what}", []).append(_start_ms(config, ["true"]))
    finally:
        _call("DELETE", dockerapi.path("/networks/{}", BRIDGE))
        instances.remove_socket_dir(socket_dir)


def interpreter_round(function: Function, image: str, into: Rounds) -> None:
    """Start -> exit of each of `PROGRAMS` in the sandbox profile, minus that of `true` in the same round."""
    socket_dir = instances.runtime_root() / ("bench-" + instances.new_instance_id())
    instances.make_socket_dir(socket_dir)
    try:
        profile = _spec_config(function, image, str(socket_dir))
        floor = _start_ms(profile, ["true"], wait=True)
        for what, command in PROGRAMS.items():
            into.steps.setdefault(f"run: {what}", []).append(_start_ms(profile, command, wait=True) - floor)
    finally:
        instances.remove_socket_dir(socket_dir)


def socketpair_round(into: Rounds, count: int = 2000) -> None:
    """The median round trip of a 50-byte ping-pong between two processes over a socket pair."""
    times = []
    with echo_child() as peer:
        for _ in range(count):
            began = time.perf_counter()
            peer.send(b"x" * 50)
            peer.recv(100)
            times.append(time.perf_counter() - began)
    into.steps["socketpair round trip"].append(statistics.median(times) * 1000)


def measure(function: Function, image: str, rounds: int) -> Rounds:
    """`rounds` interleaved rounds: the instance's steps, then each baseline."""
    result = Rounds()
    for _ in range(rounds):
        instance_round(function, image, result)
        plain_round(image, result)
        socketpair_round(result)
    return result


def report(rounds: Rounds) -> list[str]:
    """The lines bench_gateway prints: each step's median, with its share of the total."""
    total = rounds.median("total")
    lines = [f"  cold start by step (engine level, medians of {len(rounds.steps['total'])} rounds, ms):"]
    for step in STEPS:
        share = "" if step == "total" else f"  ({rounds.median(step) / total:4.0%} of total)"
        note = "  (overlaps start)" if step == "exec" else ""
        lines.append(f"    {step:<24}{rounds.median(step):8.1f}{share}{note}")
    for baseline in BASELINES:
        lines.append(f"    baseline: {baseline:<14}{rounds.median(baseline):8.3f}")
    if rounds.steps.get(PROFILE[0]):
        plain = rounds.median(PROFILE[0])
        lines.append("  docker start of `true` (ms; x plain), the profile less one setting at a time (measured only):")
        lines += [
            f"    {k:<40}{rounds.median(k):8.1f}  ({rounds.median(k) / plain:.2f}x)"
            for k in PROFILE
            if rounds.steps.get(k)
        ]
    if rounds.steps.get(INTERPRETER[0]):
        lines.append("  in the sandbox profile, start -> exit beyond `true`'s (ms):")
        lines += [f"    {k:<40}{rounds.median(k):8.1f}" for k in INTERPRETER]
    return lines
