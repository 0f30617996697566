"""What wakes an idle gateway with nothing to do: its request pipeline's deadline watchdog (an event-loop timer
every 0.05 s), the invocation audit's writer thread and the broker's checkpointer (each every 0.25 s). Now
none of them wakes while there is nothing to do: the watchdog is armed only for a request in flight, the
audit thread sleeps until a row or line is queued, the checkpointer until the data file is written. Counted
in wake-ups over quarter-seconds of the monotonic clock (`counted_over`), never timed; then the work is
still done (a row reaches the store, the WAL is checkpointed).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, cast

import pytest
from polling import counted_over, wait_until

from fnctl.data.caller import Caller
from fnctl.data.documents import WriteOp
from fnctl.data.plane import DataPlane
from fnctl.gateway import pipeline
from fnctl.gateway.audit import AuditLog
from fnctl.gateway.auth import Authenticator
from fnctl.gateway.broker import Broker
from fnctl.gateway.metrics import Metrics
from fnctl.gateway.pipeline import RequestPipeline
from fnctl.gateway.pools import PoolManager
from fnctl.gateway.request import GatewayLimits
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore
from fnctl.state.auditlog import AuditFilter, invocation_records
from fnctl.state.location import StateLocation
from fnctl.state.store import connect

BEATS = 8  # quarter-seconds counted over: the old code woke 2 (threads) to 5 (the watchdog) times in each
OP = Caller.operator("t", "")
BIG = {"text": "x" * 8000}  # 600 of them overflow SQLite's 1,000-page checkpoint (tests/state/test_checkpoints.py)


def quarter_second() -> int:
    """The beat: a value that changes every quarter-second of the monotonic clock."""
    return int(time.monotonic() * 4)


class _NoPools:
    async def reconcile(self, routes: Any) -> None:
        pass


def _from_pipeline(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename == pipeline.__file__:
            return True
        frame = frame.f_back
    return False


def test_an_idle_pipeline_sets_no_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its deadline watchdog slept DEADLINE_TICK in a loop, with or without requests: 20 event-loop wake-ups
    a second. Now its timer is armed for a request's deadline: with none in flight, none."""
    timers = [0]

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        call_at = loop.call_at

        def counted(when: float, callback: Callable[..., object], *args: Any, context: Any = None) -> Any:
            if _from_pipeline(sys._getframe(1)):  # the timer of an asyncio.sleep or a call_later in pipeline.py
                timers[0] += 1
            return call_at(when, callback, *args, context=context)

        monkeypatch.setattr(loop, "call_at", counted)
        gateway = RequestPipeline(
            pool=cast(PoolManager, _NoPools()),
            authenticator=cast(Authenticator, None),
            metrics=Metrics(),
            source=lambda: None,
            limits=GatewayLimits(),
            broker=None,
        )
        await gateway.start()
        try:
            return await counted_over(quarter_second, lambda: timers[0], BEATS, "quarter-seconds")
        finally:
            await gateway.stop()

    set_while_idle = asyncio.run(scenario())
    assert set_while_idle == 0, f"the idle pipeline set {set_while_idle} timers over {BEATS} quarter-seconds"


def _count_event_wakeups(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every return from threading.Event.wait (a thread woken: its timeout, or a set), by thread name."""
    woken: Counter[str] = Counter()
    wait = threading.Event.wait

    def counted(self: threading.Event, timeout: float | None = None) -> bool:
        result = wait(self, timeout)
        woken[threading.current_thread().name] += 1
        return result

    monkeypatch.setattr(threading.Event, "wait", counted)
    return woken


def _record(audit: AuditLog, request_id: str) -> None:
    audit.record(
        request_id=request_id,
        principal=None,
        function="f",
        revision=1,
        outcome="ok",
        status=200,
        duration_ms=1.0,
        source=None,
    )


@pytest.mark.parametrize("process", [True, False], ids=["writer process", "thread"])
def test_an_idle_audit_writer_sleeps_until_a_row_is_recorded(
    process: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread looked at its queue every `interval` (0.25 s), rows or none. Now it waits for the
    first row or line; a row recorded then is still written, and a clean close loses none."""
    woken = _count_event_wakeups(monkeypatch)
    state = StateLocation(tmp_path / "state.db")
    audit = AuditLog(state, process=process)
    try:
        idle = asyncio.run(counted_over(quarter_second, lambda: woken["fnctl-audit"], BEATS, "quarter-seconds"))
        _record(audit, "r1")
        assert audit.flush(), "the row recorded after the idle time was not written"
        _record(audit, "r2")
    finally:
        audit.close()
    store = connect(state)
    try:
        assert [e.request_id for e in invocation_records(store, AuditFilter(), limit=10)] == ["r2", "r1"]
    finally:
        store.close()
    assert idle == 0, f"the idle audit writer woke {idle} times over {BEATS} quarter-seconds"


def test_an_idle_broker_checkpoints_nothing_and_checkpoints_after_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpointer woke every CHECKPOINT_EVERY (0.25 s), written or not. Now it waits for a write to
    the data file; the writes made then are still copied out of the WAL by it, not by the commits."""
    woken = _count_event_wakeups(monkeypatch)
    path = tmp_path / "state.data.db"
    plane = DataPlane(docstore.connect(path), lambda: ())
    plane.sync_collections([parse_collection("notes", {})], False, False)
    broker = Broker(plane)
    before = path.stat().st_size

    async def scenario() -> int:
        idle = await counted_over(quarter_second, lambda: woken["fnctl-checkpoint"], BEATS, "quarter-seconds")
        for _ in range(600):
            await broker.write(lambda: plane.stage(OP, WriteOp("insert", "notes", None, dict(BIG))))
        return idle

    try:
        idle = asyncio.run(scenario())
        wait_until(lambda: path.stat().st_size > before + 2_000_000, what="the checkpointer to copy the WAL")
    finally:
        broker.close_all()
    assert idle == 0, f"the idle checkpointer woke {idle} times over {BEATS} quarter-seconds"


def test_a_broker_on_postgresql_runs_no_checkpointer(pg_url: str) -> None:
    """PostgreSQL has no WAL file of ours to checkpoint: no thread to wake (it woke every 0.25 s for nothing)."""
    broker = Broker(DataPlane(docstore.connect(pg_url), lambda: ()))
    try:
        assert not any(t.name == "fnctl-checkpoint" for t in threading.enumerate())
    finally:
        broker.close_all()
