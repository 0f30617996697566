"""`fnctl serve --workers N`: N gateway processes on one port, one owner of the instances.

The pure parts (each instance's concurrency split between the workers, the owner's demand, the merged
metrics) without a daemon; the rest against real instances: a load of more concurrent requests than the
instances' slots through two workers, watched from the runtime side (the runtime's own count of accepted
invocations, read over a connection of the test's own), metrics summed over the workers, a worker killed and
restarted, and a clean stop of the parent stopping every worker.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import Project, cleanup, make_project, until
from pgserver import StateFactory
from polling import eventually

from fnctl.gateway.crew import STALE, Crew
from fnctl.gateway.workers import demand, labelled, merged, units
from fnctl.invocation.aiotransport import AsyncTransport
from fnctl.invocation.rendezvous import cgroup_names_container, container_peer


def test_the_units_of_an_instance_below_the_workers_are_leased_by_one_worker_at_a_time(tmp_path: Path) -> None:
    one, two = Crew(0, 2, tmp_path), Crew(1, 2, tmp_path)
    assert one.shared_units("i-a", 2) is None  # as many units as workers: split, not leased
    first, second = one.shared_units("i-a", 1), two.shared_units("i-a", 1)
    assert first is not None and second is not None
    assert first.take() and not second.take() and not first.take()  # nor twice by the same worker
    first.give()
    assert second.take() and not first.take()
    second.close()  # a worker that dies holding a unit: the kernel drops its lock with the file
    assert first.take()
    first.close()


def test_each_unit_of_an_instance_has_exactly_one_worker() -> None:
    for concurrency in (1, 2, 3, 8, 13):
        for workers in (1, 2, 3, 4):
            for instance in ("i-a", "i-b", "i-0123456789", "x"):
                shares = [units(concurrency, workers, worker, instance) for worker in range(workers)]
                assert sum(shares) == concurrency, (concurrency, workers, instance, shares)
                assert max(shares) - min(shares) <= 1  # as even as whole units go
    # concurrency below the workers: the instances' units land on different workers
    owners = {next(w for w in range(2) if units(1, 2, w, f"i-{n}")) for n in range(16)}
    assert owners == {0, 1}


def test_the_owner_scales_for_the_busiest_worker() -> None:
    assert demand([0, 0]) == 0
    assert demand([3, 1]) == 6  # the busiest has half of every instance: it needs twice its load in all
    assert demand([2]) == 2


def test_metrics_of_several_workers_merge_into_one_labelled_exposition() -> None:
    one = b'# HELP calls_total Calls.\n# TYPE calls_total counter\ncalls_total{function="f"} 2.0\nup 1.0\n'
    two = b'# HELP calls_total Calls.\n# TYPE calls_total counter\ncalls_total{function="f"} 3.0\n'
    text = merged([labelled(one, 0), labelled(two, 1)])
    assert text.count(b"# HELP calls_total") == 1 and text.count(b"# TYPE calls_total") == 1
    assert b'calls_total{function="f",worker="0"} 2.0' in text
    assert b'calls_total{function="f",worker="1"} 3.0' in text
    assert b'up{worker="0"} 1.0' in text


def test_the_owner_hears_the_followers_loads_and_forgets_a_silent_one(tmp_path: Path) -> None:
    owner, follower = Crew(0, 2, tmp_path), Crew(1, 2, tmp_path)
    heard: list[tuple[str, int]] = []

    async def main() -> None:
        owner.listen(lambda function, revision: heard.append((function, revision)))
        try:
            assert owner.demand(("f", 1), 1) == 2  # alone: as if the follower had as much
            follower.report(("f", 1), 5, used=2)
            await eventually(lambda: heard, "the follower's first report", 5)
            assert heard == [("f", 1)] and owner.demand(("f", 1), 1) == 10
            assert owner.used(("f", 1)) == 2  # the owner stops none of those two for idleness
            follower.report(("f", 1), 5, used=2)  # unchanged and recent: not sent again
            follower.report(("g", 3), 0)
            await eventually(lambda: len(heard) == 2, "the follower's report of g", 5)
            assert heard[1] == ("g", 3)
            owner.loads[("f", 1)][1] = (5, 2, time.monotonic() - STALE)  # a worker that went quiet (died)
            assert owner.demand(("f", 1), 1) == 2 and owner.used(("f", 1)) == 0
        finally:
            owner.close()
            follower.close()

    asyncio.run(main())


# ---- against real instances ----

HANDLER = """\
import time


def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"ok": True}
"""

MANIFEST = """\
apiVersion: fnctl/v1
kind: Function
metadata: {name: slow}
spec:
  runtime: python3.11
  source: ../functions/slow
  handler: main.handler
  limits: {timeout: 20s, memory: 64Mi}
  scaling: {minInstances: 2, maxInstances: 2, concurrency: 2}
  access: {roles: [public]}
---
apiVersion: fnctl/v1
kind: Function
metadata: {name: grow}
spec:
  runtime: python3.11
  source: ../functions/slow
  handler: main.handler
  limits: {timeout: 20s, memory: 64Mi}
  scaling: {minInstances: 1, maxInstances: 2, concurrency: 2}
  access: {roles: [public]}
---
apiVersion: fnctl/v1
kind: Function
metadata: {name: one}
spec:
  runtime: python3.11
  source: ../functions/slow
  handler: main.handler
  limits: {timeout: 5s, memory: 64Mi}
  scaling: {minInstances: 1, maxInstances: 1, concurrency: 1}
  access: {roles: [public]}
"""


@dataclass
class Workers:
    project: Project
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def listening(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("message") == "listening"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


@pytest.fixture(scope="module")
def workers(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, base_image: str, project_states: StateFactory
) -> Iterator[Workers]:
    project = make_project(tmp_path_factory.mktemp("workers") / "project", docker_client, base_image, project_states)
    log = project.root.parent / "serve.err"
    process = None
    try:
        project.own_function("slow", HANDLER, MANIFEST)
        project.ok("apply")
        port = _free_port()
        with log.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "fnctl", "serve", "--workers", "2", "--address", f"127.0.0.1:{port}"],
                cwd=project.root,
                env=project.environ(),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        running = Workers(project, port, process, log)
        until(lambda: len(running.listening()) == 2 or process.poll() is not None, "two workers listening", 60)
        assert process.poll() is None, log.read_text()
        until(lambda: _get(port, "/readyz")[0] == 200, "the gateway to be ready", 30)
        yield running
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=60)
        cleanup(project)


def _instances(project: Project, function: str = "slow") -> list[tuple[str, str]]:
    with project.store() as store:
        return sorted(
            (row.container_id, row.socket_dir)
            for row in store.instances()
            if row.function == function and row.container_id
        )


async def _load(port: int, requests: int, clients: int, function: str = "slow") -> list[int]:
    """`requests` invocations from `clients` concurrent connections (each its own, so the kernel spreads
    them over the workers); the statuses."""
    statuses: list[int] = []
    queue = list(range(requests))

    async def client() -> None:
        while queue:
            queue.pop()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = b'{"sleep": 0.2}'
            writer.write(
                b"POST /invoke/%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (function.encode(), len(body), body)
            )
            await writer.drain()
            head = await reader.readline()
            statuses.append(int(head.split()[1]))
            await reader.read()
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return statuses


async def _watched_load(
    port: int, instances: list[tuple[str, str]], function: str = "slow", requests: int = 48, clients: int = 16
) -> tuple[list[int], list[int]]:
    """The load, with every instance's in-flight count (running and waiting, the runtime's own) read every
    few milliseconds over a connection of the test's own; the statuses and each instance's highest count."""
    transports = []
    for container_id, socket_dir in instances:
        transport = AsyncTransport(socket_dir, peer=container_peer(container_id))
        await transport.connect(timeout=10)
        transports.append(transport)
    highest = [0] * len(transports)
    done = asyncio.Event()

    async def watch(index: int, transport: AsyncTransport) -> None:
        while not done.is_set():
            highest[index] = max(highest[index], await transport.ping())
            await asyncio.sleep(0.002)

    watchers = [asyncio.create_task(watch(i, t)) for i, t in enumerate(transports)]
    try:
        statuses = await _load(port, requests, clients, function)
    finally:
        done.set()
        await asyncio.gather(*watchers)
        for transport in transports:
            await transport.close()
    return statuses, highest


def _served(port: int, function: str = "slow") -> dict[str, float]:
    """fnctl_requests_total of `function` answered 200, by worker, from one scrape of /metrics."""
    served: dict[str, float] = {}
    for line in _get(port, "/metrics")[1].decode().splitlines():
        if line.startswith("fnctl_requests_total{") and f'function="{function}"' in line and 'code="200"' in line:
            worker = line.split('worker="')[1].split('"')[0]
            served[worker] = served.get(worker, 0.0) + float(line.rsplit(" ", 1)[1])
    return served


@pytest.mark.docker
def test_two_workers_never_send_an_instance_more_than_its_concurrency(workers: Workers) -> None:
    instances = until(lambda: len(_instances(workers.project)) == 2 and _instances(workers.project), "2 instances")
    statuses, highest = asyncio.run(asyncio.wait_for(_watched_load(workers.port, instances), 120))
    assert statuses == [200] * 48, statuses
    # 16 clients for 2 instances × concurrency 2: every instance full, never over (the runtime would queue
    # what is over, and count it)
    assert max(highest) == 2 and all(h <= 2 for h in highest), highest
    assert {listening["worker"] for listening in workers.listening()} == {0, 1}
    # both workers served, and one /metrics shows both: labelled by worker, summing to every request answered
    counts = until(lambda: (c := _served(workers.port)) and sum(c.values()) == 48 and c, "48 in one /metrics", 10)
    assert set(counts) == {"0", "1"} and all(counts.values()), counts
    # the followers took no stop of the owner's, nor their own letting go, for a crash
    assert not [line for line in workers.lines() if "lost instance" in str(line.get("message", ""))]


@pytest.mark.docker
def test_the_owner_scales_for_a_followers_load(workers: Workers) -> None:
    """A follower's standing load (here said by the test in the follower's place, on the owner's socket)
    makes the owner start instances up to maxInstances, though the owner itself has no request."""
    owner = next(line for line in workers.lines() if line.get("message") == "worker started" and line["worker"] == 0)
    command = Path(f"/proc/{owner['pid']}/cmdline").read_bytes().split(b"\0")
    run_dir = Path(command[command.index(b"--run-dir") + 1].decode())
    revision = workers.project.live_revision("grow")
    follower = Crew(1, 2, run_dir)

    def grown() -> bool:
        follower.report(("grow", revision), 4, used=1)  # 4 at once on its half of one instance: 2 instances
        return len([row for row in _rows(workers.project) if row.function == "grow"]) == 2

    try:
        until(grown, "the owner to start a second instance of grow", 60)
    finally:
        follower.close()


def _rows(project: Project) -> list[Any]:
    with project.store() as store:
        return [row for row in store.instances() if row.container_id and row.state.value == "ready"]


@pytest.mark.docker
def test_a_function_whose_concurrency_is_below_the_workers_is_served_by_every_worker(workers: Workers) -> None:
    """`one` has a single instance of concurrency 1 for two workers: no fixed split gives both a share (one
    would queue its requests until they time out). Each request leases the unit instead: all are answered,
    by both workers, and the instance never runs two at once."""
    instances = until(lambda: _instances(workers.project, "one"), "the instance of one")
    statuses, highest = asyncio.run(
        asyncio.wait_for(_watched_load(workers.port, instances, "one", requests=16, clients=4), 120)
    )
    assert statuses == [200] * 16, statuses
    assert highest == [1], highest
    counts = until(lambda: (c := _served(workers.port, "one")) and sum(c.values()) == 16 and c, "16 served", 10)
    assert set(counts) == {"0", "1"} and all(counts.values()), counts


def _worker_pid(workers: Workers, worker: int) -> int:
    started = [line for line in workers.lines() if line.get("message") == "worker started" and line["worker"] == worker]
    return int(max(started, key=lambda line: str(line["time"]))["pid"])


def _connections(pid: int, container_id: str, socket_dir: str) -> dict[int, str]:
    """Process `pid`'s connections from the runtime of `container_id` to its listeners in `socket_dir`: fd →
    listener name. The accepted socket lives in the container's network namespace, under the name the
    listener was bound with (`.<pid>-<random>.bind`, renamed after)."""
    runtime = next(
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and cgroup_names_container(_read(entry / "cgroup"), container_id)
    )
    prefix = f"{socket_dir.rstrip('/')}/.{pid}-"
    names = {}
    for line in _read(Path(f"/proc/{runtime}/net/unix")).splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[5] == "03" and fields[7].startswith(prefix):  # 03: connected
            names[f"socket:[{fields[6]}]"] = fields[7]
    found = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target in names:
            found[int(fd.name)] = names[target]
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # a process gone meanwhile
        return ""


def _shut_down(pid: int, fds: Collection[int]) -> int:
    """Shut down sockets of another process (pidfd_getfd: the same socket, here), as a broken link would.
    An fd the process closed since it was listed (a connection it replaced meanwhile) is skipped; the
    number shut down is returned."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = libc.syscall(434, pid, 0)  # pidfd_open
    assert pidfd >= 0, os.strerror(ctypes.get_errno())
    shut = 0
    try:
        for fd in fds:
            mine = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
            if mine < 0 and ctypes.get_errno() == errno.EBADF:
                continue
            assert mine >= 0, os.strerror(ctypes.get_errno())
            with socket.socket(fileno=mine) as sock:
                sock.shutdown(socket.SHUT_RDWR)
            shut += 1
    finally:
        os.close(pidfd)
    return shut


@pytest.mark.docker
def test_a_follower_whose_connection_to_a_running_instance_breaks_connects_again(workers: Workers) -> None:
    """The follower's connections to `one`'s instance (the runtime's, and its worker processes') are shut
    down from outside while the instance runs on: the follower connects to it again and serves it again."""
    instances = until(lambda: _instances(workers.project, "one"), "the instance of one")
    ((container_id, socket_dir),) = instances
    pid = _worker_pid(workers, 1)
    before = until(
        lambda: _connections(pid, container_id, socket_dir), "the follower's connections to the instance of one"
    )
    served = _served(workers.port, "one").get("1", 0.0)
    assert _shut_down(pid, before) > 0, before
    until(
        lambda: set(_connections(pid, container_id, socket_dir).values()) - set(before.values()),
        "the follower to connect to the instance of one again",
        30,
    )
    statuses = asyncio.run(asyncio.wait_for(_load(workers.port, requests=12, clients=4, function="one"), 60))
    assert statuses == [200] * 12, statuses
    until(lambda: _served(workers.port, "one").get("1", 0.0) > served, "the follower to serve one again", 10)
    assert _instances(workers.project, "one") == instances  # the same instance: only a connection broke


@pytest.mark.docker
def test_a_killed_worker_is_restarted_and_logged_and_instances_stay(workers: Workers) -> None:
    before = _instances(workers.project)
    for victim in (1, 0):  # a follower, then the owner
        pid = max(
            (line for line in workers.lines() if line.get("message") == "worker started" and line["worker"] == victim),
            key=lambda line: str(line["time"]),
        )["pid"]
        started = len([line for line in workers.listening() if line["worker"] == victim])
        os.kill(pid, signal.SIGKILL)
        until(
            lambda: len([line for line in workers.listening() if line["worker"] == victim]) > started,
            f"worker {victim} to be restarted",
            60,
        )
        assert any(
            line.get("message") == "worker exited; restarting it" and line["pid"] == pid and line["exit"] == -9
            for line in workers.lines()
        )
        statuses = asyncio.run(asyncio.wait_for(_load(workers.port, requests=8, clients=4), 60))
        assert statuses == [200] * 8
    assert _instances(workers.project) == before  # adopted by the new owner, not started again


@pytest.mark.docker
def test_a_clean_stop_of_the_parent_stops_every_worker(workers: Workers) -> None:
    pids = {line["pid"] for line in workers.lines() if line.get("message") == "worker started"}
    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(timeout=60) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    stopped = [line for line in workers.lines() if line.get("message") == "worker stopped"]
    assert len(stopped) == 2 and all(line["exit"] == 0 for line in stopped), stopped
    assert _get(workers.port, "/readyz")[0] == 0  # nobody listens any more
