"""The document store's connections to its two backends, and what differs between them.

The SQL above (`docstore`, `docwrites`, `docschema`, `outbox`) is written once, with `?` parameters, against
`DocConn`: a SQLite connection (`SqliteConn`, a `sqlite3.Connection` that names its dialect, so SQLite pays
nothing for the indirection) or a PostgreSQL one (`docpg.PgConn`, handed in: see `backends.PostgresOpener`). What
cannot be written once — filters and ordering, generated columns and indexes, migrations, how a write
transaction serialises, what a constraint error says — is the connection's `dialect`
(`docsql.SQLITE`, `docsqlpg.POSTGRES`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from fnctl.state.docrecords import Query

SCHEMA = "fnctl_data"  # the document store's PostgreSQL schema, beside the deployment state's tables
Head = tuple[int, str]  # the change log's last seq and its hash
CHANNEL = "fnctl_changes"  # PostgreSQL: every write transaction NOTIFYs it on commit (payload: its last seq)


class DocCursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class DocConn(Protocol):
    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> DocCursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def close(self) -> None: ...

    def held(self) -> contextlib.AbstractContextManager[Any]:
        """Inside, `hold`'s writes wait and go to the server with the next `execute` (a read, or COMMIT), as
        one request: on PostgreSQL a transaction's writes and its COMMIT are one round trip, and a constraint
        a held write broke is reported by that `execute`. Held writes not yet sent when the block ends are
        sent then. SQLite: nothing is held (it has no round trips)."""

    def hold(self, sql: str, parameters: Sequence[Any] = (), /) -> None:
        """A write whose answer is not needed (no rows, no rowcount): held inside `held`, else executed."""

    def hold_many(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None: ...


class Dialect(Protocol):
    """What differs between the backends (`docsql.SQLITE`, `docsqlpg.POSTGRES`)."""

    @property
    def name(self) -> str: ...

    @property
    def Error(self) -> type[Exception]:  # noqa: N802 (a class, as the drivers name it)
        """Every error of the backend's driver."""

    @property
    def IntegrityError(self) -> type[Exception]:  # noqa: N802
        """A constraint refused a write."""

    def begin_write(self, db: DocConn) -> Head | None:
        """Open a write transaction that serialises with every other writer of the store (the change log's
        sequence and hash chain are appended under it, so its order is the commit order). The change log's
        head when it was read in the same round trip (PostgreSQL), None when not (SQLite: no round trips)."""

    def find_sql(self, query: Query, indexed: frozenset[str], columns: str) -> tuple[str, list[Any]]:
        """The SELECT of `columns` for `query`: filter, keyset cursor, order and limit."""

    def migrate(self, db: DocConn) -> None: ...

    def create_or_alter(self, db: DocConn, name: str, spec: dict[str, Any]) -> None:
        """A collection's table, its indexed fields' generated columns and its indexes, as `spec` declares."""

    def unique_fields(self, indexed: dict[str, frozenset[str]], exc: Exception) -> tuple[str, str] | None:
        """(collection, fields) of the unique index that refused a write; None: another constraint."""

    def data_version(self, db: DocConn) -> int:
        """A number that moves when another connection committed a change since it was last read."""

    def announce(self, db: DocConn, last_seq: int) -> None:
        """In a write transaction that appended changes up to `last_seq`: tell the store's other readers on
        commit (PostgreSQL: NOTIFY, see docpg.ChangeFeed; SQLite: nothing, its readers see the file move)."""


class SqliteConn(sqlite3.Connection):
    """A SQLite connection of the document store (`sqlite3.connect(..., factory=SqliteConn)`)."""

    dialect: Dialect

    def held(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def hold(self, sql: str, parameters: Sequence[Any] = (), /) -> None:
        self.execute(sql, parameters)

    def hold_many(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        self.executemany(sql, parameters)


class Feed(Protocol):
    """What other connections committed, as a number that moves (`docpg.ChangeFeed` on PostgreSQL)."""

    def version(self) -> int: ...

    def close(self) -> None: ...
