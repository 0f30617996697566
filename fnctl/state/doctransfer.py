"""Copying a project's document store from one backend to another (the data part of `fnctl state migrate`),
then checking the copy: the collections (their tables, generated columns and indexes made on the target as
the target's dialect makes them), every document as stored (its JSON text as written, so ETags, envelopes and
change-log hashes stay byte-identical), the change log with its seqs and hashes, idempotency keys, the outbox
and the settings (the change log's head marker). Then each table's row count on both sides, and the change
log's chain walked on the target, ending at the source's head.

The source is read inside its write transaction (writers wait the seconds the copy takes, and what is copied
is one consistent state); the target is written in one transaction and must hold no data yet.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fnctl.state import auditchain, docschema, transfer
from fnctl.state.docconn import DocConn
from fnctl.state.docrecords import DataStoreError
from fnctl.state.docsql import CHANGE_COLUMNS, DOC_COLUMNS, table
from fnctl.state.docstore import DocStore
from fnctl.state.transfer import TableCount

# Table → its columns, named (the backends' tables need not keep one column order: PostgreSQL's collection
# tables carry generated columns).
_FIXED: tuple[tuple[str, str, str], ...] = (  # (table, columns, order)
    ("changes", CHANGE_COLUMNS, "seq"),
    ("idempotency", "tenant, collection, key, response, at", "tenant, collection, key"),
    ("outbox", "trigger, seq, collection, tenant, doc_id, state, attempts, next_at, last_error, updated_at", "seq"),
    ("settings", "key, value", "key"),
)
_BATCH = 500


@dataclass(frozen=True)
class DataTransfer:
    counts: tuple[TableCount, ...]
    source_chain: auditchain.ChainReport
    target_chain: auditchain.ChainReport

    @property
    def problems(self) -> list[str]:
        return transfer.problems(self.counts, [(self.source_chain, self.target_chain)])

    def as_json(self) -> dict[str, Any]:
        return {
            "verified": not self.problems,
            "problems": self.problems,
            "tables": [c.as_json() for c in self.counts],
            "chain": {"source": self.source_chain.as_json(), "target": self.target_chain.as_json()},
        }


def copy_documents(source: DocStore, target: DocStore) -> DataTransfer:
    """Copy every collection, document and record of `source` into `target` (holding no data yet), and check."""
    src, dst = source._db(), target._db()  # noqa: SLF001 (the store's own package: one connection each)
    if _count(dst, "changes") or any(target.count(name) for name in target.collections()):
        raise DataStoreError("the target already holds documents or changes: migrate into an empty database")
    collections = source.collections()
    src.dialect.begin_write(src)
    try:
        docschema.sync_collections(dst, {n: c.spec for n, c in collections.items()}, prune=False, force=False)
        tables = [(table(name), DOC_COLUMNS, "tenant, id") for name in sorted(collections)]

        def copy() -> None:
            for name, row in collections.items():  # the same version: caches keyed by it stay meaningful
                dst.execute("UPDATE collections SET version = ? WHERE name = ?", (row.version, name))
            for tbl, columns, order in (*tables, *_FIXED):
                _copy_table(src, dst, tbl, columns, order)

        _transaction(dst, "target", copy)
        counts = tuple(TableCount(t, _count(src, t), _count(dst, t)) for t, _, _ in (*tables, *_FIXED))
    finally:
        src.execute("ROLLBACK")  # the source was only read
    target.collections()  # the target's view of its indexed fields, for what it serves next
    return DataTransfer(counts, source.verify_changes(), target.verify_changes())


def _transaction(db: DocConn, which: str, work: Callable[[], None]) -> None:
    """`work` in one write transaction of `db` (all or nothing)."""
    try:
        db.dialect.begin_write(db)
        work()
        db.execute("COMMIT")
    except db.dialect.Error as exc:
        try:
            db.execute("ROLLBACK")
        except db.dialect.Error:
            pass
        raise DataStoreError(f"cannot copy the documents ({which}): {exc}") from None
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _copy_table(src: DocConn, dst: DocConn, tbl: str, columns: str, order: str) -> None:
    marks = ", ".join("?" * len(columns.split(",")))
    rows: Iterator[Any] = iter(src.execute(f"SELECT {columns} FROM {tbl} ORDER BY {order}"))
    sql = f"INSERT INTO {tbl} ({columns}) VALUES ({marks})"
    if tbl == "settings":  # the target made its own settings (none yet that the source lacks): the source's win
        sql += " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    for chunk in _chunks(rows):
        dst.executemany(sql, chunk)


def _chunks(rows: Iterable[Any]) -> Iterator[list[tuple[Any, ...]]]:
    iterator = iter(rows)
    while chunk := [tuple(r) for r in itertools.islice(iterator, _BATCH)]:
        yield chunk


def _count(db: DocConn, tbl: str) -> int:
    return int(db.execute(f"SELECT COUNT(*) FROM {tbl}").fetchone()[0])
