"""The gateway's instance pool: its pure decisions, the asyncio transport (against the runtime run as a
local process), and `PoolManager` against real Docker: scaling up under load and back down, scale from
zero, crash replacement, 429-class overload, preview of an unlisted revision, a 0% revision kept warm,
ready-only routing, drain on close.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import docker
import pytest
from deploy_helpers import Project, cleanup, make_project
from pgserver import StateFactory
from polling import eventually, eventually_awaited

from fnctl.deploy.revisionspec import function_from_spec
from fnctl.engine import images, instances
from fnctl.engine.sandbox import labels
from fnctl.gateway.crew import Crew
from fnctl.gateway.poolhost import Overloaded, PoolResult, PoolStats, Slot, SlotPhase, Started, Target, Unavailable
from fnctl.gateway.pools import PoolManager
from fnctl.gateway.revisionpool import RevisionPool
from fnctl.gateway.scaling import Routing, idle_to_stop, kept_warm, pick, refuse, retry_after, routing_of, to_start
from fnctl.invocation.aiotransport import AsyncTransport, FrameTooLarge
from fnctl.invocation.outcome import Failure
from fnctl.invocation.protocol import ConnectionLost, ErrorKind
from fnctl.invocation.rendezvous import PeerCheck, Rendezvous
from fnctl.invocation.transport import TransportTimeout
from fnctl.manifest.model import Limits, Scaling
from fnctl.manifest.project import load_project
from fnctl.state.revisions import InstanceRow, InstanceState

T = TypeVar("T")
RUNTIME = Path(__file__).resolve().parents[2] / "runtime-image" / "fnctl_runtime.py"


# ---- decisions (pure, no daemon) ----------------------------------------------------------------


@dataclass(frozen=True)
class Inst:
    order: int
    inflight: int = 0
    ready: bool = True
    last_used: float = 0.0
    units: int | None = None


def test_pick_takes_the_least_busy_ready_instance_with_room_oldest_first() -> None:
    assert pick([], 4) is None
    assert pick([Inst(0, ready=False), Inst(1, inflight=4)], 4) is None  # starting, or full
    assert pick([Inst(0, inflight=2), Inst(1, inflight=1), Inst(2, inflight=1)], 4) == Inst(1, inflight=1)
    assert pick([Inst(3), Inst(1), Inst(2)], 1) == Inst(1)  # idle ones: the oldest, so the newer go idle
    assert pick([Inst(0, inflight=0, ready=False), Inst(1, inflight=3)], 4) == Inst(1, inflight=3)
    # this process's share of an instance (`fnctl serve --workers`) caps it below `concurrency`
    assert pick([Inst(0, inflight=2, units=2), Inst(1, inflight=3)], 4) == Inst(1, inflight=3)
    assert pick([Inst(0, units=0)], 4) is None  # no share of it at all (concurrency below the workers)


def test_to_start_follows_demand_within_min_and_max() -> None:
    scaling = Scaling(min_instances=1, max_instances=3, concurrency=2)

    def start(ready: int, starting: int = 0, inflight: int = 0, queued: int = 0, keep: int = 1) -> int:
        return to_start(ready=ready, starting=starting, inflight=inflight, queued=queued, scaling=scaling, keep=keep)

    assert start(ready=0) == 1  # minInstances kept warm
    assert start(ready=0, keep=0) == 0  # scaled to zero, nothing asked
    assert start(ready=0, keep=0, queued=1) == 1  # a cold start
    assert start(ready=1, inflight=2) == 0  # at concurrency, nothing waiting
    assert start(ready=1, inflight=2, queued=1) == 1  # in flight per instance exceeds concurrency
    assert start(ready=1, starting=1, inflight=2, queued=2) == 0  # the one starting covers it
    assert start(ready=1, inflight=2, queued=50) == 2  # capped at maxInstances
    assert start(ready=3, inflight=6, queued=50) == 0


def test_idle_to_stop_keeps_the_oldest_and_the_busy() -> None:
    now = 100.0
    old, newer, busy = Inst(0, last_used=10), Inst(1, last_used=10), Inst(2, inflight=1, last_used=10)
    assert idle_to_stop([old, newer, busy], now=now, idle_seconds=5, keep=1) == [newer, old]
    assert idle_to_stop([old, newer], now=now, idle_seconds=5, keep=1) == [newer]
    assert idle_to_stop([old, newer], now=now, idle_seconds=5, keep=0) == [newer, old]
    assert idle_to_stop([old, Inst(1, last_used=99)], now=now, idle_seconds=5, keep=0) == [old]  # recently used
    assert idle_to_stop([old, Inst(1, ready=False)], now=now, idle_seconds=5, keep=0) == [old]  # starting
    assert idle_to_stop([old], now=now, idle_seconds=5, keep=1) == []


def test_refuse_only_at_max_instances_with_a_full_queue() -> None:
    scaling = Scaling(min_instances=1, max_instances=3, concurrency=2)

    def refused(ready: int, starting: int = 0, queued: int = 4, can_start: bool = True) -> bool:
        return refuse(
            ready=ready, starting=starting, queued=queued, queue_limit=4, scaling=scaling, can_start=can_start
        )

    assert not refused(ready=3, queued=3)  # room in the queue
    assert refused(ready=3)  # at maxInstances, queue full: the only relief is the instances there are
    assert refused(ready=1, starting=2)  # the ones starting count towards maxInstances
    assert not refused(ready=1)  # below maxInstances: wait for the instances being started
    assert not refused(ready=1, starting=1)
    assert not refused(ready=0, starting=1, can_start=False)  # one still starting, though starts fail
    assert refused(ready=1, can_start=False)  # starts failing, none under way: no relief coming


def test_a_revision_listed_at_0_percent_is_kept_warm_and_an_unlisted_one_is_not() -> None:
    scaling = Scaling(min_instances=2, max_instances=3, concurrency=2)
    weights = {3: 100, 4: 0}
    assert [routing_of(weights, n) for n in (3, 4, 5)] == [Routing.ROUTED, Routing.WARM, Routing.UNROUTED]
    assert routing_of(None, 3) is Routing.UNROUTED  # a function the table does not know
    assert [kept_warm(r, scaling) for r in Routing] == [2, 2, 0]


def test_a_slot_is_ready_exactly_while_its_phase_is_ready() -> None:
    slot = Slot("i", 0)  # `ready` is an attribute kept by `phase`'s setter, not computed when read
    assert slot.phase is SlotPhase.STARTING and slot.ready is False
    for phase in [*SlotPhase, SlotPhase.READY, SlotPhase.RETIRING]:
        slot.phase = phase
        assert slot.ready is (phase is SlotPhase.READY)


def test_retry_after_is_the_time_to_work_off_the_queue_within_bounds() -> None:
    assert retry_after(queued=0, capacity=8, latency=0.01) == 1.0
    assert retry_after(queued=63, capacity=8, latency=0.5) == 4.0
    assert retry_after(queued=63, capacity=0, latency=10.0) == 60.0


# ---- the asyncio transport, against the runtime as a local process -----------------------------

HANDLER = """
import os, time
def handler(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("call"):
        return context.call("echo", {"n": event["n"]})
    return {"n": event.get("n"), "caller": context.caller, "id": context.invocation_id,
            "secret": os.environ.get("TOKEN")}
"""


@dataclass
class LocalRuntime:
    process: subprocess.Popen[bytes]
    socket_dir: str

    def transport(self, **kwargs: Any) -> AsyncTransport:
        return AsyncTransport(self.socket_dir, peer=lambda pid: pid == self.process.pid, **kwargs)


@pytest.fixture
def local_runtime(tmp_path: Path) -> Iterator[LocalRuntime]:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "main.py").write_text(textwrap.dedent(HANDLER))
    socket_dir = Path(tempfile.mkdtemp(prefix="fnpool-"))  # a socket path must stay under ~108 bytes
    env = {
        **os.environ,
        "FNCTL_HANDLER": "main.handler",
        "FNCTL_CODE_DIR": str(tmp_path / "code"),
        "FNCTL_DEPS_DIR": str(tmp_path / "deps"),
        "FNCTL_SOCKET_DIR": str(socket_dir),
        "FNCTL_FUNCTION": "echo",
        "FNCTL_REVISION": "1",
        "FNCTL_CONCURRENCY": "16",
        "FNCTL_PAYLOAD_LIMIT": str(64 * 1024),
    }
    with (tmp_path / "runtime.log").open("wb") as out:
        process = subprocess.Popen([sys.executable, str(RUNTIME)], env=env, stdout=out, stderr=out)
    runtime = LocalRuntime(process, str(socket_dir))
    yield runtime
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    shutil.rmtree(socket_dir, ignore_errors=True)


def test_async_transport_multiplexes_concurrent_invocations(local_runtime: LocalRuntime) -> None:
    async def scenario() -> None:
        transport = local_runtime.transport()
        ready = await transport.connect(timeout=15)
        assert ready["type"] == "ready" and ready["function"] == "echo" and ready["concurrency"] == 16
        await transport.configure({"TOKEN": "t0ken"})
        caller = {"subject": "ada", "roles": ["dev"]}
        results = await asyncio.gather(
            *(
                transport.invoke(
                    {"n": n, "sleep": 0.05 * (n % 3)},
                    invocation_id=f"inv-{n}",
                    deadline=time.time() + 10,
                    caller=caller,
                )
                for n in range(40)
            )
        )
        assert [r.result for r in results] == [
            {"n": n, "caller": caller, "id": f"inv-{n}", "secret": "t0ken"} for n in range(40)
        ]
        assert await transport.ping() == 0
        await transport.close()

    asyncio.run(scenario())


def test_async_transport_sends_the_requests_of_one_loop_round_in_one_write(local_runtime: LocalRuntime) -> None:
    async def scenario() -> None:
        transport = local_runtime.transport()
        await transport.connect(timeout=15)
        sent: list[bytes] = []
        wire = transport._transport
        assert wire is not None
        write = wire.write

        def recording(data: Any) -> None:
            sent.append(bytes(data))
            write(data)

        wire.write = recording  # type: ignore[method-assign]
        results = await asyncio.gather(
            *(transport.invoke({"n": n}, invocation_id=f"i{n}", deadline=time.time() + 10) for n in range(5))
        )
        assert [r.result["n"] for r in results] == list(range(5))
        assert len(sent) == 1 and sent[0].count(b'"type":"invoke"') == 5  # one system call, one wake-up
        await transport.close()

    asyncio.run(scenario())


def test_async_transport_callbacks_timeouts_and_size_limit(local_runtime: LocalRuntime) -> None:
    async def echo(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        return {"invocation": invocation_id, "method": method, "n": params["n"]}

    async def scenario() -> None:
        transport = local_runtime.transport(on_call=echo, max_request=64 * 1024)
        await transport.connect(timeout=15)
        reply = await transport.invoke({"call": True, "n": 3}, invocation_id="c1", deadline=time.time() + 10)
        assert reply.result == {"invocation": "c1", "method": "echo", "n": 3}
        with pytest.raises(TransportTimeout):
            await transport.invoke({"sleep": 1.0}, invocation_id="slow", deadline=time.time() + 10, timeout=0.1)
        with pytest.raises(FrameTooLarge, match="limit is 65536 bytes"):
            await transport.invoke({"blob": "x" * 100_000}, invocation_id="big", deadline=time.time() + 10)
        # Neither the timeout nor the refused request broke the connection for the next caller.
        assert (await transport.invoke({"n": 1}, invocation_id="after", deadline=time.time() + 10)).ok
        await transport.close()

    asyncio.run(scenario())


def test_async_transport_fails_every_waiter_when_the_runtime_dies(local_runtime: LocalRuntime) -> None:
    async def scenario() -> None:
        transport = local_runtime.transport()
        lost: list[str] = []
        transport.on_lost = lost.append
        await transport.connect(timeout=15)
        slow = [
            asyncio.ensure_future(transport.invoke({"sleep": 30}, invocation_id=f"s{n}", deadline=time.time() + 60))
            for n in range(3)
        ]
        await eventually_awaited(lambda: _equals(transport.ping(), 3), "three invocations in flight")
        local_runtime.process.send_signal(signal.SIGKILL)
        done = await asyncio.wait_for(asyncio.gather(*slow, return_exceptions=True), timeout=10)
        assert all(isinstance(error, ConnectionLost) for error in done), done
        assert len(lost) == 1
        with pytest.raises(ConnectionLost):
            await transport.ping()

    asyncio.run(scenario())


def test_async_transport_drain_finishes_in_flight_work_and_refuses_new(local_runtime: LocalRuntime) -> None:
    async def scenario() -> None:
        first, second = local_runtime.transport(), local_runtime.transport()
        await first.connect(timeout=15)
        await second.connect(timeout=5)
        slow = asyncio.ensure_future(first.invoke({"sleep": 0.5, "n": 1}, invocation_id="s", deadline=time.time() + 10))
        await eventually_awaited(lambda: _equals(second.ping(), 1), "the slow invocation to be in flight")
        drain = asyncio.ensure_future(second.drain())
        refused = await eventually_awaited(lambda: _draining(first), "a new invocation to be refused as draining")
        assert refused.error is not None and "draining" in refused.error.message
        assert (await slow).result["n"] == 1  # the in-flight one finished
        await drain

    asyncio.run(scenario())


def test_async_transport_closes_a_foreign_peer_unserved(local_runtime: LocalRuntime) -> None:
    async def scenario() -> None:
        checked: list[int] = []

        def only_the_runtime(pid: int) -> bool:
            checked.append(pid)
            return pid == local_runtime.process.pid

        transport = AsyncTransport(local_runtime.socket_dir, peer=only_the_runtime)
        foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # this test process: not the runtime
        local_runtime.process.send_signal(signal.SIGSTOP)  # so that the foreign connection is queued first
        try:
            connecting = asyncio.ensure_future(transport.connect(timeout=15))
            [name] = await eventually(lambda: os.listdir(local_runtime.socket_dir), "the transport's listener")
            foreign.connect(os.path.join(local_runtime.socket_dir, name))
            local_runtime.process.send_signal(signal.SIGCONT)
            ready = await connecting
            foreign.settimeout(10)
            assert await asyncio.get_running_loop().run_in_executor(None, foreign.recv, 1024) == b""
            assert checked == [os.getpid(), local_runtime.process.pid] and ready["function"] == "echo"
            assert (await transport.invoke({"n": 5}, invocation_id="after", deadline=time.time() + 10)).ok
            # The listener stays up for the runtime's worker processes, behind the same check: a foreign
            # connection now is closed unserved too, and the runtime is served on.
            assert os.listdir(local_runtime.socket_dir) == [name]
            again = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                again.connect(os.path.join(local_runtime.socket_dir, name))
                again.settimeout(10)
                assert await asyncio.get_running_loop().run_in_executor(None, again.recv, 1024) == b""
            finally:
                again.close()
            # (between them: the runtime's worker process, refused by this check, which calls the older way)
            assert checked[:2] == [os.getpid(), local_runtime.process.pid] and checked[-1] == os.getpid()
            assert (await transport.invoke({"n": 6}, invocation_id="later", deadline=time.time() + 10)).ok
        finally:
            local_runtime.process.send_signal(signal.SIGCONT)
            foreign.close()
            await transport.close()
        assert os.listdir(local_runtime.socket_dir) == []  # the listener goes with the transport

    asyncio.run(scenario())


async def _equals(value: Awaitable[T], expected: T) -> bool:
    return await value == expected


async def _draining(transport: AsyncTransport) -> Any:
    result = await transport.invoke({"n": 2}, invocation_id="late", deadline=time.time() + 10)
    return result if result.error is not None and result.error.kind is ErrorKind.DRAINING else None


# ---- RevisionPool with runtime processes on this machine as its instances (no daemon) -----------


class LocalHost:
    """A pool host whose instances are runtime processes: the pool's own logic, without Docker."""

    def __init__(self, code: Path, concurrency: int) -> None:
        self.idle_seconds, self.grace_seconds, self.queue_limit, self.closing = 300.0, 30.0, 8, False
        self.code, self.concurrency = code, concurrency
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.socket_dirs: list[str] = []
        self.stopped: list[str] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.crew: Crew | None = None  # the only gateway process
        self.adopts_only = False  # it starts its instances

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def start_instance(self, target: Target, instance_id: str) -> Started:
        socket_dir = tempfile.mkdtemp(prefix="fnpool-")
        self.socket_dirs.append(socket_dir)
        env = {
            **os.environ,
            "FNCTL_HANDLER": "main.handler",
            "FNCTL_CODE_DIR": str(self.code),
            "FNCTL_DEPS_DIR": str(self.code / "deps"),
            "FNCTL_SOCKET_DIR": socket_dir,
            "FNCTL_CONCURRENCY": str(self.concurrency),
        }
        process = self.processes[instance_id] = subprocess.Popen([sys.executable, str(RUNTIME)], env=env)
        transport = AsyncTransport(socket_dir, peer=lambda pid: pid == process.pid)
        await transport.connect(timeout=15)  # as PoolManager does: ready before it is handed over
        return "", socket_dir, transport

    def peer_check(self, slot: Slot) -> PeerCheck:
        process = self.processes[slot.id]
        return lambda pid: pid == process.pid

    def on_call(self, function: str, revision: int) -> None:
        return None  # no data plane: a handler's `context.call` is answered "callbacks not supported"

    async def stop_instance(self, target: Target, slot: Slot, *, drain: bool) -> None:
        self.stopped.append(slot.id)
        process = self.processes[slot.id]
        process.kill()
        process.wait()
        shutil.rmtree(slot.socket_dir, ignore_errors=True)

    async def death_cause(self, target: Target, slot: Slot) -> tuple[Failure | None, str]:
        process = self.processes[slot.id]
        await eventually(lambda: process.poll() is not None, "the runtime process to exit")
        return (None, "drained") if process.returncode == 0 else (Failure.CRASHED, "the local runtime died")

    async def close(self) -> None:
        self.closing = True
        while self.tasks:
            await asyncio.wait(list(self.tasks))
        for process in self.processes.values():
            process.kill()
            process.wait()
        for socket_dir in self.socket_dirs:
            shutil.rmtree(socket_dir, ignore_errors=True)


def local_pool(
    tmp_path: Path, *, min_instances: int, max_instances: int, concurrency: int, timeout: float = 10.0
) -> tuple[LocalHost, RevisionPool]:
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "main.py").write_text(textwrap.dedent(HANDLER))
    spec = {
        "handler": "main.handler",
        "limits": {"timeout": timeout},
        "scaling": {"min_instances": min_instances, "max_instances": max_instances, "concurrency": concurrency},
    }
    host = LocalHost(tmp_path / "code", concurrency)
    target = Target(function_from_spec("echo", spec, Limits()), 1, "local", {})
    return host, RevisionPool(host, target, routing=Routing.ROUTED)


def run_local(host: LocalHost, scenario: Awaitable[None]) -> None:
    async def main() -> None:
        try:
            await scenario
        finally:
            await host.close()

    asyncio.run(main())


def test_a_timed_out_instance_is_replaced_and_the_next_request_succeeds(tmp_path: Path) -> None:
    host, pool = local_pool(tmp_path, min_instances=1, max_instances=2, concurrency=2, timeout=0.3)

    async def scenario() -> None:
        pool.scale()
        await eventually(lambda: pool.stats().ready == 1, "minInstances started")
        slow = await pool.invoke({"sleep": 5}, None, "slow")
        assert slow.outcome.failure is Failure.TIMEOUT and "timeout of 0.3s" in slow.outcome.message
        await eventually(lambda: host.stopped == [slow.instance], "the timed-out instance stopped")
        after = await pool.invoke({"n": 1}, None, "after")
        assert after.outcome.ok and after.instance != slow.instance

    run_local(host, scenario())


def test_an_instance_drained_from_outside_gets_no_more_work(tmp_path: Path) -> None:
    host, pool = local_pool(tmp_path, min_instances=2, max_instances=2, concurrency=4)

    async def scenario() -> None:
        pool.scale()
        await eventually(lambda: pool.stats().ready == 2, "two instances started")
        first = next(iter(pool.slots.values()))
        outside = AsyncTransport(first.socket_dir, peer=host.peer_check(first))  # as `fnctl apply` does to an old one
        await outside.connect(timeout=5)
        await outside.drain()
        results = [await pool.invoke({"n": n}, None, f"r{n}") for n in range(6)]
        assert all(r.outcome.ok for r in results), results
        assert first.id not in {r.instance for r in results}
        await eventually(lambda: first.id not in pool.slots, "the drained instance forgotten once it exits")

    run_local(host, scenario())


def test_below_max_instances_a_full_queue_waits_for_the_instances_starting(tmp_path: Path) -> None:
    host, pool = local_pool(tmp_path, min_instances=1, max_instances=3, concurrency=1)
    host.queue_limit = 1

    async def scenario() -> None:
        pool.scale()
        await eventually(lambda: pool.stats().ready == 1, "minInstances started")
        busy = asyncio.ensure_future(pool.invoke({"sleep": 0.5, "n": 0}, None, "busy"))
        await eventually(lambda: pool.stats().inflight == 1, "the only ready slot taken")
        # Past the queue limit at once, while the instances for them are only starting: they wait for them.
        waiting = [asyncio.ensure_future(pool.invoke({"n": n}, None, f"w{n}")) for n in (1, 2)]
        await eventually(lambda: pool.stats().instances == 3, "instances started for them, up to maxInstances")
        results = await asyncio.gather(busy, *waiting)
        assert [r.outcome.result["n"] for r in results] == [0, 1, 2]
        assert all(r.outcome.ok for r in results)

    run_local(host, scenario())


def test_an_admitted_request_finding_no_instance_has_one_started_before_it_reaches_the_pool(tmp_path: Path) -> None:
    """`expect` (PoolManager.shed admitting a request, before its body is read): the scale from zero begins
    then, once, and the request meets that instance."""
    host, pool = local_pool(tmp_path, min_instances=0, max_instances=2, concurrency=1)

    async def scenario() -> None:
        pool.expect()
        assert [s.phase for s in pool.slots.values()] == [SlotPhase.STARTING]  # before the request queued
        pool.expect()  # a second one admitted meanwhile: an instance is on its way already
        assert len(pool.slots) == 1
        result = await pool.invoke({"n": 1}, None, "first")
        assert result.outcome.ok and result.cold_start and list(host.processes) == [result.instance]
        pool.expect()  # a ready instance with room takes the next one: nothing started
        assert len(pool.slots) == 1 and len(host.processes) == 1

    run_local(host, scenario())


class StopContPauser:
    """Pauses a LocalHost instance as the engine's freezer would: SIGSTOP; a thaw (SIGCONT) waits for `thaw`."""

    def __init__(self, host: LocalHost) -> None:
        self.host, self.thaw, self.frozen = host, asyncio.Event(), False

    async def pause_instance(self, slot: Slot, paused: bool) -> None:
        process = self.host.processes[slot.id]
        if paused:
            process.send_signal(signal.SIGSTOP)
        else:
            await self.thaw.wait()
            process.send_signal(signal.SIGCONT)
        self.frozen = paused


def test_a_request_thawing_the_reserve_is_sent_to_it_before_the_thaw_ends(tmp_path: Path) -> None:
    """The request that thaws the paused reserve is written to its connection at once (it waits in the socket
    while the runtime is frozen) instead of after the engine's unpause answers; it still counts as cold."""
    host, _ = local_pool(tmp_path, min_instances=0, max_instances=2, concurrency=1)
    pauser = StopContPauser(host)
    spec = {"handler": "main.handler", "scaling": {"min_instances": 0, "max_instances": 2, "warm": "paused"}}
    target = Target(function_from_spec("echo", spec, Limits()), 1, "local", {})
    pool = RevisionPool(host, target, routing=Routing.ROUTED, pauser=pauser)

    async def scenario() -> None:
        pool.scale()  # the reserve: started, then paused
        await eventually(lambda: [s.phase for s in pool.slots.values()] == [SlotPhase.PAUSED], "the paused reserve")
        assert pauser.frozen
        request = asyncio.ensure_future(pool.invoke({"n": 7}, None, "thaws"))
        [reserve] = pool.slots.values()
        try:
            await eventually(lambda: reserve.inflight == 1, "the request sent to the reserve while it is frozen", 10)
            assert pauser.frozen and not request.done()
        finally:
            pauser.thaw.set()  # else, failing, the thaw would wait for ever
        result = await request
        assert result.outcome.ok and result.outcome.result["n"] == 7
        assert result.instance == reserve.id and result.cold_start

    run_local(host, scenario())


def test_at_max_instances_a_full_queue_is_refused_with_retry_after(tmp_path: Path) -> None:
    host, pool = local_pool(tmp_path, min_instances=1, max_instances=1, concurrency=1)
    host.queue_limit = 1

    async def scenario() -> None:
        pool.scale()
        await eventually(lambda: pool.stats().ready == 1, "the instance started")
        busy = asyncio.ensure_future(pool.invoke({"sleep": 0.5, "n": 0}, None, "busy"))
        await eventually(lambda: pool.stats().inflight == 1, "the only slot taken")
        queued = asyncio.ensure_future(pool.invoke({"n": 1}, None, "queued"))
        await eventually(lambda: pool.stats().queued == 1, "the queue full")
        with pytest.raises(Overloaded) as refused:
            await pool.invoke({"n": 2}, None, "refused")
        assert refused.value.retry_after >= 1
        assert all(r.outcome.ok for r in await asyncio.gather(busy, queued))
        assert pool.stats().instances == 1

    run_local(host, scenario())


def test_a_warm_revision_keeps_min_instances_however_idle_until_unrouted(tmp_path: Path) -> None:
    host, pool = local_pool(tmp_path, min_instances=1, max_instances=2, concurrency=1)
    host.idle_seconds = host.grace_seconds = 1.0
    pool.set_routing(Routing.WARM)

    async def scenario() -> None:
        pool.scale()  # what the manager does for a revision listed at 0%
        await eventually(lambda: pool.stats().ready == 1, "minInstances of a 0% revision started")
        both = [asyncio.ensure_future(pool.invoke({"sleep": 0.2, "n": n}, None, f"p{n}")) for n in range(2)]
        await eventually(lambda: pool.stats().ready == 2, "a second instance for pinned traffic")
        assert all(r.outcome.ok for r in await asyncio.gather(*both))
        later = time.monotonic() + 3600  # everything long idle
        pool.tick(later)
        await eventually(lambda: len(host.stopped) == 1, "the instance beyond minInstances stopped")
        pool.tick(later)
        assert pool.stats().ready == 1 and len(host.stopped) == 1 and not pool.disposable(later)
        pool.set_routing(Routing.UNROUTED)  # gone from the weights: drained after the grace
        pool.tick(later)
        await eventually(lambda: len(host.stopped) == 2 and not pool.slots, "the last instance stopped")
        assert pool.disposable(later)

    run_local(host, scenario())


def test_callers_that_give_up_leave_no_slot_or_queue_entry_behind(tmp_path: Path) -> None:
    host, pool = local_pool(tmp_path, min_instances=1, max_instances=1, concurrency=1)

    async def scenario() -> None:
        pool.scale()
        await eventually(lambda: pool.stats().ready == 1, "the instance started")
        running = asyncio.ensure_future(pool.invoke({"sleep": 5}, None, "running"))
        await eventually(lambda: pool.stats().inflight == 1, "a request in flight")
        queued = asyncio.ensure_future(pool.invoke({"n": 1}, None, "queued"))
        await eventually(lambda: pool.stats().queued == 1, "a request queued")
        queued.cancel()
        running.cancel()
        await asyncio.gather(running, queued, return_exceptions=True)
        assert pool.stats() == PoolStats(instances=1, ready=1, inflight=0, queued=0)
        assert (await pool.invoke({"n": 2}, None, "next")).outcome.ok

    run_local(host, scenario())


def test_requests_queued_past_their_limit_fail_and_the_next_ones_are_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a request may stay queued for its timeout and a start's (instances.START_TIMEOUT): here, 1 s and none
    monkeypatch.setattr(instances, "START_TIMEOUT", 0.0)
    host, pool = local_pool(tmp_path, min_instances=1, max_instances=1, concurrency=1, timeout=1.0)

    async def scenario() -> None:
        pool.scale()
        await eventually(lambda: pool.stats().ready == 1, "the instance started")
        running = asyncio.ensure_future(pool.invoke({"sleep": 5}, None, "running"))  # holds the only slot 1.5 s
        await eventually(lambda: pool.stats().inflight == 1, "a request in flight")
        queued = [asyncio.ensure_future(pool.invoke({"n": n}, None, f"q{n}")) for n in range(3)]
        await eventually(lambda: pool.stats().queued == 3, "three requests queued")
        for waiting in queued:
            with pytest.raises(Unavailable, match="no instance became available within 1s"):
                await waiting
        assert pool.stats().queued == 0
        assert (await running).outcome.failure is Failure.TIMEOUT
        # the queue's timer is armed again for the next requests, which wait for the replacement
        served = await asyncio.gather(*(pool.invoke({"n": n}, None, f"next{n}") for n in range(3)))
        assert [(r.outcome.ok, r.outcome.result["n"]) for r in served] == [(True, n) for n in range(3)]

    run_local(host, scenario())


# ---- PoolManager against real Docker --------------------------------------------------------------

FUNCTION_CODE = """\
import os
import time

time.sleep(float(os.environ.get("IMPORT_DELAY", "0")))  # a slow start: the instance is not ready meanwhile


def handler(event, context):
    if event.get("token"):
        return {"token": os.environ.get("API_TOKEN", "")}
    if event.get("crash"):
        os._exit(3)
    if event.get("sleep"):
        time.sleep(float(event["sleep"]))
    return {"version": os.environ.get("VERSION", ""), "n": event.get("n"), "caller": context.caller}
"""

# name: (minInstances, maxInstances, concurrency, env); one function per test, so tests never share instances
FUNCTIONS: dict[str, tuple[int, int, int, dict[str, str]]] = {
    "scale": (1, 3, 1, {}),
    "zero": (0, 2, 4, {}),
    "crash": (1, 2, 4, {}),
    "tiny": (1, 1, 1, {}),
    "preview": (0, 1, 4, {}),
    "warm": (1, 2, 1, {}),
    "slow": (1, 2, 1, {"IMPORT_DELAY": "2"}),
    "drain": (1, 2, 1, {}),
    "secret": (0, 1, 4, {}),  # its API_TOKEN comes from TOKEN_ENV, a secret
    "broken": (0, 1, 1, {}),  # its image is swapped, in a test, for one whose handler fails to load
}
TOKEN_ENV, TOKEN = "FNCTL_TEST_POOL_TOKEN", "pool-secret-value"


def write_function(project: Project, name: str, version: str) -> None:
    low, high, concurrency, env = FUNCTIONS[name]
    env_yaml = ", ".join(f"{k}: '{v}'" for k, v in {"VERSION": version, **env}.items())
    (project.root / "manifests" / f"{name}.yaml").write_text(
        textwrap.dedent(f"""\
        apiVersion: fnctl/v1
        kind: Function
        metadata: {{name: {name}}}
        spec:
          runtime: python3.11
          source: ../functions/echo
          handler: main.handler
          env: {{{env_yaml}}}
          limits: {{timeout: 10s, memory: 64Mi}}
          scaling: {{minInstances: {low}, maxInstances: {high}, concurrency: {concurrency}}}
          healthCheck:
            - event: {{n: 0}}
        """)
        + (f"  secrets: [{{name: API_TOKEN, fromEnv: {TOKEN_ENV}}}]\n" if name == "secret" else ""),
        encoding="utf-8",
    )


@dataclass
class Deployed:
    project: Project

    def manager(self, **options: Any) -> PoolManager:
        return PoolManager(load_project(self.project.root), self.project.location, **options)

    def rows(self, function: str, state: InstanceState | None = None) -> list[InstanceRow]:
        with self.project.store() as store:
            return [r for r in store.instances(function) if state is None or r.state is state]

    def containers(self, function: str) -> list[Any]:
        return self.project.containers(function)


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    base_image: str,
    project_states: StateFactory,
) -> Iterator[Deployed]:
    project = make_project(tmp_path_factory.mktemp("pool") / "project", docker_client, base_image, project_states)
    project.env[TOKEN_ENV] = TOKEN
    try:
        (project.root / "functions" / "echo").mkdir(parents=True)
        (project.root / "functions" / "echo" / "main.py").write_text(FUNCTION_CODE, encoding="utf-8")
        for name in FUNCTIONS:
            write_function(project, name, "one")
        project.ok("apply")
        write_function(project, "preview", "two")  # revision 2, then left out of the table: reached by pinning
        write_function(project, "warm", "two")  # revision 2, then listed at 0%: kept warm (blue-green preview)
        project.ok("apply")
        with project.store() as store:
            store.set_route("preview", {1: 100})
            store.set_route("warm", {1: 100, 2: 0})
        yield Deployed(project)
    finally:
        cleanup(project)


def with_manager(deployed: Deployed, scenario: Callable[[PoolManager], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        manager = deployed.manager(**options)
        await manager.start()
        try:
            await scenario(manager)
        finally:
            await manager.close(timeout=30)

    asyncio.run(main())


async def call(
    manager: PoolManager, function: str, event: dict[str, Any], revision: int = 1, request_id: str = "req"
) -> PoolResult:
    return await manager.invoke(function, revision, event, caller={"subject": "tester"}, request_id=request_id)


@pytest.mark.docker
def test_scales_up_under_load_and_back_down(deployed: Deployed) -> None:
    key = ("scale", 1)

    async def scenario(manager: PoolManager) -> None:
        await eventually(lambda: manager.stats()[key].ready == 1, "minInstances kept warm")
        stop, results = asyncio.Event(), list[PoolResult]()

        async def client(n: int) -> None:
            while not stop.is_set():
                results.append(await call(manager, "scale", {"sleep": 0.2, "n": n}, request_id=f"load-{n}"))

        clients = [asyncio.ensure_future(client(n)) for n in range(6)]  # 6 in flight, concurrency 1, max 3
        await eventually(lambda: len({r.instance for r in results}) == 3, "requests served by three instances", 60)
        assert manager.stats()[key].instances == 3  # never more than maxInstances
        assert len(deployed.rows("scale", InstanceState.READY)) == 3  # each recorded in the store
        stop.set()
        await asyncio.gather(*clients)
        assert all(r.outcome.ok for r in results)
        await eventually(lambda: manager.stats()[key].instances == 1, "idle instances stopped down to minInstances")
        await eventually(
            lambda: len(deployed.rows("scale")) == 1 and len(deployed.containers("scale")) == 1,
            "the store and the engine back to one instance",
        )

    with_manager(deployed, scenario, idle_seconds=0.5)


@pytest.mark.docker
def test_scales_from_zero_with_a_cold_start_and_back_to_zero(deployed: Deployed) -> None:
    key = ("zero", 1)

    async def scenario(manager: PoolManager) -> None:
        assert manager.stats()[key].instances == 0 and not deployed.rows("zero")
        first = await call(manager, "zero", {"n": 1})
        assert first.outcome.ok and first.outcome.result == {"version": "one", "n": 1, "caller": {"subject": "tester"}}
        assert first.cold_start
        second = await call(manager, "zero", {"n": 2})
        assert second.outcome.ok and not second.cold_start and second.instance == first.instance
        await eventually(
            lambda: (
                manager.stats()[key].instances == 0 and not deployed.rows("zero") and not deployed.containers("zero")
            ),
            "the idle instance stopped: scaled to zero",
        )
        third = await call(manager, "zero", {"n": 3})
        assert third.outcome.ok and third.cold_start and third.instance != first.instance

    with_manager(deployed, scenario, idle_seconds=0.5)


@pytest.mark.docker
def test_a_cold_start_meets_its_runtime_on_one_listener_and_configures_its_secrets_there(
    deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime of an instance the gateway starts connects once, to the listener of the transport that
    serves it (put up before its container started), and is given its secrets there: no listener of a
    blocking start first, which it would have met, said ready and been configured on, then left for the
    pool's second listener, found at its next scan of the socket directory."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # the gateway resolves `fromEnv` secrets from its own environment
    listeners: list[str] = []
    made = Rendezvous.__init__

    def counted(self: Rendezvous, socket_dir: str) -> None:
        listeners.append(socket_dir)
        made(self, socket_dir)

    monkeypatch.setattr(Rendezvous, "__init__", counted)

    async def scenario(manager: PoolManager) -> None:
        result = await call(manager, "secret", {"token": True})
        assert result.cold_start and result.outcome.ok, result.outcome
        assert result.outcome.result == {"token": TOKEN}
        # recorded READY beside the first request, still under the store's lock from the row's insert
        await eventually(
            lambda: [r.state for r in deployed.rows("secret")] == [InstanceState.READY], "the instance recorded READY"
        )
        [row] = deployed.rows("secret")
        assert [d for d in listeners if d == row.socket_dir] == [row.socket_dir]  # one, still serving it
        assert TOKEN not in json.dumps(deployed.containers("secret")[0].attrs)  # nor in its env or labels

    with_manager(deployed, scenario)


@pytest.mark.docker
def test_a_runtime_that_cannot_load_its_handler_fails_the_cold_start_with_its_error(
    deployed: Deployed, docker_client: docker.DockerClient, base_image: str, tmp_path: Path
) -> None:
    """The gateway's own wait for a runtime it launched: `startup_failed` comes back as the request's 503,
    naming the handler's error, and the instance (row, container) is removed."""
    code = tmp_path / "broken"
    code.mkdir()
    (code / "main.py").write_text("raise RuntimeError('refusing to load')\n", encoding="utf-8")
    failing = images.ensure_image(deployed.project.name, "broken-code", code, base_image)
    with deployed.project.store() as store:
        revision = store.revision("broken", 1)
    assert revision is not None
    repository, _, tag = revision.image.rpartition(":")
    original = docker_client.images.get(revision.image)
    docker_client.images.get(failing.tag).tag(repository, tag)  # revision 1's tag now names the failing code
    try:

        async def scenario(manager: PoolManager) -> None:
            with pytest.raises(Unavailable, match="failed to load: RuntimeError: refusing to load"):
                await call(manager, "broken", {"n": 1})
            await eventually(
                lambda: not deployed.rows("broken") and not deployed.containers("broken"),
                "the instance that failed to start removed",
            )

        with_manager(deployed, scenario)
    finally:
        original.tag(repository, tag)


@pytest.mark.docker
def test_a_crash_mid_invocation_fails_its_requests_and_the_next_one_succeeds(deployed: Deployed) -> None:
    key = ("crash", 1)

    async def scenario(manager: PoolManager) -> None:
        await eventually(lambda: manager.stats()[key].ready == 1, "minInstances kept warm")
        victim = (await call(manager, "crash", {"n": 0})).instance
        slow = asyncio.ensure_future(call(manager, "crash", {"sleep": 60}, request_id="slow"))
        await eventually(lambda: manager.stats()[key].inflight == 1, "a long invocation in flight")
        crashed = await asyncio.wait_for(call(manager, "crash", {"crash": True}, request_id="boom"), 20)
        cut = await asyncio.wait_for(slow, 20)  # failed at once, not after its 60 s
        for result in (crashed, cut):
            assert result.instance == victim and not result.outcome.ok
            assert result.outcome.failure is Failure.CRASHED, result.outcome
            assert "crashed during the invocation (exit code 3)" in result.outcome.message
        after = await call(manager, "crash", {"n": 1})
        assert after.outcome.ok and after.instance != victim
        await eventually(
            lambda: (
                victim not in {r.id for r in deployed.rows("crash")}
                and all(c.labels["io.fnctl.instance"] != victim for c in deployed.containers("crash"))
            ),
            "the crashed instance removed from the store and the engine",
        )
        await eventually(lambda: manager.stats()[key].ready == 1, "a replacement kept warm")

    with_manager(deployed, scenario)


@pytest.mark.docker
def test_at_max_instances_with_a_full_queue_requests_are_refused_with_retry_after(deployed: Deployed) -> None:
    key = ("tiny", 1)

    async def scenario(manager: PoolManager) -> None:
        await eventually(lambda: manager.stats()[key].ready == 1, "minInstances kept warm")
        busy = asyncio.ensure_future(call(manager, "tiny", {"sleep": 2}, request_id="busy"))
        await eventually(lambda: manager.stats()[key].inflight == 1, "the only slot taken")
        queued = [asyncio.ensure_future(call(manager, "tiny", {"n": n}, request_id=f"q{n}")) for n in range(2)]
        await eventually(lambda: manager.stats()[key].queued == 2, "the queue full")
        with pytest.raises(Overloaded) as refused:
            await call(manager, "tiny", {"n": 9})
        assert refused.value.retry_after >= 1
        assert manager.stats()[key].instances == 1  # maxInstances: no more started
        results = await asyncio.gather(busy, *queued)
        assert all(r.outcome.ok for r in results)  # the queued ones were served, in turn

    with_manager(deployed, scenario, queue_limit=2)


@pytest.mark.docker
def test_a_revision_the_table_does_not_list_is_started_on_demand_and_stopped_after_the_grace(
    deployed: Deployed,
) -> None:
    preview = ("preview", 2)

    async def scenario(manager: PoolManager) -> None:
        assert preview not in manager.stats()  # not in the routing table: no pool, nothing kept warm
        pinned = await call(manager, "preview", {"n": 1}, revision=2)
        assert pinned.outcome.ok and pinned.outcome.result["version"] == "two" and pinned.cold_start
        assert [r.revision for r in deployed.rows("preview")] == [2]
        live = await call(manager, "preview", {"n": 2}, revision=1)
        assert live.outcome.ok and live.outcome.result["version"] == "one"
        await eventually(
            lambda: preview not in manager.stats() or manager.stats()[preview].instances == 0,
            "the preview instance stopped once idle for the grace",
        )
        await eventually(lambda: all(r.revision != 2 for r in deployed.rows("preview")), "its row removed")
        with pytest.raises(Unavailable, match="no revision 7"):
            await call(manager, "preview", {}, revision=7)

    with_manager(deployed, scenario, grace_seconds=0.5)


def count_ticks(pool: RevisionPool) -> list[float]:
    """Record every upkeep round of `pool` (its `now`), to wait for idle time having passed."""
    ticks: list[float] = []
    original = pool.tick

    def tick(now: float) -> None:
        ticks.append(now)
        original(now)

    pool.tick = tick  # type: ignore[method-assign]
    return ticks


@pytest.mark.docker
def test_a_revision_listed_at_0_percent_is_kept_warm_and_drained_once_unlisted(deployed: Deployed) -> None:
    live, warm = ("warm", 1), ("warm", 2)
    started_by_apply = {r.id for r in deployed.rows("warm", InstanceState.READY) if r.revision == 2}
    assert started_by_apply

    async def scenario(manager: PoolManager) -> None:
        await eventually(
            lambda: all(k in manager.stats() and manager.stats()[k].ready == 1 for k in (live, warm)),
            "minInstances of both revisions ready, the 0% one included",
        )
        pinned = await call(manager, "warm", {"n": 1}, revision=2)
        assert pinned.outcome.ok and pinned.outcome.result["version"] == "two" and not pinned.cold_start
        assert pinned.instance in started_by_apply  # adopted, not started again
        ticks = count_ticks(manager._pools[warm])
        await eventually(
            lambda: len(ticks) > 1 and ticks[-1] - ticks[0] > 4 * manager.idle_seconds,
            "upkeep rounds over four times the idle time",
        )
        assert manager.stats()[warm].ready == 1  # idle, yet kept
        assert {r.id for r in deployed.rows("warm") if r.revision == 2} == {pinned.instance}
        await manager.reconcile({"warm": {1: 100}})  # gone from the table: drained after the grace
        await eventually(
            lambda: warm not in manager.stats() and all(r.revision != 2 for r in deployed.rows("warm")),
            "the unlisted revision's pool and instance gone",
        )
        assert manager.stats()[live].ready == 1

    with_manager(deployed, scenario, idle_seconds=0.25, grace_seconds=0.5)


@pytest.mark.docker
def test_requests_never_reach_an_instance_that_is_not_ready(deployed: Deployed) -> None:
    key = ("slow", 1)
    project = deployed.project
    # An instance another fnctl command is still starting: running, answering, but its row says STARTING.
    with project.store() as store:
        revision = store.revision("slow", 1)
        assert revision is not None
        function = function_from_spec("slow", revision.spec, load_project(project.root).default_limits)
        foreign = instances.start(
            function,
            image=revision.image,
            revision="1",
            secret_values={},
            labels=labels(project.name, "slow", revision="1", store=store.id),
        )
        store.add_instance(
            InstanceRow(
                foreign.id,
                "slow",
                1,
                foreign.container_id,
                str(foreign.socket_dir),
                InstanceState.STARTING,
                time.time(),
            )
        )
    foreign.transport.close()

    async def scenario(manager: PoolManager) -> None:
        await eventually(lambda: manager.stats()[key].ready == 1, "minInstances kept warm")
        assert manager.stats()[key].instances == 1  # the STARTING one was not adopted
        busy = asyncio.ensure_future(call(manager, "slow", {"sleep": 4}, request_id="busy"))
        await eventually(lambda: manager.stats()[key].inflight == 1, "the only ready slot taken")
        waiting = asyncio.ensure_future(call(manager, "slow", {"n": 1}, request_id="waiting"))
        # A second instance is starting (it loads for 2 s): the request waits for it rather than going there.
        await eventually(
            lambda: (
                (manager.stats()[key].instances, manager.stats()[key].ready, manager.stats()[key].queued) == (2, 1, 1)
            ),
            "a second instance starting",
        )
        results = await asyncio.gather(busy, waiting)
        ready = {r.id for r in deployed.rows("slow", InstanceState.READY)}
        assert all(r.outcome.ok and r.instance in ready and r.instance != foreign.id for r in results)

    try:
        with_manager(deployed, scenario)
    finally:
        instances.kill(foreign)
        with project.store() as store:
            store.remove_instance(foreign.id)


@pytest.mark.docker
def test_close_drains_in_flight_requests_and_stops_the_extra_instances(deployed: Deployed) -> None:
    key = ("drain", 1)

    async def scenario() -> None:
        manager = deployed.manager()
        await manager.start()
        await eventually(lambda: manager.stats()[key].ready == 1, "minInstances kept warm")
        running = [
            asyncio.ensure_future(call(manager, "drain", {"sleep": 4, "n": n}, request_id=f"d{n}")) for n in range(2)
        ]
        await eventually(lambda: manager.stats()[key].inflight == 2, "two requests in flight on two instances", 60)
        closing = asyncio.ensure_future(manager.close())
        await eventually(lambda: manager.closing, "the manager closing")
        with pytest.raises(Unavailable, match="shutting down"):
            await call(manager, "drain", {"n": 9})
        results = await asyncio.gather(*running)
        assert [r.outcome.result["n"] for r in results] == [0, 1]  # finished, not cut
        await closing
        assert len(deployed.rows("drain")) == 1 and len(deployed.containers("drain")) == 1  # minInstances stay

    asyncio.run(scenario())
