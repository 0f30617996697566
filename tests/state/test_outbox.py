"""The outbox of onCommit triggers on a real store (a SQLite data file, and PostgreSQL): rows written in the write's own transaction (and only
for collections with onCommit triggers), the committed-changes listener, due events one per document in
order, settling (delivered, retried, dead), replay, purge and pruning."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from fnctl.data.caller import Caller
from fnctl.data.committed import Committed
from fnctl.data.documents import WriteOp
from fnctl.data.errors import Conflict
from fnctl.data.plane import DataPlane
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore

ROUTES = {"orders": ("ship", "mail")}


@pytest.fixture
def plane(data_location: docstore.Location) -> Iterator[DataPlane]:
    store = docstore.connect(data_location)
    plane = DataPlane(store, lambda: (), outbox=lambda: ROUTES)
    plane.sync_collections(
        [parse_collection("orders", {"schema": {"type": "object"}}), parse_collection("notes", {})], False, False
    )
    yield plane
    store.close()


OP = Caller.operator("t", "")


def test_a_write_queues_one_event_per_oncommit_trigger_and_tells_the_listeners(plane: DataPlane) -> None:
    heard: list[Sequence[Committed]] = []
    plane.listeners.append(heard.append)
    made = plane.insert(OP, "orders", {"n": 1}, id="o1")
    plane.insert(OP, "notes", {"n": 1}, id="n1")  # no trigger on notes: no event
    events = plane.store.outbox_list(None, None, 100)
    assert sorted((e.trigger, e.doc_id, e.op, e.state) for e in events) == [
        ("mail", "o1", "insert", "pending"),
        ("ship", "o1", "insert", "pending"),
    ]
    assert [[(c.collection, c.id, c.op, c.before, c.after and c.after["version"]) for c in b] for b in heard] == [
        [("orders", "o1", "insert", None, made.version)],
        [("notes", "n1", "insert", None, 1)],
    ]
    assert heard[0][0].seq < heard[1][0].seq


def test_a_failed_write_queues_nothing_and_tells_nobody(plane: DataPlane) -> None:
    heard: list[Sequence[Committed]] = []
    plane.insert(OP, "orders", {"n": 1}, id="o1")
    plane.listeners.append(heard.append)
    with pytest.raises(Conflict):
        plane.batch(OP, [WriteOp("insert", "orders", "o2", {"n": 2}), WriteOp("insert", "orders", "o1", {"n": 3})])
    assert heard == []
    assert {e.doc_id for e in plane.store.outbox_list(None, None, 100)} == {"o1"}


def test_group_commits_queue_events_too(plane: DataPlane) -> None:
    txns = [plane.stage(OP, WriteOp("insert", "orders", f"g{i}", {"n": i})) for i in range(3)]
    plane.commit_group(txns)
    assert len(plane.store.outbox_list("pending", "ship", 100)) == 3


def test_due_takes_a_documents_events_in_order(plane: DataPlane) -> None:
    plane.insert(OP, "orders", {"n": 1}, id="o1")
    plane.replace(OP, "orders", "o1", {"n": 2})
    plane.insert(OP, "orders", {"n": 1}, id="o2")
    store = plane.store
    first = store.outbox_due(time.time(), 100)
    assert sorted((e.trigger, e.doc_id, e.op) for e in first) == [
        ("mail", "o1", "insert"),
        ("mail", "o2", "insert"),
        ("ship", "o1", "insert"),
        ("ship", "o2", "insert"),
    ]
    assert {e.trigger for e in store.outbox_due(time.time(), 100, paused=["mail"])} == {"ship"}  # mail waits
    ship_o1 = next(e for e in first if (e.trigger, e.doc_id) == ("ship", "o1"))
    store.outbox_settle([("ship", ship_o1.seq)], [])
    second = store.outbox_due(time.time(), 100)
    assert [(e.doc_id, e.op) for e in second if e.trigger == "ship"] == [("o1", "replace"), ("o2", "insert")]
    assert [(e.doc_id, e.op) for e in second if e.trigger == "mail"] == [("o1", "insert"), ("o2", "insert")]


def test_retry_dead_letter_replay_and_purge(plane: DataPlane) -> None:
    plane.insert(OP, "orders", {"n": 1}, id="o1")
    store = plane.store
    event = next(e for e in store.outbox_due(time.time(), 10) if e.trigger == "ship")
    store.outbox_settle([], [("ship", event.seq, 1, time.time() + 60, "boom")])
    assert all(e.trigger != "ship" for e in store.outbox_due(time.time(), 10))  # not due before its time
    store.outbox_settle([], [("ship", event.seq, 2, None, "boom again")])
    dead = store.outbox_list("dead", None, 10)
    assert [(e.trigger, e.attempts, e.last_error) for e in dead] == [("ship", 2, "boom again")]
    assert store.outbox_replay("ship", []) == 1
    again = next(e for e in store.outbox_due(time.time(), 10) if e.trigger == "ship")
    assert (again.attempts, again.state) == (0, "pending")
    assert store.outbox_purge("pending", "mail") == 1
    assert {e.trigger for e in store.outbox_list(None, None, 10)} == {"ship"}


def test_prune_drops_old_delivered_and_dead_events(plane: DataPlane) -> None:
    plane.insert(OP, "orders", {"n": 1}, id="o1")
    store = plane.store
    due = store.outbox_due(time.time(), 10)
    store.outbox_settle([("ship", due[0].seq)], [("mail", due[0].seq, 5, None, "x")])
    assert store.outbox_prune(time.time() - 10, time.time() - 10) == 0
    assert store.outbox_prune(time.time() + 1, time.time() - 10) == 1
    assert [e.state for e in store.outbox_list(None, None, 10)] == ["dead"]


def test_concurrent_writers_leave_a_gap_free_change_log_that_a_tailing_reader_reads_in_order(
    data_location: docstore.Location,
) -> None:
    """Writers on several connections at once: every change gets the next seq in commit order (on PostgreSQL
    the write transactions serialise on an advisory lock), so a reader tailing `changes_after(last)` never
    skips a seq that commits later, and the hash chain verifies."""
    store = docstore.connect(data_location)
    plane = DataPlane(store, lambda: (), outbox=lambda: {})
    plane.sync_collections([parse_collection("notes", {})], False, False)
    writers, each = 4, 15
    seen: list[int] = []
    done = threading.Event()

    def write(n: int) -> None:
        for i in range(each):
            plane.insert(OP, "notes", {"writer": n, "i": i})

    def tail() -> None:
        last = 0
        while True:
            finished = done.is_set()  # read before the last pass: nothing commits after it
            for row in store.changes_after(last, 100):
                seen.append(row.seq)
                last = row.seq
            if finished:
                return

    reader = threading.Thread(target=tail)
    reader.start()
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    assert seen == list(range(1, writers * each + 1))
    assert store.verify_changes().intact
    store.close()
