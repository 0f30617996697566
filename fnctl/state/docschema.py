"""The document store's tables: the data file's migrations, and each collection's table, generated columns
and indexes made to match its declared spec (what `apply` does to collections)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

from fnctl.state.datamigrations import DATA_MIGRATIONS
from fnctl.state.docrecords import JSON, DataStoreError, NotEmpty, SyncResult
from fnctl.state.docsql import column, index_fields, json_path, table
from fnctl.state.migrations import apply_migrations


def migrate(db: sqlite3.Connection) -> None:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > len(DATA_MIGRATIONS):
        raise DataStoreError(
            f"the data file has schema version {version}, newer than this fnctl knows "
            f"({len(DATA_MIGRATIONS)}); upgrade fnctl"
        )
    apply_migrations(db, version, DATA_MIGRATIONS)


def sync_collections(db: sqlite3.Connection, specs: dict[str, dict[str, Any]], prune: bool, force: bool) -> SyncResult:
    """Make the collections' tables and indexes those of `specs` (name → Collection spec), in one
    transaction. Dropping a non-empty collection needs `force` (else NotEmpty, nothing changed)."""
    result = SyncResult()
    db.execute("BEGIN IMMEDIATE")
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
            _create_or_alter(db, name, spec)
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
    except sqlite3.IntegrityError as exc:
        db.execute("ROLLBACK")
        raise DataStoreError(
            f"cannot create a unique index: existing documents have duplicate values ({exc})"
        ) from None
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return result


def _create_or_alter(db: sqlite3.Connection, name: str, spec: dict[str, Any]) -> None:
    tbl = table(name)
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {tbl} (tenant TEXT NOT NULL, id TEXT NOT NULL, "
        "version INTEGER NOT NULL, created_at TEXT NOT NULL, created_by TEXT NOT NULL, "
        "updated_at TEXT NOT NULL, updated_by TEXT NOT NULL, data TEXT NOT NULL, "
        "PRIMARY KEY (tenant, id))"
    )
    columns = {row[1] for row in db.execute(f"PRAGMA table_xinfo({tbl})")}
    for path in sorted(index_fields(spec)):
        col = column(path)
        if col not in columns:
            db.execute(
                f"ALTER TABLE {tbl} ADD COLUMN {col} GENERATED ALWAYS AS "
                f"(json_extract(data, '{json_path(path)}')) VIRTUAL"
            )
    wanted: dict[str, str] = {}
    for index in spec.get("indexes", ()):
        fields = list(index["fields"])
        unique = bool(index.get("unique", False))
        digest = hashlib.sha256(JSON([fields, unique]).encode()).hexdigest()[:16]
        cols = ", ".join(["tenant", *(column(f) for f in fields)])
        wanted[f"{tbl}_ix_{digest}"] = f"CREATE {'UNIQUE ' if unique else ''}INDEX {tbl}_ix_{digest} ON {tbl} ({cols})"
    existing = {
        r[0]
        for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND name LIKE ?",
            (tbl, f"{tbl}_ix_%"),
        )
    }
    for old in sorted(existing - set(wanted)):
        db.execute(f"DROP INDEX {old}")
    for new in sorted(set(wanted) - existing):
        db.execute(wanted[new])
