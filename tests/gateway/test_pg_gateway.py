"""A project deployed, served and rolled back with its state on PostgreSQL, end to end.

Real Docker, a real PostgreSQL server (tests/pgserver.py), the CLI as subprocesses and a real `fnctl serve`
on 127.0.0.1 reading its routing table and writing its invocation audit (through its writer process) there.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest
from deploy_helpers import Project, cleanup, make_project, until

from fnctl.state import pg
from fnctl.state.auditlog import AuditFilter, invocation_records
from fnctl.state.location import StateLocation
from fnctl.state.store import connect


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


def _public(project: Project) -> None:
    """Make the project's `hello` callable without a key (its manifest as `project.function` wrote it)."""
    manifest = project.root / "manifests" / "hello.yaml"
    manifest.write_text(manifest.read_text().replace("  handler:", "  access: {roles: [public]}\n  handler:"))


@contextmanager
def _served_hello(
    tmp_path: Path, docker_client: docker.DockerClient, base_image: str, state: StateLocation
) -> Iterator[tuple[Project, int, subprocess.Popen[bytes], Path]]:
    """A project whose public `hello` (version "one") is applied to `state` and served by a real `fnctl serve`
    on a free port, ready: (project, port, the gateway's process, its stderr's file). Stopped and cleaned up
    after."""
    project = make_project(tmp_path / "project", docker_client, base_image)
    project.env["FNCTL_STATE"] = state.to_arg()
    port = _free_port()
    with (project.root / "fnctl.toml").open("a", encoding="utf-8") as config:
        config.write(f'\n[gateway]\naddress = "127.0.0.1:{port}"\n')
    serve = None
    try:
        project.function("hello", version="one")
        _public(project)
        project.ok("apply")
        err = tmp_path / "serve.err"
        with err.open("w") as stream:
            serve = subprocess.Popen(
                [sys.executable, "-m", "fnctl", "serve", "--no-access-log"],
                cwd=project.root,
                env=project.environ(),
                stdout=subprocess.DEVNULL,
                stderr=stream,
            )
        until(lambda: _get(port, "GET", "/readyz")[0] == 200 or serve.poll() is not None, "the gateway", 60)
        assert serve.poll() is None, err.read_text()
        yield project, port, serve, err
    finally:
        if serve is not None and serve.poll() is None:
            serve.terminate()
            serve.wait(timeout=60)
        cleanup(project)


@pytest.mark.docker
def test_apply_serve_and_rollback_with_the_state_on_postgresql(
    tmp_path: Path, docker_client: docker.DockerClient, base_image: str, pg_url: str
) -> None:
    state = StateLocation(tmp_path / "pg-anchor" / "state", pg_url)
    with _served_hello(tmp_path, docker_client, base_image, state) as (project, port, serve, err):
        assert not project.state.exists()  # nothing went to a SQLite file
        status, body = _get(port, "POST", "/invoke/hello", b'{"name": "ada"}')
        assert status == 200 and json.loads(body)["version"] == "one", body

        project.function("hello", version="two")  # a new revision, seen by the running gateway
        _public(project)
        project.ok("apply")
        until(
            lambda: json.loads(_get(port, "POST", "/invoke/hello", b"{}")[1] or b"{}").get("version") == "two",
            "the gateway to route to revision 2",
        )
        project.ok("rollback", "hello", "--to", "1")
        until(
            lambda: json.loads(_get(port, "POST", "/invoke/hello", b"{}")[1] or b"{}").get("version") == "one",
            "the gateway to route back to revision 1",
        )
        history = project.ok("history", "hello", "-o", "json")
        assert sorted(r["number"] for r in json.loads(history.out)) == [1, 2]

        def invocations() -> int:
            store = connect(state)
            try:
                return len(invocation_records(store, AuditFilter(target="hello"), limit=1000))
            finally:
                store.close()

        until(lambda: invocations() >= 3, "the gateway's invocation audit to reach PostgreSQL")
        verify = project.ok("audit", "verify")
        assert "audit:" in verify.out and "intact" in verify.out and "invocations:" in verify.out


def _sessions(url: str) -> int:
    """Sessions the server has counted for the database so far (pg_stat_database.sessions), this look's own
    included: each look is a new connection, so that the statistics read are fresh."""
    connection = pg.connect(url)
    try:
        connection.execute("SELECT pg_stat_force_next_flush()")  # this backend's own counts, now
        row = connection.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").fetchone()
        assert row is not None
        return int(str(row[0]))
    finally:
        connection.close()


@pytest.mark.docker
def test_a_serving_gateway_does_not_connect_anew_to_postgresql_under_load(
    tmp_path: Path, docker_client: docker.DockerClient, base_image: str, pg_url: str
) -> None:
    """The leader's rollout loop (a pass every half second) and the pools' look-ups keep their connections:
    over seconds of traffic the server sees no new session from the gateway but its audit writer's (it used
    to see about 2 a second, each a backend fork and a schema check: 8 in this window)."""
    state = StateLocation(tmp_path / "pg-anchor" / "state", pg_url)
    with _served_hello(tmp_path, docker_client, base_image, state) as (project, port, serve, err):
        for _ in range(5):  # warm: the revision loaded, its instance up, the connections the gateway keeps open
            assert _get(port, "POST", "/invoke/hello", b"{}")[0] == 200
        until(lambda: json.loads(_get(port, "GET", "/readyz")[1] or b"{}").get("leader") is True, "the gateway to lead")
        before = _sessions(pg_url)
        own = _sessions(pg_url) - before  # what a look itself adds to the count
        before += own
        deadline = time.monotonic() + 4.0  # 8 passes of the rollout loop
        calls = 0
        while time.monotonic() < deadline:
            assert _get(port, "POST", "/invoke/hello", b"{}")[0] == 200
            calls += 1
        opened = _sessions(pg_url) - before - own
        assert serve.poll() is None, err.read_text()
        # At most one: the invocation audit's writer process, started once when the traffic's rows outgrow
        # the in-process writer (fnctl.gateway.auditwriter), may open its connection in the window.
        assert calls > 0 and opened <= 1, f"{opened} new sessions over {calls} calls"
