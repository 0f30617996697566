"""The sandbox from the inside and at its limits: real containers on the local Docker engine.

Most tests start instances of one shared revision image (tests/sandbox_handlers/probes) through
`fnctl.engine.instances`, each under the limits of its own manifest, and look at what the handler can do and at the
typed failure each limit produces. `check_container` is also tested on hand-made `docker inspect` data.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from runtime_helpers import runtime_module
from sandbox_handlers.harness import (
    MIB,
    WITHDEP,
    Start,
    answers,
    build_wheel,
    cleanup,
    container_gone,
    leftovers_fixture,
    logged,
    probes_tag,
    project_containers,
    project_fixture,
    project_name,
    removed,
    start_fixture,
    write_project,
)

from fnctl.commands.local import invoke_local
from fnctl.commands.localdata import LocalData
from fnctl.engine import dockerbuild, dockerio, images, instances
from fnctl.engine.instances import StartFailed
from fnctl.engine.sandbox import STARTUP_CPUS, check_container
from fnctl.errors import BuildFailed
from fnctl.invocation.aiotransport import Answered, AsyncTransport
from fnctl.invocation.outcome import Failure
from fnctl.invocation.rendezvous import container_peer
from fnctl.manifest.project import Project
from fnctl.runtimes.validation import validate_project

SECRET_ENV = "FNCTL_TEST_SANDBOX_TOKEN"  # the deployer's variable; the handler sees it as API_TOKEN

FUNCTIONS: dict[str, dict[str, Any]] = {
    "probe": {"handler": "probes.identity"},
    "echo-one": {"handler": "probes.echo"},
    "echo-context": {"handler": "probes.echo_context"},
    "echo-async": {"handler": "probes.echo_async"},
    "lean": {"handler": "lean.modules"},
    "chatty": {"handler": "probes.chatty"},
    "fill-tmp": {"handler": "probes.fill_tmp", "limits": {"tmp": "8Mi"}},
    "fork-bomb": {"handler": "probes.fork_bomb", "limits": {"pids": 32}},
    "memory-bomb": {"handler": "probes.memory_bomb", "limits": {"memory": "64Mi"}},
    "spin": {"handler": "probes.spin", "limits": {"timeout": "1s"}},
    "big-result": {"handler": "probes.big_result", "limits": {"memory": "128Mi", "output": "6Mi"}},
    "small-payload": {"handler": "probes.echo", "limits": {"payload": "64Ki"}},
    "crash": {"handler": "probes.crash"},
    "syntax-error": {"handler": "uses_broken.handler"},
    "import-error": {"handler": "raises_at_import.handler"},
    "secret": {"handler": "probes.secret", "secrets": [{"name": "API_TOKEN", "fromEnv": SECRET_ENV}]},
    "gvisor": {"handler": "probes.identity", "isolation": "gvisor"},
    "calls": {"handler": "probes.calls"},
    "calls-gvisor": {"handler": "probes.calls", "isolation": "gvisor"},
    "cpu-quota": {"handler": "probes.cpu_quota", "limits": {"cpu": 0.5}},
}


# ---- check_container on hand-made inspect data (no engine needed) ---------------------------------


def hardened_inspect() -> dict[str, Any]:
    """What `docker inspect` reports for a container started the way the sandbox profile says (docs/security.md)."""
    return {
        "Config": {
            "User": "65534:65534",
            "Labels": {
                "io.fnctl.network": "none",
                "io.fnctl.isolation": "container",
                "io.fnctl.socket-dir": "/run/fnctl/0123abcd",
            },
        },
        "HostConfig": {
            "CapDrop": ["ALL"],
            "CapAdd": None,
            "SecurityOpt": ["no-new-privileges:true"],
            "Privileged": False,
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": "rw,nosuid,nodev,noexec,size=16777216,mode=1777"},
            "Memory": 128 * MIB,
            "MemorySwap": 128 * MIB,
            "NanoCpus": 500_000_000,
            "PidsLimit": 64,
            "Ulimits": [
                {"Name": "nofile", "Soft": 1024, "Hard": 1024},
                {"Name": "fsize", "Soft": 16 * MIB, "Hard": 16 * MIB},
            ],
            "NetworkMode": "none",
            "Runtime": "runc",
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}},
        },
        "Mounts": [{"Type": "bind", "Source": "/run/fnctl/0123abcd", "Destination": "/run/fnctl", "RW": False}],
    }


def _host(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["HostConfig"].update(values)


def _config(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["Config"].update(values)


def _mounts(*extra: dict[str, Any], replace: bool = False) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["Mounts"] = list(extra) if replace else data["Mounts"] + list(extra)

    return change


def _gvisor_label(data: dict[str, Any]) -> None:
    data["Config"]["Labels"]["io.fnctl.isolation"] = "gvisor"


# Read-only, so that only the mount check fails: the engine's API answers over a read-only socket all the same.
DOCKER_SOCK = {"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/run/fnctl", "RW": False}


def _own_mount(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["Mounts"][0].update(values)


HOLES: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("no CapDrop", "capabilities dropped", _host(CapDrop=None)),
    ("a capability added back", "capabilities dropped", _host(CapAdd=["NET_ADMIN"])),
    ("the image's root user", "non-root user", _config(User="")),
    ("uid 0", "non-root user", _config(User="0:0")),
    ("no no-new-privileges", "no-new-privileges", _host(SecurityOpt=[])),
    ("no-new-privileges:false", "no-new-privileges", _host(SecurityOpt=["no-new-privileges:false"])),
    ("seccomp unconfined", "seccomp profile", _host(SecurityOpt=["no-new-privileges:true", "seccomp=unconfined"])),
    ("privileged", "not privileged", _host(Privileged=True)),
    ("writable root", "read-only root", _host(ReadonlyRootfs=False)),
    ("no /tmp tmpfs", "/tmp size-limited tmpfs", _host(Tmpfs={})),
    ("unbounded /tmp", "/tmp size-limited tmpfs", _host(Tmpfs={"/tmp": "rw,mode=1777"})),
    ("swap allowed", "memory limit, no swap", _host(MemorySwap=-1)),
    ("no memory limit", "memory limit, no swap", _host(Memory=0, MemorySwap=0)),
    ("no cpu quota", "cpu quota", _host(NanoCpus=0)),
    ("no pids limit", "pids limit", _host(PidsLimit=None)),
    ("unlimited pids", "pids limit", _host(PidsLimit=-1)),
    ("no fsize ulimit", "nofile/fsize ulimits", _host(Ulimits=[{"Name": "nofile", "Soft": 1024, "Hard": 1024}])),
    ("bridge network without egress", "network none", _host(NetworkMode="bridge")),
    ("host network", "network none", _host(NetworkMode="host")),
    ("uncapped logs", "capped logs", _host(LogConfig={"Type": "json-file", "Config": {}})),
    ("the Docker socket mounted", "only its socket directory mounted", _mounts(DOCKER_SOCK, replace=True)),
    (
        "a host path mounted",
        "only its socket directory mounted",
        _mounts({"Type": "bind", "Source": "/etc", "Destination": "/host-etc", "RW": False}),
    ),
    ("another instance's socket directory", "only its socket directory mounted", _own_mount(Source="/run/fnctl/other")),
    ("the socket directory writable", "no writable host path", _own_mount(RW=True)),
    ("the socket directory with no RW flag", "no writable host path", lambda data: data["Mounts"][0].pop("RW")),
    ("gvisor asked, runc used", "runtime runsc", _gvisor_label),
]


def test_check_container_passes_the_hardened_profile() -> None:
    assert [c.name for c in check_container(hardened_inspect()) if not c.ok] == []


def test_check_container_passes_egress_and_gvisor_when_asked() -> None:
    data = hardened_inspect()
    data["Config"]["Labels"].update({"io.fnctl.network": "egress", "io.fnctl.isolation": "gvisor"})
    data["HostConfig"].update(NetworkMode="bridge", Runtime="runsc")
    assert [c.name for c in check_container(data) if not c.ok] == []


@pytest.mark.parametrize(("hole", "check", "change"), HOLES, ids=[h[0] for h in HOLES])
def test_check_container_fails_exactly_the_check_with_a_hole(
    hole: str, check: str, change: Callable[[dict[str, Any]], None]
) -> None:
    data = copy.deepcopy(hardened_inspect())
    change(data)
    failed = [c.name for c in check_container(data) if not c.ok]
    assert failed == [check], f"{hole}: expected only {check!r} to fail, got {failed}"


def test_result_size_floor_is_a_lower_bound_and_stops_early() -> None:
    """The runtime refuses a huge result before encoding it, from a floor that never overstates the size."""
    floor = runtime_module()._json_size_floor
    values: list[Any] = [
        "",
        "é" * 10,
        {"a": [1, None, True, 2.5], 3: "x", None: {}},
        [[], {}, ""],
        12345,
        None,
        {"nested": [{"k": "v" * 100}] * 50},
        ["\u2028", '\n\t"', "\U0001f600"],
    ]
    for value in values:
        encoded = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
        assert floor(value, 10**9) <= encoded, value
    assert floor(["x" * 1000] * 10**6, 6 * MIB) > 6 * MIB  # counted only until past the limit
    cycle: list[Any] = []
    cycle.append(cycle)
    assert floor(cycle, 6 * MIB) < 6 * MIB  # the budget ends a cycle; encoding then reports it


def _flaky_build(monkeypatch: pytest.MonkeyPatch, errors: list[str]) -> list[str]:
    """Make each image build fail with the next of `errors` (then succeed); returns the progress lines."""

    def build(*args: Any) -> None:
        if errors:
            raise BuildFailed("image build failed at Step 4/7", detail=f"Step 4/7 : COPY code/\n{errors.pop(0)}")

    monkeypatch.setattr(dockerbuild, "_build", build)
    return []


def test_build_is_retried_when_a_cached_layer_vanishes_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    errors = [
        "failed to export image: failed to set parent sha256:7e99: unknown parent image ID sha256:7e99",
        "No such image: sha256:859e",
    ]
    lines = _flaky_build(monkeypatch, errors)
    dockerbuild.build_image(Path("."), "fnctl/t-x:1", {}, {}, lines.append)
    assert errors == [] and len(lines) == 2 and "building again" in lines[0]


def test_build_failure_of_the_code_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    errors = ["COPY failed: file not found in build context", "never reached"]
    lines = _flaky_build(monkeypatch, errors)
    with pytest.raises(BuildFailed, match="Step 4/7"):
        dockerbuild.build_image(Path("."), "fnctl/t-x:1", {}, {}, lines.append)
    assert errors == ["never reached"] and lines == []


def test_build_gives_up_when_layers_keep_vanishing(monkeypatch: pytest.MonkeyPatch) -> None:
    errors = ["No such image: sha256:1"] * (dockerbuild.BUILD_ATTEMPTS + 1)
    lines = _flaky_build(monkeypatch, errors)
    with pytest.raises(BuildFailed):
        dockerbuild.build_image(Path("."), "fnctl/t-x:1", {}, {}, lines.append)
    assert len(errors) == 1


# ---- fixtures for the real-engine tests ------------------------------------------------------------


project = project_fixture("sandbox", FUNCTIONS)


@pytest.fixture(scope="module")
def probes_image(project: Project) -> str:
    """One revision image holding every probe handler; each test's manifest picks handler and limits."""
    return probes_tag(project)


_no_leftovers = leftovers_fixture()
start = start_fixture("test")


# ---- inside the sandbox -----------------------------------------------------------------------------


@pytest.mark.docker
def test_handler_runs_unprivileged_read_only_and_offline(start: Start) -> None:
    seen = answers(start("probe"))
    assert seen["uid"] != 0 and seen["euid"] != 0 and seen["gid"] != 0
    assert seen["cap_eff"] == "0" * 16 and seen["cap_prm"] == "0" * 16
    assert seen["no_new_privs"] == "1"
    assert seen["batch"] is True  # the runtime's scheduling policy, inherited by the worker that ran this
    assert seen["root_write"] == "EROFS"
    assert seen["interfaces"] == ["lo"]
    assert seen["routes"] == [] and seen["routes6"] == []
    assert seen["connect_out"] in ("ENETUNREACH", "EHOSTUNREACH")


@pytest.mark.docker
def test_running_instance_passes_every_sandbox_check(start: Start) -> None:
    instance = start("probe")
    data = dockerio.inspect_container(instance.container_id)
    assert [(c.name, c.detail) for c in check_container(data) if not c.ok] == []
    host = data["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 128 * MIB
    assert host["PidsLimit"] == 64 and host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert [m["Destination"] for m in data["Mounts"]] == ["/run/fnctl"]


@pytest.mark.docker
def test_a_starting_instance_gets_more_cpu_and_its_own_quota_once_ready(start: Start) -> None:
    """Issue 18, item 4: the 0.5-CPU quota throttled start-up (~35 ms of a cold start). The handler's module
    reads its cgroup's quota at import (the start) and again when invoked (ready, serving)."""
    instance = start("cpu-quota")
    seen = answers(instance, {})
    assert seen == {"at_import": STARTUP_CPUS, "now": 0.5}
    host = dockerio.inspect_container(instance.container_id)["HostConfig"]
    assert (host["CpuQuota"], host["CpuPeriod"]) == (50_000, 100_000)
    assert [
        (c.name, c.detail) for c in check_container(dockerio.inspect_container(instance.container_id)) if not c.ok
    ] == []


@pytest.mark.docker
def test_handlers_of_both_signatures_and_async_ones_answer(start: Start) -> None:
    assert answers(start("echo-one"), {"n": 1}) == {"echo": {"n": 1}}
    assert answers(start("echo-context"), {"n": 2}) == {
        "echo": {"n": 2},
        "function": "echo-context",
        "revision": "test",
    }
    assert answers(start("echo-async"), {"n": 3}) == {"echo": {"n": 3}, "async": True, "function": "echo-async"}


@pytest.mark.docker
def test_a_synchronous_handlers_runtime_never_imports_asyncio(start: Start) -> None:
    """Issue 18: importing asyncio (with concurrent.futures and logging, which it pulls in) was most of the
    runtime's start-up to its `ready` frame. A synchronous handler's runtime, the supervisor and the worker
    the handler runs in, never imports it, nor what only some paths need; `context.logger` imports logging when
    first used, and works."""
    instance = start("lean")
    assert answers(instance, {}) == {"loaded": []}
    logged = instances.invoke(instance, {"log": True})
    assert logged.ok and "[INFO] logged" in logged.logs, logged
    later = answers(instance, {})["loaded"]
    assert "logging" in later and "asyncio" not in later  # (logging brings traceback)


@pytest.mark.docker
def test_handler_error_comes_back_with_its_traceback_and_the_instance_stays(
    start: Start, docker_client: docker.DockerClient
) -> None:
    instance = start("chatty")
    outcome = instances.invoke(instance, {"say": "before failing", "fail": True})
    assert not outcome.ok and outcome.failure is Failure.HANDLER_ERROR
    assert outcome.message == "ValueError: asked to fail"
    assert 'probes.py", line' in outcome.traceback and 'raise ValueError("asked to fail")' in outcome.traceback
    assert "runtime.py" not in outcome.traceback  # only the user's frames
    assert "to stdout: before failing" in outcome.logs and "[INFO] to the logger" in outcome.logs
    assert answers(instance, {"say": "again"}) == {"said": "again"}
    assert not container_gone(docker_client, instance.container_id)


# ---- limits ------------------------------------------------------------------------------------------


@pytest.mark.docker
def test_tmp_fills_at_its_limit_and_reports_disk_full(start: Start, docker_client: docker.DockerClient) -> None:
    instance = start("fill-tmp")
    outcome = instances.invoke(instance, {})
    assert outcome.failure is Failure.DISK_FULL, outcome
    assert "No space left on device" in outcome.message
    written = logged("written", outcome.logs)
    assert 7 * MIB <= written <= 8 * MIB  # the 8Mi tmpfs, less what the filesystem keeps for itself
    assert answers(instance, {"max": 0}) == {"written": 0}  # a full /tmp is the handler's problem, not fatal


@pytest.mark.docker
def test_fork_bomb_stops_at_the_pids_limit_while_another_instance_answers(
    start: Start, docker_client: docker.DockerClient
) -> None:
    bystander = start("echo-one")
    bomb = start("fork-bomb")
    outcome = instances.invoke(bomb, {})
    assert outcome.failure is Failure.PROCESS_LIMIT, outcome
    assert "Resource temporarily unavailable" in outcome.message
    children = logged("children", outcome.logs)
    assert 0 < children < 32  # the runtime's own threads count against the 32 too
    removed(docker_client, bomb)  # its leftover children die with it
    assert answers(bystander, {"still": "here"}) == {"echo": {"still": "here"}}


@pytest.mark.docker
def test_memory_bomb_is_reported_as_out_of_memory(start: Start, docker_client: docker.DockerClient) -> None:
    bystander = start("echo-one")
    bomb = start("memory-bomb")
    outcome = instances.invoke(bomb, {})
    assert outcome.failure is Failure.OUT_OF_MEMORY, outcome
    assert "64Mi" in outcome.message
    removed(docker_client, bomb)
    assert answers(bystander) == {"echo": {"probe": "ok"}}


@pytest.mark.docker
def test_endless_loop_times_out_and_a_fresh_instance_answers(start: Start, docker_client: docker.DockerClient) -> None:
    runaway = start("spin")
    outcome = instances.invoke(runaway, {"spin": True})
    assert outcome.failure is Failure.TIMEOUT, outcome
    assert "timeout of 1s" in outcome.message and "stopped" in outcome.message
    removed(docker_client, runaway)
    fresh = start("spin")
    assert fresh.container_id != runaway.container_id
    assert answers(fresh, {}) == {"spun": False}


@pytest.mark.docker
def test_100mb_result_is_refused_and_the_instance_keeps_serving(
    start: Start, docker_client: docker.DockerClient
) -> None:
    instance = start("big-result")
    outcome = instances.invoke(instance, {"size": 100_000_000})
    assert outcome.failure is Failure.OUTPUT_TOO_LARGE, outcome
    assert "output limit of 6291456 bytes" in outcome.message
    assert answers(instance, {"size": 5}) == "xxxxx"
    assert not container_gone(docker_client, instance.container_id)


@pytest.mark.docker
def test_payload_over_the_limit_is_refused_and_the_instance_keeps_serving(start: Start) -> None:
    instance = start("small-payload")  # limit 64Ki
    event = {"blob": "y" * (70 * 1024)}
    measured = instances.invoke(instance, event, payload_size=70 * 1024 + 12)
    assert measured.failure is Failure.PAYLOAD_TOO_LARGE and "the limit is 65536 bytes" in measured.message
    huge = instances.invoke(instance, {"blob": "y" * (8 * MIB)})  # unmeasured, far past what the runtime reads
    assert huge.failure is Failure.PAYLOAD_TOO_LARGE and "the limit is 65536 bytes" in huge.message
    understated = instances.invoke(instance, event, payload_size=10)  # the runtime enforces the limit too
    assert understated.failure is Failure.PAYLOAD_TOO_LARGE and "payload limit" in understated.message
    assert answers(instance, {"small": True}) == {"echo": {"small": True}}


@pytest.mark.docker
def test_crash_mid_invocation_is_reported_and_the_instance_removed(
    start: Start, docker_client: docker.DockerClient
) -> None:
    instance = start("crash")
    outcome = instances.invoke(instance, {})
    assert outcome.failure is Failure.CRASHED, outcome
    assert "exit code 7" in outcome.message
    removed(docker_client, instance)


@pytest.mark.docker
def test_syntax_error_is_reported_with_the_users_traceback(
    start: Start, project: Project, docker_client: docker.DockerClient
) -> None:
    with pytest.raises(StartFailed) as failed:
        start("syntax-error")
    assert "SyntaxError" in failed.value.message
    detail = failed.value.detail or ""
    assert 'File "/var/task/uses_broken.py", line 3' in detail
    assert 'File "/var/task/broken_syntax.py", line 1' in detail and "def oops(:" in detail
    assert "runtime.py" not in detail and "importlib" not in detail
    assert project_containers(docker_client, project.name) == []  # the failed instance was removed


@pytest.mark.docker
def test_import_error_at_start_is_reported_with_the_users_traceback(
    start: Start, project: Project, docker_client: docker.DockerClient
) -> None:
    with pytest.raises(StartFailed) as failed:
        start("import-error")
    assert failed.value.message == "the handler failed to load: RuntimeError: settings missing at import"
    detail = failed.value.detail or ""
    assert 'raises_at_import.py", line' in detail and "in _load_settings" in detail
    assert "runtime.py" not in detail
    assert project_containers(docker_client, project.name) == []


# ---- dependencies, secrets, gVisor ------------------------------------------------------------------


@pytest.mark.docker
def test_requirements_txt_dependency_is_installed_into_the_image(
    tmp_path: Path, base_image: str, docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # pip's install cache stays in the test
    wheels = build_wheel(tmp_path / "wheel")
    name = project_name()
    try:
        project = write_project(
            tmp_path / "project",
            name,
            base_image,
            {"withdep": {"handler": "main.handler", "source": "../functions/withdep"}},
        )
        source = project.root / "functions" / "withdep"
        shutil.copytree(WITHDEP, source, ignore=shutil.ignore_patterns("__pycache__"))
        (source / "requirements.txt").write_text(f"--no-index\n--find-links {wheels}\ntinydep==1.0\n")
        result = invoke_local(
            project,
            "withdep",
            {"text": "hi"},
            15,
            keep_warm=False,
            on_progress=lambda _: None,
            open_data=LocalData.open,
            validate=validate_project,
            ensure_image=images.ensure_image,
        )
        assert result.outcome.ok, result.outcome
        assert result.outcome.result == {"shout": "HI!", "from": "/opt/fnctl/deps/tinydep/__init__.py"}
    finally:
        cleanup(docker_client, name, images=True)


def _occurs_in_stream(chunks: Iterator[bytes], needle: bytes) -> bool:
    """Whether `needle` occurs in the concatenation of `chunks`, holding only one chunk at a time."""
    tail = b""
    for chunk in chunks:
        window = tail + chunk
        if needle in window:
            return True
        tail = window[-(len(needle) - 1) :]
    return False


@pytest.mark.docker
def test_secret_reaches_the_handler_and_nothing_else(
    project: Project, tmp_path: Path, docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = f"s3cr3t-{secrets.token_hex(16)}"
    monkeypatch.setenv(SECRET_ENV, token)
    result = invoke_local(
        project,
        "secret",
        {},
        2,
        keep_warm=True,
        on_progress=lambda _: None,
        open_data=LocalData.open,
        validate=validate_project,
        ensure_image=images.ensure_image,
    )
    assert result.outcome.ok and result.outcome.result == {"token": token}
    assert token not in result.outcome.logs
    [container] = project_containers(docker_client, project.name)  # kept warm: still there to look at
    inspect = docker_client.api.inspect_container(container["Id"])
    assert token not in json.dumps(inspect), "the secret is in `docker inspect` of the container"
    assert token not in json.dumps(inspect["Config"].get("Env")) and token not in json.dumps(container["Labels"])
    logs = docker_client.api.logs(container["Id"], stdout=True, stderr=True)
    assert token.encode() not in logs
    image = inspect["Config"]["Image"]
    assert token not in json.dumps(docker_client.api.inspect_image(image))
    assert token not in json.dumps(docker_client.api.history(image))
    saved = tmp_path / "image.tar"
    with saved.open("wb") as out:  # every layer, config and manifest of the image
        for chunk in docker_client.api.get_image(image):
            out.write(chunk)
    assert saved.stat().st_size > MIB
    with saved.open("rb") as archive:
        assert not _occurs_in_stream(iter(lambda: archive.read(MIB), b""), token.encode())


@pytest.mark.docker
@pytest.mark.parametrize("function", ["calls", "calls-gvisor"])
def test_calls_from_a_worker_process_reach_the_host(start: Start, function: str) -> None:
    """A synchronous handler runs in a worker process that writes its calls to its copy of the host connection
    (passed over a socketpair): under runc and under gVisor, each call is answered and the host sees whole
    frames."""
    instance = start(function)
    seen: list[tuple[str, dict[str, Any]]] = []

    def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        seen.append((method, params))
        return {"echoed": params["n"]}

    instance.transport.on_call = on_call
    for _ in range(2):  # the second invocation reuses the worker and its copy of the connection
        assert answers(instance) == {"replies": [{"echoed": n} for n in range(3)], "main_thread": True}
    assert seen == [("echo", {"n": n}) for n in range(3)] * 2


@pytest.mark.docker
@pytest.mark.parametrize("function", ["calls", "calls-gvisor"])
def test_a_worker_process_calls_on_its_own_connection_to_the_gateway(start: Start, function: str) -> None:
    """The gateway's transport offers worker connections: under runc and under gVisor the worker process
    connects to its listener itself (admitted by the same cgroup peer check), and its calls and result travel
    there; the second invocation reuses that connection."""
    instance = start(function)
    seen: list[tuple[str, dict[str, Any]]] = []

    def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Answered:
        seen.append((method, params))
        return Answered({"echoed": params["n"]})

    async def gateway() -> tuple[list[Any], int]:
        transport = AsyncTransport(
            str(instance.socket_dir), peer=container_peer(instance.container_id), on_call=on_call
        )
        await transport.connect(timeout=20)
        try:
            results = [
                await transport.invoke({"probe": "ok"}, invocation_id=f"inv-{n}", deadline=time.time() + 20)
                for n in range(2)
            ]
            return [r.result for r in results], transport.worker_connections
        finally:
            await transport.close()

    results, attached = asyncio.run(gateway())
    assert results == [{"replies": [{"echoed": n} for n in range(3)], "main_thread": True}] * 2
    assert seen == [("echo", {"n": n}) for n in range(3)] * 2
    assert attached == 1


@pytest.mark.docker
def test_gvisor_isolation_runs_the_instance_under_runsc(start: Start) -> None:
    instance = start("gvisor")
    seen = answers(instance)
    assert seen["uid"] != 0 and seen["interfaces"] == ["lo"] and seen["cap_eff"] == "0" * 16
    data = dockerio.inspect_container(instance.container_id)
    assert data["HostConfig"]["Runtime"] == "runsc"
    assert [(c.name, c.detail) for c in check_container(data) if not c.ok] == []
