"""The socket directory is no way out of the sandbox (security issue, item 1): real containers, real engine.

A sandbox's only host path is its instance's socket directory, mounted read-only: a function can neither
fill the host's disk through it nor plant a name there (a `sock` symlink to another function's socket, a
listener of its own) that a later host connection would follow. The host listens and the runtime connects
out; the host serves only a peer inside the container it started. `fnctl sandbox check` says so per instance.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from sandbox_handlers.harness import Start, answers, cleanup, probes_tag, starter, throwaway, write_project

from fnctl.engine import dockerio, instances
from fnctl.engine.inspection import check_instances
from fnctl.engine.instances import Instance
from fnctl.invocation.aiotransport import AsyncTransport
from fnctl.invocation.rendezvous import container_peer
from fnctl.invocation.transport import UnixSocketTransport
from fnctl.manifest.project import Project

MIB = 1 << 20
# Handlers that attack the socket directory from inside; each reports the errno of every attempt (None: it
# worked) and which function it is, so that a test can tell which instance answered a connection.
ESCAPE = '''
import errno
import os
import socket

DIR = "/run/fnctl"


def _errno(action):
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return None


def _fill(path, mib):
    chunk = b"x" * (1 << 20)
    with open(path, "wb") as out:
        for _ in range(mib):
            out.write(chunk)


def fill(event, context):
    """Write far more than /tmp and memory allow, in files under the fsize limit, into the socket directory."""
    attempts = {f"file{n}": _errno(lambda n=n: _fill(f"{DIR}/blob{n}", 8)) for n in range(event.get("files", 6))}
    attempts["nested"] = _errno(lambda: os.makedirs(f"{DIR}/sub/dir"))
    return {"function": context.function_name, "attempts": attempts, "seen": sorted(os.listdir(DIR))}


def _replace_with_symlink(target, name):
    os.symlink(target, f"{DIR}/.planted")
    os.rename(f"{DIR}/.planted", f"{DIR}/{name}")


def plant(event, context):
    """Every way to put a name into the directory that a host connection could follow."""
    target = event["target"]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    attempts = {
        "sock_replaced_by_symlink": _errno(lambda: _replace_with_symlink(target, "sock")),
        "listener_symlink": _errno(lambda: os.symlink(target, f"{DIR}/h-1-0000.sock")),
        "listener_of_its_own": _errno(lambda: listener.bind(f"{DIR}/h-2-0000.sock")),
        "staged_rename": _errno(lambda: os.rename(f"{DIR}/container-id", f"{DIR}/h-3-0000.sock")),
        "unlink_container_id": _errno(lambda: os.unlink(f"{DIR}/container-id")),
    }
    listener.close()
    return {"function": context.function_name, "attempts": attempts, "seen": sorted(os.listdir(DIR))}


def whoami(event, context):
    return {"function": context.function_name}
'''
FUNCTIONS: dict[str, dict[str, Any]] = {
    "filler": {"handler": "escape.fill"},
    "filler-gvisor": {"handler": "escape.fill", "isolation": "gvisor"},
    "planter": {"handler": "escape.plant"},
    "vault": {"handler": "escape.whoami"},
}
# What the runtime's write attempts may fail with: EROFS on runc; under gVisor the sentry may check the
# directory's permissions (owned by the host user, 0755) before the mount's read-only flag.
DENIED = {"EROFS", "EACCES", "EPERM"}


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, base_image: str
) -> Iterator[Project]:
    with throwaway(docker_client) as name:
        project = write_project(tmp_path_factory.mktemp("escape") / "project", name, base_image, FUNCTIONS)
        (project.root / "functions" / "probes" / "escape.py").write_text(textwrap.dedent(ESCAPE))
        yield project


@pytest.fixture(scope="module")
def image(project: Project) -> str:
    return probes_tag(project)


@pytest.fixture
def start(project: Project, image: str, docker_client: docker.DockerClient) -> Iterator[Start]:
    with starter(project, image, revision="1") as start_instance:
        yield start_instance
    cleanup(docker_client, project.name, images=False)


def host_names(instance: Instance) -> dict[str, int]:
    """What is in the instance's directory on the host, with the size of each entry (not following links)."""
    return {entry.name: entry.stat(follow_symlinks=False).st_size for entry in os.scandir(instance.socket_dir)}


def assert_nothing_landed(instance: Instance) -> None:
    names = host_names(instance)
    # Only what the host made: the container's ID; its listeners come and go with each connection.
    assert set(names) == {instances.CONTAINER_FILE}, names
    assert names[instances.CONTAINER_FILE] == 64


@pytest.mark.docker
@pytest.mark.parametrize("function", ["filler", "filler-gvisor"])
def test_a_function_cannot_write_into_its_socket_directory(start: Start, function: str) -> None:
    instance = start(function)
    result = answers(instance, {"files": 6})  # 48 MiB: past tmp 16Mi, and past fsize per file were it one file
    assert result["function"] == function
    failed = {what: error for what, error in result["attempts"].items() if error not in DENIED}
    assert failed == {}, f"writes into /run/fnctl that were not refused as read-only: {failed}"
    assert result["seen"] == [instances.CONTAINER_FILE]  # the runtime itself wrote nothing there either
    assert_nothing_landed(instance)
    mounts = dockerio.inspect_container(instance.container_id)["Mounts"]
    assert [(m["Source"], m["Destination"], m["RW"]) for m in mounts] == [
        (str(instance.socket_dir), "/run/fnctl", False)
    ]
    assert answers(instance)["function"] == function  # and it keeps serving


@pytest.mark.docker
def test_a_planted_name_cannot_redirect_a_reconnect_to_another_function(start: Start) -> None:
    vault = start("vault")
    planter = start("planter")
    assert answers(vault)["function"] == "vault"
    # Aim at the vault's directory: under the old layout its `sock`, now its host listeners' directory.
    result = answers(planter, {"target": str(vault.socket_dir / "sock")})
    assert result["function"] == "planter"
    assert {what: error for what, error in result["attempts"].items() if error not in DENIED} == {}
    assert result["seen"] == [instances.CONTAINER_FILE]
    assert_nothing_landed(planter)

    # `fnctl invoke planter --direct`: a new host process's connection, found from the store's row.
    direct = instances.connect_existing(planter.function, planter.container_id, planter.socket_dir, planter.id)
    assert direct is not None
    try:
        assert answers(direct, {"target": "/nonexistent"})["function"] == "planter"
    finally:
        direct.transport.close()

    # A restarted gateway: a fresh asyncio connection per adopted instance, as `RevisionPool._attach` makes.
    async def gateway_reconnect() -> Any:
        transport = AsyncTransport(str(planter.socket_dir), peer=container_peer(planter.container_id))
        try:
            await transport.connect(timeout=10)
            reply = await transport.invoke(
                {"target": "/nonexistent"}, invocation_id="after-restart", deadline=time.time() + 10
            )
            return reply.result
        finally:
            await transport.close()

    assert asyncio.run(gateway_reconnect())["function"] == "planter"
    assert_nothing_landed(planter)


@pytest.mark.docker
def test_a_foreign_process_connecting_to_the_listener_is_refused(
    start: Start, docker_client: docker.DockerClient
) -> None:
    instance = start("vault")
    checked: list[int] = []
    in_container = container_peer(instance.container_id)

    def peer(pid: int) -> bool:
        checked.append(pid)
        return bool(in_container(pid))

    transport = UnixSocketTransport(str(instance.socket_dir), peer=peer)
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # this test process, on the host
    docker_client.api.pause(instance.container_id)  # the runtime cannot connect first, whatever its timing
    try:
        transport.listen()
        [listener] = [name for name in host_names(instance) if name.startswith("h-")]
        foreign.connect(str(instance.socket_dir / listener))
        docker_client.api.unpause(instance.container_id)
        ready = transport.connect(timeout=10)
        foreign.settimeout(10)
        assert foreign.recv(4096) == b""  # closed without a byte: no ready frame, nothing served
        assert checked[0] == os.getpid() and len(checked) == 2 and checked[1] != os.getpid()
        assert ready["function"] == "vault" and transport.ping() == 0
        with pytest.raises(OSError):  # the listener went once the runtime was connected
            foreign_again = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                foreign_again.connect(str(instance.socket_dir / listener))
            finally:
                foreign_again.close()
    finally:
        if docker_client.api.inspect_container(instance.container_id)["State"]["Paused"]:
            docker_client.api.unpause(instance.container_id)
        foreign.close()
        transport.close()


@pytest.mark.docker
def test_a_host_process_killed_while_listening_leaves_the_instance_reachable(start: Start, project: Project) -> None:
    """A `kill -9` leaves a listener name behind: the runtime tries it once, and the next host process still
    connects (and removes the dead process's name)."""
    instance = start("vault")
    script = (
        "import sys, time; from fnctl.invocation.transport import UnixSocketTransport; "
        "t = UnixSocketTransport(sys.argv[1], peer=lambda pid: False); t.listen(); print('up', flush=True); "
        "time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(instance.socket_dir)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        stale = [name for name in host_names(instance) if name.startswith(f"h-{child.pid}-")]
        assert len(stale) == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert stale[0] in host_names(instance)  # left behind
    again = instances.connect_existing(instance.function, instance.container_id, instance.socket_dir, instance.id)
    assert again is not None
    try:
        assert answers(again)["function"] == "vault"
    finally:
        again.transport.close()
    assert_nothing_landed(instance)


@pytest.mark.docker
@pytest.mark.parametrize("function", ["vault", "filler-gvisor"])
def test_sandbox_check_has_a_passing_no_writable_host_path_row(start: Start, project: Project, function: str) -> None:
    instance = start(function)
    [report] = [r for r in check_instances(project.name, function) if r.instance == instance.id]
    rows = {check.name: check for check in report.checks}
    assert rows["no writable host path"].ok, rows["no writable host path"].detail
    assert rows["no writable host path"].detail == "/run/fnctl:ro"
    assert rows["only its socket directory mounted"].ok
    assert [(c.name, c.detail) for c in report.checks if not c.ok] == []
