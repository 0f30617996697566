"""The state store: SQLite in WAL mode or a PostgreSQL database behind one `connect()`, with versioned migrations.

It holds revisions (immutable but for their status; their records are fnctl.state.revisions'), the routing
table, instances and the append-only, hash-chained audit log; rollouts and their events are
fnctl.state.rolloutstore's. SQL is written once, portable, with `?` placeholders; what differs between the
two databases is fnctl.state.backends'. Secret values never reach it: specs carry an HMAC fingerprint keyed
by a host-local key that is not in the store (fnctl.deploy.secrets).
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fnctl.state import auditchain
from fnctl.state.backends import Backend, open_backend
from fnctl.state.location import StateLocation
from fnctl.state.location import StoreError as StoreError  # re-exported: where callers have always found it
from fnctl.state.revisions import InstanceRow, InstanceState, Revision, RevisionStatus, revision_from_row

ROUTES_CHANNEL = "fnctl_routes"  # PostgreSQL: NOTIFYed with every change of a route (gateway.table listens)


class Store:
    """Typed access to the state; each method is one short transaction."""

    def __init__(self, connection: Backend, location: StateLocation) -> None:
        self._db = connection
        self.location = location
        self.path = location.path  # the SQLite file, or on PostgreSQL the host-local anchor (lock, key stamp)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several writes that land together or not at all (writers queue, one at a time, never deadlock)."""
        try:
            self._db.begin()
        except self._db.errors as exc:  # a busy SQLite file past its timeout, a PostgreSQL server gone
            raise StoreError(f"state store write failed: {exc}") from None
        try:
            yield
            self._execute("COMMIT")  # on PostgreSQL it carries the held writes (`Backend.hold`): they may fail
        except BaseException:
            if self._db.in_transaction:
                self._rollback()
            raise

    def _rollback(self) -> None:
        try:
            self._db.rollback()
        except self._db.errors:
            pass  # the connection is gone, and the transaction with it: the original error is what matters

    def setting(self, key: str, default: str) -> str:
        """A store-wide value, created with `default` the first time it is asked for."""
        row = self._one("SELECT value FROM settings WHERE key = ?", (key,))
        if row is None:  # written once: read-only commands then never wait for a writer's transaction
            self._execute("INSERT INTO settings VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, default))
            row = self._one("SELECT value FROM settings WHERE key = ?", (key,))
        return str(row[0]) if row else default

    @functools.cached_property
    def id(self) -> str:
        """This store's random identity, carried by every container it deploys (label io.fnctl.store), so
        that two stores deploying the same project to one engine never take each other's containers for
        orphans."""
        return self.setting("store-id", secrets.token_hex(8))

    # ---- SQL: the one primitive of this package's modules (metricstore, keystore, rolloutstore, ...) ----

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read in portable SQL (`?` placeholders). Only modules of fnctl.state call it: code elsewhere
        speaks through their named functions, so that another backend needs to implement only this package
        (tests/state/test_sql_boundary.py keeps SQL out of the rest of fnctl)."""
        try:
            return [tuple(r) for r in self._db.execute(sql, params)]
        except self._db.errors as exc:
            raise StoreError(f"state store query failed: {exc}") from None

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        """The first row of a read, or None."""
        rows = self._query(sql, params)
        return rows[0] if rows else None

    def _stream(self, sql: str, failure: str) -> Iterator[tuple[Any, ...]]:
        """Rows of a read one at a time (a whole audit chain need not fit in memory); a failure is a StoreError
        that starts with `failure`. Only modules of fnctl.state call it."""
        try:
            yield from self._db.execute(sql)
        except self._db.errors as exc:
            raise StoreError(f"{failure}: {exc}") from None

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """One write in portable SQL; returns the number of rows changed. Only modules of fnctl.state call it."""
        try:
            return self._db.execute(sql, params).rowcount
        except self._db.errors as exc:
            raise StoreError(f"state store write failed: {exc}") from None

    def _insert(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """One INSERT in portable SQL; returns the new row's id. Only modules of fnctl.state call it."""
        try:
            return self._db.insert(sql, params)
        except self._db.errors as exc:
            raise StoreError(f"state store write failed: {exc}") from None

    def raw(self) -> RawSql:
        """Direct SQL on this store's own connection (inside its transactions), for tests that set up, inspect
        or tamper with tables. fnctl's code never uses it."""
        return RawSql(self)

    # ---- settings: store-wide values by key ----

    def read_setting(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM settings WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def write_setting(self, key: str, value: str) -> None:
        self._execute(
            "INSERT INTO settings VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value)
        )

    # ---- change checks ----

    def data_version(self) -> int:
        """A number that moves when the state a gateway follows may have changed since this connection last
        asked: one cheap read that tells a poller whether to read anything else. Compare it for equality only.
        SQLite: `PRAGMA data_version`, moved by any other connection's commit. PostgreSQL: a counter that
        triggers move on changes of the routing table's sources (routes, revisions, resources, the audit),
        rollouts and keys -- not on the gateways' own traffic (audit heads, heartbeats, instances, cron
        ticks: fnctl.state.pgschema step 9) -- and by this connection's own commits too."""
        try:
            return self._db.data_version()
        except self._db.errors as exc:
            raise StoreError(f"state store query failed: {exc}") from None

    def audit_mark(self) -> int:
        """The id of the latest audit record (0 when none): every state change is audited in its own
        transaction, so this marks how new the state is (fnctl.deploy.pickup, fnctl.gitops.deploys)."""
        return int(self._query("SELECT COALESCE(MAX(id), 0) FROM audit")[0][0])

    def beat(self, name: str) -> None:
        """Record that a long-running process (`fnctl serve`) is alive now."""
        self.write_setting(f"heartbeat:{name}", repr(time.time()))

    def alive(self, name: str, within: float) -> bool:
        """Whether `name` beat within the last `within` seconds."""
        row = self._one("SELECT value FROM settings WHERE key = ?", (f"heartbeat:{name}",))
        return row is not None and time.time() - float(row[0]) < within

    # ---- triggers, views, policies: published by apply, read by the gateway ----

    def set_resources(self, kind: str, specs: dict[str, dict[str, Any]]) -> None:
        """Replace every resource of `kind` (Trigger, View, Policy) with `specs` (name → spec)."""
        self._execute("DELETE FROM resources WHERE kind = ?", (kind,))
        now = time.time()
        for name, spec in sorted(specs.items()):
            self._execute(
                "INSERT INTO resources VALUES (?, ?, ?, ?)", (kind, name, json.dumps(spec, sort_keys=True), now)
            )
        self._notify_routes()  # Triggers, Views and Policies are part of the routing table

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {
            r[0]: json.loads(r[1])
            for r in self._query("SELECT name, spec FROM resources WHERE kind = ? ORDER BY name", (kind,))
        }

    # ---- revisions ----

    def next_revision_number(self, function: str) -> int:
        row = self._one("SELECT MAX(number) FROM revisions WHERE function = ?", (function,))
        return int(row[0] or 0) + 1 if row else 1

    def add_revision(self, revision: Revision) -> None:
        self._execute(
            "INSERT INTO revisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                revision.function,
                revision.number,
                revision.spec_hash,
                json.dumps(revision.spec, sort_keys=True),
                revision.image,
                revision.git_commit,
                revision.git_author,
                revision.created_at,
                revision.created_by,
                revision.status.value,
                revision.reason,
                revision.git_subject,
            ),
        )

    def set_revision_status(self, function: str, number: int, status: RevisionStatus, reason: str | None) -> None:
        self._execute(
            "UPDATE revisions SET status = ?, reason = ? WHERE function = ? AND number = ?",
            (status.value, reason, function, number),
        )
        self._notify_routes()  # a revision becoming invocable (or not) changes the table

    def set_revision_image(self, function: str, number: int, image: str) -> None:
        self._execute(
            "UPDATE revisions SET image = ? WHERE function = ? AND number = ? AND image = ''", (image, function, number)
        )

    def revisions(self, function: str | None = None) -> list[Revision]:
        query = "SELECT * FROM revisions" + (" WHERE function = ?" if function else "") + " ORDER BY function, number"
        return [revision_from_row(r) for r in self._query(query, (function,) if function else ())]

    def revision_statuses(self) -> dict[tuple[str, int], RevisionStatus]:
        """(function, number) → status of every revision, without the specs (the gateway reads each spec once)."""
        return {
            (str(f), int(n)): RevisionStatus(status)
            for f, n, status in self._query("SELECT function, number, status FROM revisions")
        }

    def revision(self, function: str, number: int) -> Revision | None:
        row = self._one("SELECT * FROM revisions WHERE function = ? AND number = ?", (function, number))
        return revision_from_row(row) if row else None

    # ---- routing ----

    def routes(self) -> dict[str, dict[int, int]]:
        """function → {revision number: weight percent}."""
        return {
            r[0]: {int(k): int(v) for k, v in json.loads(r[1]).items()}
            for r in self._query("SELECT function, weights FROM routes ORDER BY function")
        }

    def set_route(self, function: str, weights: dict[int, int]) -> None:
        """One atomic change of a function's weights."""
        if sum(weights.values()) != 100 and weights:
            raise StoreError(f"weights of {function} must sum to 100, not {sum(weights.values())}")
        self._execute(
            "INSERT INTO routes VALUES (?, ?, ?) ON CONFLICT (function) DO UPDATE SET weights = excluded.weights, "
            "updated_at = excluded.updated_at",
            (function, json.dumps({str(k): v for k, v in sorted(weights.items())}), time.time()),
        )
        self._notify_routes()

    def delete_route(self, function: str) -> None:
        self._execute("DELETE FROM routes WHERE function = ?", (function,))
        self._notify_routes()

    def _notify_routes(self) -> None:
        """Gateways on a PostgreSQL state re-read their routing table now rather than at their next poll."""
        try:
            self._db.notify(ROUTES_CHANNEL)
        except self._db.errors as exc:
            raise StoreError(f"state store write failed: {exc}") from None

    # ---- instances ----

    def add_instance(self, row: InstanceRow) -> None:
        self._execute(
            "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.function, row.revision, row.container_id, row.socket_dir, row.state.value, row.created_at),
        )

    def update_instance(self, instance_id: str, *, state: InstanceState, container_id: str | None = None) -> None:
        self._execute(
            "UPDATE instances SET state = ?, container_id = COALESCE(?, container_id) WHERE id = ?",
            (state.value, container_id, instance_id),
        )

    def remove_instance(self, instance_id: str) -> None:
        self._execute("DELETE FROM instances WHERE id = ?", (instance_id,))

    def instances(self, function: str | None = None) -> list[InstanceRow]:
        query = "SELECT * FROM instances" + (" WHERE function = ?" if function else "") + " ORDER BY created_at, id"
        return [
            InstanceRow(r[0], r[1], int(r[2]), r[3], r[4], InstanceState(r[5]), float(r[6]))
            for r in self._query(query, (function,) if function else ())
        ]

    # ---- audit ----

    def audit(
        self,
        *,
        actor: str,
        command: str,
        action: str,
        target: str,
        outcome: str,
        git_commit: str | None = None,
        git_author: str | None = None,
        git_subject: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Append a record to the deploy audit's hash chain (never a secret in any field)."""
        with self._writing():
            self.append_chained(
                "audit",
                [(time.time(), actor, command, action, target, git_commit, outcome, detail, git_author, git_subject)],
            )

    def append_chained(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        """Append `rows` (a chained table's fields after the id, in auditchain.CHAINS order) to `table`'s
        chain, with the next ids, and move its head marker. Call inside a write transaction: reading the head
        and appending must not interleave with another writer's."""
        try:
            self._append_chained(table, rows)
        except self._db.errors as exc:
            raise StoreError(f"state store write failed: {exc}") from None

    def _append_chained(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        fields = auditchain.CHAINS[table]
        head = self._db.execute(f"SELECT id, hash FROM {table} ORDER BY id DESC LIMIT 1").fetchone()
        last, prev = (int(head[0]), str(head[1])) if head else (0, auditchain.GENESIS)
        linked = auditchain.link(
            table, (auditchain.normalise(table, (last + n, *row)) for n, row in enumerate(rows, 1)), prev
        )
        self._db.hold_rows(table, (*(name for name, _ in fields), "prev_hash", "hash"), linked)
        if linked:
            self._db.hold(
                "INSERT INTO settings VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (auditchain.head_setting(table), f"{linked[-1][0]} {linked[-1][-1]}"),
            )

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The caller's transaction, or one of its own when there is none."""
        if self._db.in_transaction:
            yield
        else:
            with self.transaction():
                yield


class RawSql:
    """SQL straight onto a store's connection, for tests (`store.raw().query(...)`): they set up states fnctl
    never writes itself, read columns no method returns, and tamper with records to check they are caught."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._store._query(sql, params)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return self._store._execute(sql, params)


def exists(location: StateLocation) -> bool:
    """Whether the store was ever created: its SQLite file exists. A PostgreSQL database is taken to exist
    (connecting says so when it does not): its tables are created on the first connection."""
    return location.is_postgres or location.path.exists()


def connect(location: StateLocation | Path) -> Store:
    """Open (creating and migrating as needed) the store at `location` (a bare path is a SQLite file)."""
    if isinstance(location, Path):
        location = StateLocation(location)
    return Store(open_backend(location), location)
