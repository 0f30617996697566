"""The two databases the state store runs on, behind one small interface the Store speaks.

Every query of fnctl.state is written once, in portable SQL with `?` placeholders; what differs between SQLite
and PostgreSQL is only here, in small functions: placeholder style, how a write transaction starts (SQLite's
`BEGIN IMMEDIATE` queues writers on the file; PostgreSQL's `BEGIN` plus one transaction-scoped advisory lock
does the same across every connection, on every host), how a new row's id comes back, the "did anything
change" counter, and how the schema is created and versioned.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from fnctl.state import pg, pgschema
from fnctl.state.location import StateLocation, StoreError
from fnctl.state.migrations import MIGRATIONS, upgrade

# The key of the advisory lock every PostgreSQL write transaction of the state takes (b"fnctl" as a number):
# transactions that write the state run one at a time, as they do on SQLite, so a read-then-write (an audit
# chain's head, the next revision number) never interleaves with another writer's.
WRITE_LOCK = 0x666E63746C


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Backend(Protocol):
    """A connection to the state's database, speaking fnctl.state's portable SQL."""

    errors: tuple[type[Exception], ...]  # what a failed statement raises
    is_postgres: bool

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Cursor: ...

    def insert(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Run an INSERT into a table with an `id` key; the new row's id."""
        ...

    def begin(self) -> None: ...

    @property
    def in_transaction(self) -> bool: ...

    def data_version(self) -> int: ...

    def close(self) -> None: ...


class Sqlite:
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    is_postgres = False

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Cursor:
        return self._db.execute(sql, params)

    def insert(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return int(self._db.execute(sql, params).lastrowid or 0)

    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")  # writers queue on the file's lock, never deadlock

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class Postgres:
    errors: tuple[type[Exception], ...] = (pg.DatabaseError,)
    is_postgres = True

    def __init__(self, connection: pg.Connection[tuple[Any, ...]], url: str) -> None:
        self._db = connection
        self._url = url

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Cursor:
        return self._live().execute(placeholders(sql), params)

    def insert(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        row = self._live().execute(placeholders(sql) + " RETURNING id", params).fetchone()
        return int(row[0]) if row else 0

    def _live(self) -> pg.Connection[tuple[Any, ...]]:
        """The connection, opened again if the server dropped it (a restart, a failover, an idle timeout):
        the statement that met the broken connection failed; the next one gets a new connection. Never in
        the middle of a transaction: that died with its connection, and its statements with it."""
        if pg.is_broken(self._db):
            self._db.close()
            self._db = pg.connect(self._url)
        return self._db

    def begin(self) -> None:
        self._live().execute("BEGIN")
        try:
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    @property
    def in_transaction(self) -> bool:
        return pg.in_transaction(self._db)

    def data_version(self) -> int:
        row = self._live().execute("SELECT n FROM change_counter").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._db.close()


@functools.lru_cache(maxsize=1024)
def placeholders(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (and a literal `%`, as in LIKE '% requested', doubled). fnctl's SQL
    has no `?` inside string literals."""
    return sql.replace("%", "%%").replace("?", "%s")


def open_sqlite(path: Path) -> Sqlite:
    """The SQLite file at `path`, created and migrated as needed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StoreError(
                f"the state store has schema version {version}, newer than this fnctl knows "
                f"({len(MIGRATIONS)}); upgrade fnctl"
            )
        upgrade(connection, version)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the state store {path}: {exc}") from None
    except OSError as exc:
        raise StoreError(f"cannot create the state store {path}: {exc.strerror or exc}") from None
    return Sqlite(connection)


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


def open_backend(location: StateLocation) -> Backend:
    return open_postgres(location.url, location.path) if location.url is not None else open_sqlite(location.path)
