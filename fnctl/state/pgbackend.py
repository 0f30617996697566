"""The state store's PostgreSQL backend (the interface of fnctl.state.backends), imported only when a state
is on PostgreSQL: psycopg's import is not paid by commands on a SQLite state."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fnctl.state import pg, pgschema
from fnctl.state.location import StoreError
from fnctl.state.migrations import MIGRATIONS
from fnctl.state.pglocks import STATE_DEPLOY_LOCK, STATE_WRITE_LOCK


class Postgres:
    errors: tuple[type[Exception], ...] = (pg.DatabaseError,)
    is_postgres = True

    def __init__(self, connection: pg.Connection[tuple[Any, ...]], url: str) -> None:
        self._db = connection
        self._url = url
        # Statements whose answers nobody waits for (BEGIN and the write lock, `hold`'s writes), sent with the
        # next statement as one simple query: a write transaction then costs one round trip per read in it,
        # plus its COMMIT, plus two per COPY of `hold_rows` (the invocation audit's batch: 4, the head's read,
        # the COPY's start and its rows, the head marker with the COMMIT).
        self._held: list[tuple[str, tuple[Any, ...]]] = []
        self._begun = False  # a BEGIN is among them

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> pg.Cursor[tuple[Any, ...]]:
        if self._held:
            return self._send(sql, params)
        return self._live().execute(placeholders(sql), params)

    def insert(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        row = self.execute(sql + " RETURNING id", params).fetchone()
        return int(row[0]) if row else 0

    def hold(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        if self.in_transaction:
            self._held.append((sql, params))
        else:  # nothing would send it before the caller expects it done
            self.execute(sql, params)

    def hold_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """`rows` by COPY FROM STDIN, at once: the server's cheapest way in (measured, the invocation audit's
        600-row batches: ~7 µs of server CPU per row against ~13 for one INSERT of a JSON array through
        json_populate_recordset, and ~4 µs less in the writer). COPY cannot share a simple query with other
        statements, so it is not held: what is held goes first (nothing, after the chain head's read)."""
        if rows:
            self._flush()
            names = ", ".join(columns)
            with self._live().cursor().copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)

    def _flush(self) -> None:
        """Send the held statements now, if any (one round trip)."""
        if self._held:
            last = self._held.pop()
            self._send(*last)

    def _send(self, sql: str, params: tuple[Any, ...]) -> pg.Cursor[tuple[Any, ...]]:
        """The held statements and this one as one simple query (parameters bound on the client), positioned
        on this one's result. The held ones are gone whether it succeeds or not (a failure aborts the
        transaction: the caller rolls back)."""
        statements = [*self._held, (sql, params)]
        self._held.clear()
        self._begun = False
        cursor = pg.client_cursor(self._live())
        cursor.execute("; ".join(placeholders(s) for s, _ in statements), [p for _, ps in statements for p in ps])
        while cursor.nextset():
            pass
        return cursor

    def _live(self) -> pg.Connection[tuple[Any, ...]]:
        """The connection, opened again if the server dropped it (a restart, a failover, an idle timeout):
        the statement that met the broken connection failed; the next one gets a new connection. Never in
        the middle of a transaction: that died with its connection, and its statements with it."""
        if pg.is_broken(self._db):
            self._db.close()
            self._db = pg.connect(self._url)
        return self._db

    def begin(self) -> None:
        """Held: BEGIN and the lock go to the server with the transaction's first statement (a failure to take
        the lock fails that statement, inside the transaction, which the caller then rolls back)."""
        self._held[:] = [("BEGIN", ()), (f"SELECT pg_advisory_xact_lock({STATE_WRITE_LOCK})", ())]
        self._begun = True

    def rollback(self) -> None:
        begun, self._begun = self._begun, False
        self._held.clear()
        if not begun:  # a BEGIN still held never reached the server: nothing to roll back
            self._live().execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        return self._begun or pg.in_transaction(self._db)

    def data_version(self) -> int:
        row = self.execute("SELECT n FROM change_counter").fetchone()
        return int(row[0]) if row else 0

    def notify(self, channel: str) -> None:
        self.hold(f"NOTIFY {channel}")  # inside a transaction: sent with its COMMIT, delivered when it commits

    def close(self) -> None:
        self._db.close()


@functools.lru_cache(maxsize=1024)
def placeholders(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (and a literal `%`, as in LIKE '% requested', doubled). fnctl's SQL
    has no `?` inside string literals."""
    return sql.replace("%", "%%").replace("?", "%s")


def open_postgres(url: str, anchor: Path) -> Postgres:
    """The PostgreSQL database at `url`, its tables created and migrated as needed; the directory of its
    host-local files (`anchor`'s) created too."""
    try:
        anchor.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StoreError(f"cannot create the state's local directory {anchor.parent}: {exc.strerror or exc}") from None
    connection = pg.connect(url)
    try:
        pgschema.upgrade(connection, len(MIGRATIONS))
    except pg.DatabaseError as exc:
        connection.close()
        raise StoreError(f"cannot open the state store ({pg.target(url)}): {exc}") from None
    except BaseException:
        connection.close()
        raise
    return Postgres(connection, url)


@contextmanager
def advisory_lock(url: str, timeout: float | None) -> Iterator[bool]:
    """STATE_DEPLOY_LOCK on a connection of its own, for the block: one session in the whole database holds it, and
    the server releases it when that session ends, however its process died. Waits up to `timeout` seconds
    (None: tries once); yields whether it was taken."""
    connection = pg.connect(url)
    try:
        deadline = time.monotonic() + (timeout or 0.0)
        while not _try_lock(connection, url):
            if timeout is None or time.monotonic() >= deadline:
                yield False
                return
            time.sleep(0.05)
        yield True
    finally:
        connection.close()  # ends the session, and with it the lock


def _try_lock(connection: pg.Connection[tuple[Any, ...]], url: str) -> bool:
    try:
        row = connection.execute("SELECT pg_try_advisory_lock(%s)", (STATE_DEPLOY_LOCK,)).fetchone()
    except pg.DatabaseError as exc:
        raise StoreError(f"cannot take the state's lock ({pg.target(url)}): {exc}") from None
    return bool(row and row[0])
