"""The outbox of onCommit triggers, in the data file (migration 2 of `datamigrations`): its rows are written
by the write path itself (`docwrites`, in the change's own transaction); here is the rest of their life: the
events due for delivery (the oldest pending one of each document and trigger, so that a document's events
go out in order), their outcome (delivered, retried later, dead), what `fnctl events` lists, replays and
purges, and the pruning that bounds what is kept."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fnctl.state.docconn import DocConn

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATES = (PENDING, DELIVERED, DEAD)


@dataclass(frozen=True)
class OutboxEvent:
    trigger: str
    seq: int  # the change's sequence in the change log: with the trigger, the event's id
    collection: str
    tenant: str
    doc_id: str
    state: str
    attempts: int
    next_at: float
    last_error: str | None
    updated_at: float
    op: str
    at: str  # when the change was committed
    before: str | None  # the envelopes as logged (JSON text)
    after: str | None


_SELECT = (
    "SELECT o.trigger, o.seq, o.collection, o.tenant, o.doc_id, o.state, o.attempts, o.next_at, o.last_error, "
    "o.updated_at, c.op, c.at, c.before, c.after FROM outbox o JOIN changes c ON c.seq = o.seq"
)


def due(db: DocConn, now: float, limit: int, paused: Iterable[str] = ()) -> list[OutboxEvent]:
    """Pending events whose time has come, oldest first, each the oldest pending event of its document for its
    trigger (a later one waits until the earlier is delivered or dead); the events of `paused` triggers wait."""
    held = sorted(set(paused))
    cond = f" AND o.trigger NOT IN ({', '.join('?' * len(held))})" if held else ""
    rows = db.execute(
        f"{_SELECT} WHERE o.state = 'pending' AND o.next_at <= ?{cond} AND NOT EXISTS (SELECT 1 FROM outbox p "
        "WHERE p.state = 'pending' AND p.trigger = o.trigger AND p.tenant = o.tenant AND p.collection = o.collection "
        "AND p.doc_id = o.doc_id AND p.seq < o.seq) ORDER BY o.seq LIMIT ?",
        (now, *held, limit),
    ).fetchall()
    return [OutboxEvent(*row) for row in rows]


def settle(
    db: DocConn,
    delivered: Sequence[tuple[str, int]],
    failed: Sequence[tuple[str, int, int, float | None, str]],
) -> None:
    """Record a round of deliveries in one transaction: `delivered` (trigger, seq); `failed` (trigger, seq,
    attempts, the next attempt's time or None for a dead letter, the error)."""
    now = time.time()
    with _write(db):
        db.executemany(
            "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, last_error = NULL, updated_at = ? "
            "WHERE trigger = ? AND seq = ? AND state = 'pending'",
            [(now, t, s) for t, s in delivered],
        )
        db.executemany(
            "UPDATE outbox SET state = ?, attempts = ?, next_at = ?, last_error = ?, updated_at = ? "
            "WHERE trigger = ? AND seq = ? AND state = 'pending'",
            [(DEAD if at is None else PENDING, n, at or now, error[:500], now, t, s) for t, s, n, at, error in failed],
        )


def listing(db: DocConn, state: str | None, trigger: str | None, limit: int, after: int = 0) -> list[OutboxEvent]:
    """Events by seq (then trigger), filtered by state and trigger."""
    cond, params = _where(state, trigger)
    rows = db.execute(
        f"{_SELECT} WHERE o.seq > ? AND {cond} ORDER BY o.seq, o.trigger LIMIT ?", (after, *params, limit)
    )
    return [OutboxEvent(*row) for row in rows]


def counts(db: DocConn) -> dict[tuple[str, str], int]:
    """(trigger, state) → events."""
    rows = db.execute("SELECT trigger, state, COUNT(*) FROM outbox GROUP BY trigger, state")
    return {(str(t), str(s)): int(n) for t, s, n in rows}


def replay(db: DocConn, trigger: str | None, seqs: Sequence[int], state: str = DEAD) -> int:
    """Make events of `state` (dead letters by default; `delivered` to deliver again) pending, due now, with
    their attempts counted afresh; all of them, or those of `seqs`. How many."""
    cond, params = _where(state, trigger)
    if seqs:
        cond += f" AND o.seq IN ({', '.join('?' * len(seqs))})"
        params = [*params, *seqs]
    now = time.time()
    with _write(db):
        cur = db.execute(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_at = ?, last_error = NULL, updated_at = ? "
            f"WHERE (trigger, seq) IN (SELECT o.trigger, o.seq FROM outbox o WHERE {cond})",
            (now, now, *params),
        )
    return int(cur.rowcount)


def purge(db: DocConn, state: str | None, trigger: str | None, seqs: Sequence[int] = ()) -> int:
    """Delete events (of `state`, of `trigger`, or those of `seqs`). How many."""
    cond, params = _where(state, trigger)
    if seqs:
        cond += f" AND o.seq IN ({', '.join('?' * len(seqs))})"
        params = [*params, *seqs]
    with _write(db):
        cur = db.execute(
            f"DELETE FROM outbox WHERE (trigger, seq) IN (SELECT o.trigger, o.seq FROM outbox o WHERE {cond})", params
        )
    return int(cur.rowcount)


def prune(db: DocConn, delivered_before: float, dead_before: float) -> int:
    """Drop delivered events settled before `delivered_before` and dead letters before `dead_before`."""
    with _write(db):
        cur = db.execute(
            "DELETE FROM outbox WHERE (state = 'delivered' AND updated_at < ?) OR (state = 'dead' AND updated_at < ?)",
            (delivered_before, dead_before),
        )
    return int(cur.rowcount)


def _where(state: str | None, trigger: str | None) -> tuple[str, list[object]]:
    cond, params = "TRUE", list[object]()
    if state is not None:
        cond += " AND o.state = ?"
        params.append(state)
    if trigger is not None:
        cond += " AND o.trigger = ?"
        params.append(trigger)
    return cond, params


class _write:
    """One write transaction on an autocommit connection (committed, or rolled back on error)."""

    def __init__(self, db: DocConn) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.dialect.begin_write(self.db)

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
