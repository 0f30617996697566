"""The onCommit dispatcher on a real data file and broker, with a recording handler in place of the gateway's
invocation path: woken by commits, in order per document, retried then dead, nothing attempted before the
gateway has its table, paused triggers waiting with their attempts untouched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import pytest

from fnctl.data.caller import Caller
from fnctl.data.plane import DataPlane
from fnctl.gateway.broker import Broker
from fnctl.gateway.dispatcher import Dispatcher
from fnctl.gateway.metrics import Metrics
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore

TRIGGERS: dict[str, dict[str, Any]] = {
    "ship": {
        "function": "f",
        "on": {"collection": "orders", "event": "onCommit"},
        "retry": {"maxAttempts": 2, "backoff": "10ms"},
    }
}
OP = Caller.operator("t", "")


@pytest.fixture
def broker(data_location: docstore.Location) -> Iterator[Broker]:
    plane = DataPlane(docstore.connect(data_location), lambda: (), outbox=lambda: {"orders": ("ship",)})
    plane.sync_collections([parse_collection("orders", {})], False, False)
    broker = Broker(plane)
    yield broker
    broker.close_all()


def _run(
    broker: Broker,
    fail: set[str],
    writes: list[tuple[str, int]],
    until_done: int,
    triggers: Mapping[str, Any] | None = TRIGGERS,
    paused: tuple[str, ...] = (),
    metrics: Metrics | None = None,
) -> list[tuple[str, int, int]]:
    """Write (id, n) documents once the dispatcher runs; return the attempts made (id, n, attempt)."""
    attempts: list[tuple[str, int, int]] = []

    async def deliver(trigger: str, function: str, event: Any, tenant: str) -> tuple[bool, str]:
        n = event["after"]["data"]["n"]
        await asyncio.sleep(0.002 * (10 - n % 10))  # later writes finish sooner: concurrent ones would reorder
        attempts.append((event["id"], n, event["attempt"]))  # in the order the deliveries finish
        return (False, "failed on purpose") if event["id"] in fail else (True, "")

    async def main() -> None:
        stop = asyncio.Event()
        dispatcher = Dispatcher(broker, deliver, lambda: triggers, poll=0.05, paused=lambda: paused, metrics=metrics)
        task = asyncio.create_task(dispatcher.run(stop))
        for id, n in writes:
            if id == "same":  # one document written again and again
                await broker.run(partial(broker.plane.replace, OP, "orders", "same", {"n": n}))
            else:
                await broker.run(partial(broker.plane.insert, OP, "orders", {"n": n}, id=f"{id}-{n}"))
        deadline = time.monotonic() + 10
        while len(attempts) < until_done and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # nothing more should come
        stop.set()
        await task

    asyncio.run(main())
    return attempts


def test_each_event_is_delivered_once_and_settled(broker: Broker) -> None:
    attempts = _run(broker, set(), [("a", i) for i in range(20)], 20)
    assert sorted(n for _, n, _ in attempts) == list(range(20))
    assert broker.plane.store.outbox_counts() == {("ship", "delivered"): 20}


def test_a_documents_events_go_out_in_order_even_when_one_is_retried(broker: Broker) -> None:
    broker.plane.insert(OP, "orders", {"n": 0}, id="same")
    attempts = _run(broker, set(), [("same", n) for n in range(1, 8)], 8)
    assert [n for id, n, _ in attempts if id == "same"] == list(range(8))


def test_a_failing_event_is_retried_then_dead(broker: Broker) -> None:
    metrics = Metrics()
    attempts = _run(broker, {"bad-0"}, [("bad", 0), ("good", 1)], 3, metrics=metrics)
    assert sorted(a for a in attempts if a[0] == "bad-0") == [("bad-0", 0, 1), ("bad-0", 0, 2)]
    dead = broker.plane.store.outbox_list("dead", None, 10)
    assert [(e.doc_id, e.attempts, e.last_error) for e in dead] == [("bad-0", 2, "failed on purpose")]
    text = metrics.render().decode()
    assert 'fnctl_events_dead_total{trigger="ship"} 1.0' in text
    assert 'fnctl_events_failed_total{trigger="ship"} 2.0' in text


def test_nothing_is_attempted_before_the_gateway_has_its_table(broker: Broker) -> None:
    assert _run(broker, set(), [("a", 1)], 0, triggers=None) == []
    assert broker.plane.store.outbox_counts() == {("ship", "pending"): 1}


def test_a_paused_triggers_events_wait_with_their_attempts(broker: Broker) -> None:
    assert _run(broker, set(), [("a", 1)], 0, paused=("ship",)) == []
    [event] = broker.plane.store.outbox_list("pending", None, 10)
    assert event.attempts == 0
