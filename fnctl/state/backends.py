"""The two databases the state store runs on, behind one small interface the Store speaks (SQLite here,
PostgreSQL in fnctl.state.pgbackend, imported only for a PostgreSQL state).

Every query of fnctl.state is written once, in portable SQL with `?` placeholders; what differs between SQLite
and PostgreSQL is only here, in small functions: placeholder style, how a write transaction starts (SQLite's
`BEGIN IMMEDIATE` queues writers on the file; PostgreSQL's `BEGIN` plus one transaction-scoped advisory lock
does the same across every connection, on every host), how a new row's id comes back, the "did anything
change" counter, and how the schema is created and versioned.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from fnctl.state.location import StateLocation, StoreError
from fnctl.state.migrations import MIGRATIONS, upgrade


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


@contextmanager
def database_lock(location: StateLocation, timeout: float | None) -> Iterator[bool]:
    """The state's lock for mutating commands, across hosts, for the block: on PostgreSQL a session advisory
    lock (True when taken; waits up to `timeout` seconds, or tries once when None). On SQLite always True:
    the file lives on one host, whose flock (fnctl.deploy.lock) is the lock."""
    if location.url is None:
        yield True
        return
    # psycopg only for a state on PostgreSQL (see open_backend)
    from fnctl.state import pgbackend

    with pgbackend.advisory_lock(location.url, timeout) as got:
        yield got


def open_backend(location: StateLocation) -> Backend:
    if location.url is None:
        return open_sqlite(location.path)
    # psycopg only when the state is on PostgreSQL: importing it costs ~0.18 s of CPU (measured), which every
    # command on a SQLite state would otherwise pay
    from fnctl.state import pgbackend

    return pgbackend.open_postgres(location.url, location.path)
