"""The document store's tables: each collection's table, generated columns and indexes made to match its
declared spec (what `apply` does to collections), through the connection's dialect (`docconn.Dialect`)."""

from __future__ import annotations

import json
from typing import Any

from fnctl.state.docconn import DocConn
from fnctl.state.docrecords import JSON, DataStoreError, NotEmpty, SyncResult
from fnctl.state.docsql import table


def migrate(db: DocConn) -> None:
    db.dialect.migrate(db)


def sync_collections(db: DocConn, specs: dict[str, dict[str, Any]], prune: bool, force: bool) -> SyncResult:
    """Make the collections' tables and indexes those of `specs` (name → Collection spec), in one
    transaction. Dropping a non-empty collection needs `force` (else NotEmpty, nothing changed)."""
    result = SyncResult()
    dialect = db.dialect
    dialect.begin_write(db)
    try:
        current = {n: (json.loads(s), int(v)) for n, s, v in db.execute("SELECT name, spec, version FROM collections")}
        gone = sorted(set(current) - set(specs)) if prune else []
        full = [n for n in gone if db.execute(f"SELECT 1 FROM {table(n)} LIMIT 1").fetchone()]
        if full and not force:
            raise NotEmpty(
                f"refusing to drop collection(s) that still hold documents: {', '.join(full)} "
                "(apply --prune --force drops them with their documents)"
            )
        for name, spec in sorted(specs.items()):
            old = current.get(name)
            if old is not None and old[0] == spec:
                result.unchanged.append(name)
                continue
            dialect.create_or_alter(db, name, spec)
            db.execute(
                "INSERT INTO collections VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "spec = excluded.spec, version = excluded.version",
                (name, JSON(spec), (old[1] + 1) if old else 1),
            )
            (result.updated if old else result.created).append(name)
        for name in gone:
            db.execute(f"DROP TABLE IF EXISTS {table(name)}")
            db.execute("DELETE FROM collections WHERE name = ?", (name,))
            db.execute("DELETE FROM idempotency WHERE collection = ?", (name,))
            result.dropped.append(name)
        db.execute("COMMIT")
    except dialect.IntegrityError as exc:
        db.execute("ROLLBACK")
        raise DataStoreError(
            f"cannot create a unique index: existing documents have duplicate values ({exc})"
        ) from None
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return result
