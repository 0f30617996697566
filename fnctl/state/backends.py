"""The two databases the state store runs on, behind one small interface the Store speaks (SQLite here,
PostgreSQL in fnctl.state.pgbackend, handed in through `install_postgres`).

Every query of fnctl.state is written once, in portable SQL with `?` placeholders; what differs between SQLite
and PostgreSQL is only here, in small functions: placeholder style, how a write transaction starts (SQLite's
`BEGIN IMMEDIATE` queues writers on the file; PostgreSQL's `BEGIN` plus one transaction-scoped advisory lock
does the same across every connection, on every host), how a new row's id comes back, the "did anything
change" counter, and how the schema is created and versioned.

PostgreSQL is handed in, never imported here: psycopg's import costs ~0.18 s of CPU (measured), which every
command on a SQLite state would otherwise pay. The state package keeps a slot for a `PostgresOpener`
(`fnctl.state.pgopener.OPENER` is the whole one): the CLI installs a stand-in that imports it the first time a
PostgreSQL location is opened; `fnctl serve`, the audit writer process and the tests install it whole. A
PostgreSQL location opened with nothing installed is a StoreError saying so.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from fnctl.state.docconn import DocConn, Feed
from fnctl.state.location import StateLocation, StoreError, redact
from fnctl.state.migrations import MIGRATIONS, upgrade, use_wal

_CHUNK = 50  # rows per INSERT on SQLite (its limit on a statement's parameters is far above 50 x 13)


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

    def hold(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """A write whose answer is not needed, inside a transaction: SQLite runs it now; PostgreSQL sends it
        with the next statement, in the same round trip (at the latest with the COMMIT, which then reports
        its failure)."""
        ...

    def hold_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """`rows` (values of `columns`, in order) appended to `table` inside the transaction: SQLite runs it now;
        PostgreSQL sends it now by COPY (with what was held before it), the rows' own round trips."""
        ...

    def begin(self) -> None: ...

    def rollback(self) -> None: ...

    @property
    def in_transaction(self) -> bool: ...

    def data_version(self) -> int: ...

    def notify(self, channel: str) -> None:
        """Tell the state's listeners on `channel`, on commit (PostgreSQL's NOTIFY; SQLite: nothing, its
        readers see the file move)."""
        ...

    def close(self) -> None: ...


class LeaderLock(Protocol):
    """The controller's lock of a state on PostgreSQL, on a session of its own (`pgsession.AdvisoryLeaderLock`)."""

    def try_take(self) -> bool: ...

    def held(self) -> bool: ...

    def release(self) -> None: ...


class Listener(Protocol):
    """A LISTEN on a connection of its own (`pgsession.NotifyListener`)."""

    def wait(self, timeout: float) -> bool: ...

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

    def hold(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self._db.execute(sql, params)  # no round trip to save

    def hold_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        names, marks = ", ".join(columns), "(" + ", ".join("?" * len(columns)) + ")"
        for start in range(0, len(rows), _CHUNK):  # multi-row VALUES: one statement per chunk, not per row
            chunk = rows[start : start + _CHUNK]
            self._db.execute(
                f"INSERT INTO {table} ({names}) VALUES " + ", ".join([marks] * len(chunk)),
                tuple(itertools.chain.from_iterable(chunk)),
            )

    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")  # writers queue on the file's lock, never deadlock

    def rollback(self) -> None:
        self._db.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def notify(self, channel: str) -> None:
        pass

    def close(self) -> None:
        self._db.close()


def open_sqlite(path: Path) -> Sqlite:
    """The SQLite file at `path`, created and migrated as needed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        use_wal(connection)
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


class PostgresOpener(Protocol):
    """What the state package needs from PostgreSQL (`fnctl.state.pgopener.OPENER`), handed in."""

    def open_state(self, url: str, anchor: Path) -> Backend:
        """The deployment state's database at `url`, migrated (`anchor`: its host-local directory)."""
        ...

    def deploy_lock(self, url: str, timeout: float | None) -> AbstractContextManager[bool]:
        """The mutating commands' lock, across hosts (see `database_lock`)."""
        ...

    def open_documents(self, url: str) -> DocConn:
        """A connection to the document store in `url`'s database, its schema created and migrated."""
        ...

    def documents_exist(self, url: str) -> bool:
        """Whether the document store's schema was ever created in `url`'s database."""
        ...

    def change_feed(self, url: str) -> Feed:
        """What other connections commit to the document store in `url`'s database (LISTEN/NOTIFY)."""
        ...

    def leader_lock(self, url: str) -> LeaderLock:
        """The controller's lock (rollouts, cron, onCommit delivery) of the state in `url`'s database."""
        ...

    def listen(self, url: str, channel: str) -> Listener:
        """Notifications on `channel` of `url`'s database."""
        ...


_postgres: list[PostgresOpener] = []


def install_postgres(opener: PostgresOpener) -> None:
    """Open PostgreSQL locations with `opener` from now on in this process (the last one installed wins)."""
    _postgres[:] = [opener]


def postgres(url: str) -> PostgresOpener:
    """The installed opener, for the database at `url`; a StoreError when the program installed none."""
    if not _postgres:
        raise StoreError(
            f"cannot open the PostgreSQL state {redact(url)}: this program has no PostgreSQL support installed "
            "(internal: fnctl.state.backends.install_postgres(fnctl.state.pgopener.OPENER))"
        )
    return _postgres[0]


@contextmanager
def database_lock(location: StateLocation, timeout: float | None) -> Iterator[bool]:
    """The state's lock for mutating commands, across hosts, for the block: on PostgreSQL a session advisory
    lock (True when taken; waits up to `timeout` seconds, or tries once when None). On SQLite always True:
    the file lives on one host, whose flock (fnctl.deploy.lock) is the lock."""
    if location.url is None:
        yield True
        return
    with postgres(location.url).deploy_lock(location.url, timeout) as got:
        yield got


def open_backend(location: StateLocation) -> Backend:
    if location.url is None:
        return open_sqlite(location.path)
    return postgres(location.url).open_state(location.url, location.path)


class ChangeWatch:
    """Whether a SQLite state file changed, asked on the event loop without a worker-thread hop.

    A gateway's background loops (the routing table's poll, the leader's rollout passes) used to hop to a worker
    thread every fraction of a second just to learn that nothing had changed. `PRAGMA data_version` on a
    connection of the watch's own answers that in ~8 us (measured here): its value moves exactly when another
    connection committed since this one last read it (it is per connection: its own commits do not move it, and
    the watch never writes). A read-only connection with no busy wait, so the event loop never blocks on it: when
    SQLite cannot answer at once, the answer is "maybe changed", and the caller reads in its worker thread as it
    did before.

    `moved()`: whether the file changed since the last call (True the first time, and whenever unsure)."""

    def __init__(self, location: StateLocation) -> None:
        self._path = location.path
        self._db: sqlite3.Connection | None = None
        self._version: int | None = None
        self._mutex = threading.Lock()  # the loop asks, a worker thread may absorb its own reader's commits

    def moved(self) -> bool:
        with self._mutex:
            try:
                if self._db is None:
                    uri = f"{self._path.absolute().as_uri()}?mode=ro"  # percent-encoded: any file name
                    self._db = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False)
                version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:  # busy, or the file not there yet: unsure, so read
                self._drop()
                return True
            moved, self._version = version != self._version, version
            return moved

    def close(self) -> None:
        with self._mutex:
            self._drop()

    def _drop(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db, self._version = None, None


def watch(location: StateLocation) -> ChangeWatch | None:
    """A watch over a SQLite state; None on PostgreSQL (its changes come by LISTEN/NOTIFY)."""
    return None if location.is_postgres else ChangeWatch(location)
