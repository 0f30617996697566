"""The document store's one write path: a transaction's writes checked against the versions it read and
applied in one write transaction (the dialect's `begin_write`: serialised with every other writer), their changes appended to the hash-chained change log
(`fnctl.state.auditchain`, chain "changes"), inserts remembered by Idempotency-Key; and the group commit
that concurrent single writes share. `indexed` is the store's map of collection → fields with a generated
column."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from fnctl.state import auditchain
from fnctl.state.docconn import DocConn, Head
from fnctl.state.docrecords import (
    ChangeRow,
    DataStoreError,
    GroupItem,
    IdempotentReplay,
    ReadCheck,
    StaleWrite,
    StoredDoc,
    UniqueViolation,
    envelope,
    timestamp,
)
from fnctl.state.docsql import CHAIN, CHANGE_COLUMNS, DOC_COLUMNS, find_rows, rows_by_id, table, versions

Outbox = Mapping[str, Sequence[str]] | None  # collection → the onCommit triggers its changes are queued for


def commit(
    db: DocConn,
    indexed: dict[str, frozenset[str]],
    item: GroupItem,
    outbox: Outbox = None,
    committed: list[ChangeRow] | None = None,
) -> list[StoredDoc | None]:
    """One short write transaction: check that what was read is unchanged (StaleWrite(None)) and that every
    write's base version is current (StaleWrite(i)), apply the writes, append their changes, record
    idempotency keys, and an outbox row per onCommit trigger of each changed collection (`outbox`: collection →
    trigger names). The new rows, None for deletes; the changes as logged are appended to `committed` once
    committed. Nothing is written when it raises."""
    changes: list[tuple[Any, ...]] = []
    with _write_transaction(db, lambda exc: _integrity_error(db, indexed, exc)) as head:
        try:
            result = _commit(db, indexed, item, into=changes)
        except db.dialect.IntegrityError as exc:
            raise _integrity_error(db, indexed, exc) from None
        linked = _append_changes(db, changes, outbox, head)
    if committed is not None:
        committed.extend(ChangeRow(*row[:12]) for row in linked)
    return result


def commit_group(
    db: DocConn,
    indexed: dict[str, frozenset[str]],
    items: Sequence[GroupItem],
    outbox: Outbox = None,
    committed: list[ChangeRow] | None = None,
) -> list[list[StoredDoc | None] | Exception]:
    """Several independent transactions in ONE write transaction (what concurrent single writes share:
    one BEGIN, one COMMIT, one append to the change log), each still all or nothing and failing alone
    (StaleWrite, UniqueViolation, IdempotentReplay: its exception in its place); the others commit. Every
    change is chained as with `commit`.

    A transaction's StaleWrite or IdempotentReplay is raised before it wrote anything, so the group first runs
    without savepoints (two statements fewer per write); only a constraint broken half-way through one
    transaction's writes (a unique index) makes it start again, with each transaction in a savepoint of its own."""
    try:
        with _write_transaction(db, lambda exc: _BrokenHalfway()) as head:
            out, changes = _group(db, indexed, items, savepoints=False)
            linked = _append_changes(db, changes, outbox, head)
    except _BrokenHalfway:  # rolled back: again, each transaction in a savepoint of its own, each answered
        with _write_transaction(db, None, pipelined=False) as head:
            out, changes = _group(db, indexed, items, savepoints=True)
            linked = _append_changes(db, changes, outbox, head)
    if committed is not None:
        committed.extend(ChangeRow(*row[:12]) for row in linked)
    return out


@contextmanager
def _write_transaction(
    db: DocConn, integrity: Callable[[Exception], Exception] | None, *, pipelined: bool = True
) -> Iterator[Head | None]:
    """`begin_write` … `COMMIT`, rolled back on any error (the backend's as DataStoreError; a broken constraint
    as `integrity` makes it). Yields the change log's head when `begin_write` read it.

    `pipelined`: the statements and the COMMIT go out without waiting for each answer (PostgreSQL: an insert's
    transaction is two round trips, not six), so a constraint a write broke may be reported only at the end."""
    error = db.dialect.Error
    try:
        head = db.dialect.begin_write(db)
    except error as exc:
        _rollback(db)
        raise DataStoreError(f"cannot write the data file: {exc}") from None
    try:
        with db.pipeline() if pipelined else contextlib.nullcontext():
            yield head
            db.execute("COMMIT")
    except error as exc:
        _rollback(db)
        if integrity is not None and isinstance(exc, db.dialect.IntegrityError):
            raise integrity(exc) from None
        raise DataStoreError(f"cannot write the data file: {exc}") from None
    except BaseException:
        _rollback(db)
        raise


def _rollback(db: DocConn) -> None:
    """Roll back what is open (nothing, when BEGIN itself failed; a lost connection cannot)."""
    try:
        db.execute("ROLLBACK")
    except db.dialect.Error:
        pass


class _BrokenHalfway(Exception):
    """A constraint broken half-way through a transaction's writes, in a group run without savepoints."""


def _group(
    db: DocConn, indexed: dict[str, frozenset[str]], items: Sequence[GroupItem], *, savepoints: bool
) -> tuple[list[list[StoredDoc | None] | Exception], list[tuple[Any, ...]]]:
    """Check and apply a group's transactions in the open write transaction: a result or an exception each,
    and the change rows of those that applied. Without `savepoints`, a constraint broken by a write raises
    _BrokenHalfway (the caller rolls everything back and starts again with savepoints)."""
    out: list[list[StoredDoc | None] | Exception] = []
    changes: list[tuple[Any, ...]] = []
    for item in items:
        if savepoints:
            db.execute("SAVEPOINT grouped")
        mark = len(changes)
        try:
            out.append(_commit(db, indexed, item, into=changes))
        except (StaleWrite, IdempotentReplay) as exc:  # raised before the transaction wrote anything
            if savepoints:
                db.execute("ROLLBACK TO grouped")
            del changes[mark:]
            out.append(exc)
        except db.dialect.IntegrityError as exc:
            if not savepoints:
                raise _BrokenHalfway from exc
            db.execute("ROLLBACK TO grouped")
            del changes[mark:]
            out.append(_integrity_error(db, indexed, exc))
        if savepoints:
            db.execute("RELEASE grouped")
    return out, changes


def _integrity_error(db: DocConn, indexed: dict[str, frozenset[str]], exc: Exception) -> Exception:
    """A unique index refusing a write (UniqueViolation, naming the fields), or another broken constraint."""
    unique = db.dialect.unique_fields(indexed, exc)
    if unique is not None:
        return UniqueViolation(*unique)
    return DataStoreError(f"cannot write the data file: {exc}")


def _commit(
    db: DocConn,
    indexed: dict[str, frozenset[str]],
    item: GroupItem,
    into: list[tuple[Any, ...]],
) -> list[StoredDoc | None]:
    """Check and apply one transaction's writes; its change rows are appended to `into` (for the log: a
    group commit appends all its transactions' rows at once, in order)."""
    tenant, reads, finds, writes, meta = item.tenant, item.reads, item.finds, item.writes, item.meta
    # What was read: unchanged? One query per collection (and CHUNK ids), not one per document.
    read_ids: dict[tuple[str, str], list[ReadCheck]] = {}
    for read in reads:
        read_ids.setdefault((read.collection, read.tenant), []).append(read)
    for (collection, read_tenant), checks in read_ids.items():
        found = versions(db, collection, read_tenant, [r.id for r in checks])
        if any(found.get(r.id, 0) != r.version for r in checks):
            raise StaleWrite(None)
    for query, seen in finds:
        if tuple((r.id, r.version) for r in find_rows(db, indexed.get(query.collection, frozenset()), query)) != seen:
            raise StaleWrite(None)
    # What is written on: at the version each write is based on? Again one query per collection.
    by_collection: dict[str, list[str]] = {}
    for write in writes:
        if not write.fresh:  # a freshly generated id names no stored document: nothing to look up
            by_collection.setdefault(write.collection, []).append(write.id)
    current = {(c, row.id): row for c, ids in by_collection.items() for row in rows_by_id(db, c, tenant, ids)}
    for i, write in enumerate(writes):
        if write.idempotency_key is not None:
            row = db.execute(
                "SELECT response FROM idempotency WHERE tenant = ? AND collection = ? AND key = ?",
                (tenant, write.collection, write.idempotency_key),
            ).fetchone()
            if row is not None:
                raise IdempotentReplay(str(row[0]))
        before = current.get((write.collection, write.id))
        if (before.version if before else 0) != write.expected:
            raise StaleWrite(i)
    now, txn = timestamp(), os.urandom(16).hex()  # a random transaction id (what uuid4().hex gave, cheaper)
    actor, function = meta.actor, meta.function
    revision = None if meta.revision is None else int(meta.revision)
    results: list[StoredDoc | None] = []
    changes: list[tuple[Any, ...]] = []
    keys: list[tuple[str, str, str]] = []
    deletes: dict[str, list[tuple[str, str]]] = {}
    updates: dict[str, list[tuple[Any, ...]]] = {}
    inserts: dict[str, list[tuple[Any, ...]]] = {}
    for write in writes:
        before = current.get((write.collection, write.id))
        after: StoredDoc | None = None
        if write.op == "delete":
            deletes.setdefault(write.collection, []).append((tenant, write.id))
        else:
            assert write.data is not None
            if before is None:
                after = StoredDoc(tenant, write.id, 1, now, actor, now, actor, write.data)
                inserts.setdefault(write.collection, []).append(
                    (tenant, write.id, 1, now, actor, now, actor, write.data)
                )
            else:
                after = StoredDoc(
                    tenant,
                    write.id,
                    before.version + 1,
                    before.created_at,
                    before.created_by,
                    now,
                    actor,
                    write.data,
                )
                updates.setdefault(write.collection, []).append(
                    (after.version, now, actor, write.data, tenant, write.id)
                )
        op = "delete" if write.op == "delete" else ("insert" if before is None else "replace")
        after_text = envelope(after) if after else None
        # Already as SQLite gives them back (auditchain.normalise), so writer and verifier hash the same.
        changes.append(
            (
                txn,
                now,
                write.collection,
                tenant,
                write.id,
                op,
                envelope(before) if before else None,
                after_text,
                actor,
                function,
                revision,
            )
        )
        if write.idempotency_key is not None and after_text is not None:
            keys.append((write.collection, write.idempotency_key, after_text))
        results.append(after)
    # Deletes, then replaces, then inserts (a unique value freed by one write can be taken by another).
    for collection, rows in deletes.items():
        db.executemany(f"DELETE FROM {table(collection)} WHERE tenant = ? AND id = ?", rows)
    for collection, rows in updates.items():
        db.executemany(
            f"UPDATE {table(collection)} SET version = ?, updated_at = ?, updated_by = ?, data = ? "
            "WHERE tenant = ? AND id = ?",
            rows,
        )
    for collection, rows in inserts.items():
        db.executemany(f"INSERT INTO {table(collection)} ({DOC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    for collection, key, response in keys:
        db.execute("INSERT INTO idempotency VALUES (?, ?, ?, ?, ?)", (tenant, collection, key, response, time.time()))
    into.extend(changes)
    return results


def _append_changes(
    db: DocConn, rows: list[tuple[Any, ...]], outbox: Outbox, head: Head | None
) -> list[tuple[Any, ...]]:
    """Chain and append change rows whose fields (after seq) are already normalised: one hash each, after
    `head` (read here when None); and, in the same transaction, the outbox rows of the onCommit triggers of
    their collections. The rows as appended."""
    if not rows:
        return []
    if head is None:
        row = db.execute("SELECT seq, hash FROM changes ORDER BY seq DESC LIMIT 1").fetchone()
        head = (int(row[0]), str(row[1])) if row else (0, auditchain.GENESIS)
    last, prev = head
    linked = auditchain.link(CHAIN, ((last + n, *row) for n, row in enumerate(rows, 1)), prev)
    marks = ", ".join("?" * (len(auditchain.CHANGE_FIELDS) + 2))
    db.executemany(f"INSERT INTO changes ({CHANGE_COLUMNS}) VALUES ({marks})", linked)
    db.execute(
        "INSERT INTO settings VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (auditchain.head_setting(CHAIN), f"{linked[-1][0]} {linked[-1][-1]}"),
    )
    db.dialect.announce(db, int(linked[-1][0]))
    if outbox:
        now = time.time()
        events = [
            (trigger, row[0], row[3], row[4], row[5], now, now) for row in linked for trigger in outbox.get(row[3], ())
        ]
        if events:
            db.executemany(
                "INSERT INTO outbox (trigger, seq, collection, tenant, doc_id, next_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                events,
            )
    return linked
