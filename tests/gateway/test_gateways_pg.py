"""Several gateways on one PostgreSQL state (issue 19, item 2), against a real server (tests/pgserver.py):
routing changes reach a gateway by LISTEN/NOTIFY, not only by its poll; exactly one gateway leads (rollouts,
cron, onCommit), another takes over when the leader is killed with SIGKILL, and no cron tick fires twice nor
does a rollout step run twice (the new leader finishes the rollout where the old one stood); a gateway that loses the database keeps its routes, answers /readyz 503 with the reason, says so in its log,
and recovers when the server is back.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import docker
import pytest
from deploy_helpers import Project, cleanup, make_project, until
from pgserver import SCRIPT
from rollout_helpers import Rollouts

from fnctl.deploy.pickup import GATEWAY_HEARTBEAT, change_mark, record_loaded
from fnctl.gateway.audit import AuditLog
from fnctl.gateway.table import StoreTable, TableFollower
from fnctl.state import cronstate, rolloutstore
from fnctl.state.auditlog import AuditFilter, audit_records, invocation_records
from fnctl.state.location import StateLocation
from fnctl.state.revisions import InstanceRow, InstanceState
from fnctl.state.store import connect


class _NoPools:
    async def reconcile(self, routes: Mapping[str, Mapping[int, int]]) -> None:
        pass


def test_a_route_change_reaches_the_gateway_by_notification_before_its_poll(pg_url: str, tmp_path: Path) -> None:
    """The follower polls only every 60 s here: seeing the change within the wait proves the NOTIFY."""
    location = StateLocation(tmp_path / "anchor", pg_url)
    writer = connect(location)

    async def scenario() -> None:
        follower = TableFollower(StoreTable(location), _NoPools(), interval=60.0)
        await follower.start()
        try:
            await asyncio.sleep(0.3)  # the listener's connection is open (its first wait returned)
            for n in range(3):
                writer.set_route("hello", {1: 100 - 10 * n, 2: 10 * n} if n else {1: 100})
                want = writer.routes()
                deadline = asyncio.get_running_loop().time() + 20
                while (follower.table.routes if follower.table else None) != want:
                    assert asyncio.get_running_loop().time() < deadline, "the change never arrived"
                    await asyncio.sleep(0.01)
        finally:
            await follower.stop()
            follower.close()

    try:
        asyncio.run(scenario())
    finally:
        writer.close()


def test_the_gateways_own_traffic_does_not_make_a_gateway_reread_its_routing_table(pg_url: str, tmp_path: Path) -> None:
    """Invocation audit batches (their chain head is a settings row), other gateways' heartbeats and loaded
    marks, instances and cron ticks are not routing: a gateway's table source must not re-read the table
    (7 queries) for them -- it did for every one of them, so every audit batch reloaded every gateway. A
    route change still makes it re-read."""
    location = StateLocation(tmp_path / "anchor", pg_url)
    other = connect(location)  # what another gateway and its leader write
    other.set_route("hello", {1: 100})
    source = StoreTable(location)
    audit = AuditLog(location, process=True, interval=60)  # shipped by flush() only: one batch per round
    reloads = 0
    try:
        cronstate.last_tick(other, "tick", 999.0)
        assert source() is not None  # the first read
        for round_ in range(5):
            for n in range(40):
                audit.record(
                    request_id=f"r{round_}-{n}", principal=None, function="hello", revision=1, outcome="ok",
                    status=200, duration_ms=0.5, source="127.0.0.1",
                )  # fmt: skip
            assert audit.flush(timeout=20)
            other.beat(GATEWAY_HEARTBEAT)
            record_loaded(other, change_mark(other) + round_)
            other.add_instance(InstanceRow(f"i{round_}", "hello", 1, "c", "/nowhere", InstanceState.READY, 1.0))
            assert cronstate.claim(other, "tick", 1000.0 + round_)
            reloads += source() is not None
        assert len(invocation_records(other, AuditFilter(), limit=1000)) == 200
        assert reloads == 0, f"{reloads} routing-table reloads for 5 rounds of traffic"
        other.set_route("hello", {1: 50, 2: 50})
        table = source()
        assert table is not None and table.routes == {"hello": {1: 50, 2: 50}}
    finally:
        audit.close()
        source.close()
        other.close()


# ---- real gateways (`fnctl serve`) ----


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(port: int) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}
    finally:
        connection.close()


class _Gateway:
    def __init__(self, project: Project, log: Path) -> None:
        self.port, self.log = _free_port(), log
        with log.open("w") as stream:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fnctl", "serve", "--no-access-log", "--address", f"127.0.0.1:{self.port}"],
                cwd=project.root,
                env=project.environ(),
                stdout=subprocess.DEVNULL,
                stderr=stream,
            )

    def ready(self) -> tuple[int, dict[str, Any]]:
        return _ready(self.port)

    def leads(self) -> bool:
        return self.ready()[1].get("leader") is True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _up_or_exited(gateway: _Gateway) -> bool:
    return gateway.ready()[0] == 200 or gateway.process.poll() is not None


def _two_gateways(project: Project, tmp_path: Path, gateways: list[_Gateway]) -> tuple[_Gateway, _Gateway]:
    """Two gateways of `project` started (added to `gateways`, which the caller stops), up, one of them
    leading: (leader, follower)."""
    gateways += [_Gateway(project, tmp_path / f"gateway{n}.err") for n in range(2)]
    for gateway in gateways:
        until(partial(_up_or_exited, gateway), "a gateway", 90)
        assert gateway.process.poll() is None, gateway.log.read_text()
    until(lambda: sum(g.leads() for g in gateways) == 1, "exactly one leader", 30)
    leader, follower = sorted(gateways, key=lambda g: not g.leads())
    return leader, follower


@pytest.fixture
def gateways() -> Iterator[list[_Gateway]]:
    started: list[_Gateway] = []
    yield started
    for gateway in started:
        gateway.stop()


def _pg_project(tmp_path: Path, client: docker.DockerClient, base_image: str, url: str) -> Project:
    project = make_project(tmp_path / "project", client, base_image)
    project.state, project.url = tmp_path / "pg-anchor" / "state", url  # its commands and `store()` go there
    return project


@pytest.mark.docker
def test_one_gateway_leads_and_another_takes_over_after_kill_9_without_a_tick_twice(
    tmp_path: Path, docker_client: docker.DockerClient, base_image: str, pg_url: str, gateways: list[_Gateway]
) -> None:
    project = _pg_project(tmp_path, docker_client, base_image, pg_url)
    try:
        project.function("hello")
        (project.root / "manifests" / "tick.yaml").write_text(
            "apiVersion: fnctl/v1\nkind: Trigger\nmetadata: {name: every-second}\n"
            'spec:\n  function: hello\n  cron: {schedule: "* * * * * *"}\n',
            encoding="utf-8",
        )
        project.ok("apply")
        leader, follower = _two_gateways(project, tmp_path, gateways)
        assert not follower.leads()

        def cron_runs() -> list[str]:
            store = connect(StateLocation(tmp_path / "pg-anchor" / "state", pg_url))
            try:
                records = invocation_records(store, AuditFilter(target="hello"), limit=10_000)
                return [r.request_id for r in records if r.trigger == "every-second"]
            finally:
                store.close()

        until(lambda: len(cron_runs()) >= 2, "the leader's cron runs", 60)
        os.kill(leader.process.pid, signal.SIGKILL)
        leader.process.wait(timeout=30)
        until(follower.leads, "the other gateway to take over", 30)
        before = len(cron_runs())
        until(lambda: len(cron_runs()) >= before + 2, "the new leader's cron runs", 60)
        twice = {rid: n for rid, n in Counter(cron_runs()).items() if n > 1}
        assert twice == {}, f"cron ticks run more than once: {twice}"
        assert '"message": "leading"' in follower.log.read_text()
    finally:
        for gateway in gateways:
            gateway.stop()
        cleanup(project)


# Timed pauses between the weights: the leader is killed while the rollout is between its steps.
STEPPED = """\
rollout:
  strategy: canary
  scaleDownDelay: 1s
  steps:
    - setWeight: 20
    - pause: 2s
    - setWeight: 40
    - pause: 2s
    - setWeight: 60
    - pause: 2s
    - setWeight: 80
    - pause: 2s
"""


@pytest.mark.docker
def test_a_rollout_survives_a_kill_9_of_its_leader_and_no_step_runs_twice(
    tmp_path: Path, docker_client: docker.DockerClient, base_image: str, pg_url: str, gateways: list[_Gateway]
) -> None:
    project = _pg_project(tmp_path, docker_client, base_image, pg_url)
    rollouts = Rollouts(project, 0)  # writes function `fn`; the gateways take their ports on the command line
    try:
        rollouts.deploy_code("one", STEPPED)
        project.ok("apply")  # a first deploy: immediate
        leader, follower = _two_gateways(project, tmp_path, gateways)

        rollouts.deploy_code("two", STEPPED)
        project.ok("apply", "--no-wait")  # the leading gateway drives it
        until(
            lambda: [e.kind for e in _rollout_events(project)].count("weight") >= 2,
            "the leader to drive the rollout to its second weight",
            90,
        )
        assert "completed" not in {e.kind for e in _rollout_events(project)}, "killed mid-rollout"
        os.kill(leader.process.pid, signal.SIGKILL)
        leader.process.wait(timeout=30)
        until(follower.leads, "the other gateway to take over", 30)
        until(lambda: "completed" in {e.kind for e in _rollout_events(project)}, "the new leader to finish it", 120)

        events = _rollout_events(project)
        kinds = [e.kind for e in events]
        assert kinds.count("started") == 1 and kinds.count("completed") == 1, kinds
        steps = Counter((e.kind, e.step) for e in events if e.kind in ("weight", "pause"))
        assert steps == Counter({(kind, step): 1 for step, kind in enumerate(["weight", "pause"] * 4)}), kinds
        assert [e.data["weights"] for e in events if e.kind == "weight"] == [
            {"2": w, "1": 100 - w} for w in (20, 40, 60, 80)
        ], kinds
        with project.store() as store:  # the audit: each routing change of the rollout once, one completion
            audit = [r for r in audit_records(store, AuditFilter(), limit=10_000) if r.target == "fn"]
        routed = Counter(r.detail for r in audit if r.action == "route" and "rollout" in (r.detail or ""))
        assert len(routed) >= 5 and set(routed.values()) == {1}, routed  # 4 steps and the 100%, once each
        assert [r.action for r in audit].count("rollout completed") == 1, [r.action for r in audit]
        until(lambda: rollouts.routes() in ({2: 100, 1: 0}, {2: 100}), "revision 2 to take all the traffic", 30)
        assert rollouts.status(2) == "ready"
        status, body = _call(follower.port, "/invoke/fn")
        assert status == 200 and json.loads(body)["version"] == "two", body
        assert '"message": "leading"' in follower.log.read_text()
    finally:
        for gateway in gateways:
            gateway.stop()
        cleanup(project)


def _rollout_events(project: Project) -> list[rolloutstore.RolloutEventRow]:
    """The events of `fn`'s latest rollout (revision 2's), in order."""
    with project.store() as store:
        rows = rolloutstore.rollouts(store, "fn")
        return rolloutstore.events(store, rows[-1].id) if rows and rows[-1].canary == 2 else []


def _call(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=b"{}")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture
def own_server() -> Iterator[tuple[Path, str]]:
    """A throwaway server of this test's own (it is stopped and restarted): its directory and URL."""
    directory = Path(tempfile.mkdtemp(prefix="fnctl-pg-own-"))
    try:
        url = subprocess.run(["bash", str(SCRIPT), "start", str(directory)], check=True, capture_output=True, text=True)
        yield directory, url.stdout.strip()
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], check=False, capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.docker
def test_a_gateway_that_loses_the_database_keeps_routing_is_not_ready_and_recovers(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    base_image: str,
    own_server: tuple[Path, str],
    gateways: list[_Gateway],
) -> None:
    directory, url = own_server
    project = _pg_project(tmp_path, docker_client, base_image, url)
    try:
        project.function("hello")
        manifest = project.root / "manifests" / "hello.yaml"
        manifest.write_text(manifest.read_text().replace("  handler:", "  access: {roles: [public]}\n  handler:"))
        project.ok("apply")
        gateways.append(_Gateway(project, tmp_path / "gateway.err"))
        gateway = gateways[0]
        until(lambda: gateway.ready()[0] == 200 and gateway.leads(), "the gateway, leading", 90)

        subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], check=True, capture_output=True)
        status, body = until(lambda: (r := gateway.ready())[0] == 503 and r, "/readyz to say not ready", 30)
        assert body["status"] == "unready" and body["reason"].startswith("state unreachable since"), body
        assert _invoke(gateway.port) == 200  # the routes it has are still served
        until(lambda: "state unreachable since" in gateway.log.read_text(), "the log to say so", 10)
        until(lambda: not gateway.leads(), "the leader to stop leading without its lock's session", 30)

        subprocess.run(["bash", str(SCRIPT), "start", str(directory)], check=True, capture_output=True)
        until(lambda: gateway.ready()[0] == 200, "/readyz to recover", 60)
        until(gateway.leads, "the gateway to lead again", 30)
        assert "state store reachable again" in gateway.log.read_text()
        assert _invoke(gateway.port) == 200
    finally:
        for gateway in gateways:
            gateway.stop()
        cleanup(project)


def _invoke(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/invoke/hello", body=b"{}")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()
