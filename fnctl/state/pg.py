"""The boundary with PostgreSQL (psycopg 3): the only module that imports psycopg.

It opens connections (autocommit: a transaction is always an explicit BEGIN … COMMIT, as on SQLite) and
names the error classes the rest of fnctl.state catches. A connection failure is a StoreError naming the
host or socket and the database, never the password.
"""

from __future__ import annotations

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict

from fnctl.state.location import BadStoreUrl, StoreError, is_postgres_url, redact

__all__ = [
    "Connection",
    "Cursor",
    "DatabaseError",
    "IntegrityError",
    "OperationalError",
    "UniqueViolation",
    "client_cursor",
    "close_quietly",
    "connect",
    "drain_notifies",
    "in_transaction",
    "is_broken",
    "is_postgres_url",
    "listen",
    "target",
]

Connection = psycopg.Connection
Cursor = psycopg.Cursor
DatabaseError = psycopg.Error  # every error psycopg raises
OperationalError = psycopg.OperationalError  # the server went away, or could not be reached
IntegrityError = psycopg.IntegrityError
UniqueViolation = psycopg.errors.UniqueViolation

CONNECT_TIMEOUT = 10  # seconds: a server that does not answer is reported, not waited on forever


def target(url: str) -> str:
    """Where `url` points, for messages: `database D on socket S` / `database D at host:port`."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return redact(url)
    host = str(params.get("host") or "")
    where = f"socket {host}" if host.startswith("/") or not host else f"{host}:{params.get('port') or 5432}"
    if not host:
        where = "the default socket"
    name = params.get("dbname") or params.get("user")  # neither: libpq's default, the OS user's name
    return f"database {name} on {where}" if name else f"the default database on {where}"


def connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """A new autocommit connection to `url`, or a StoreError saying where it could not connect and why."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        # libpq's message names the socket or host and the reason; a malformed URL may be quoted in it, so
        # the password is scrubbed all the same
        reason = redact(" ".join(str(exc).split())) or type(exc).__name__
        password = _password(url)
        if password:
            reason = reason.replace(password, "***")
        if isinstance(exc, psycopg.ProgrammingError):  # libpq could not parse the URL: bad input, not an outage
            raise BadStoreUrl(f"invalid PostgreSQL URL {redact(url)}: {reason}") from None
        raise StoreError(f"cannot connect to PostgreSQL ({target(url)}): {reason}") from None


def listen(url: str, channel: str) -> psycopg.Connection[tuple[object, ...]]:
    """A new connection to `url` that LISTENs on `channel` (closed again when the LISTEN fails)."""
    connection = connect(url)
    try:
        connection.execute(f"LISTEN {channel}")
    except psycopg.Error:
        connection.close()
        raise
    return connection


def close_quietly(connection: psycopg.Connection[tuple[object, ...]] | None) -> None:
    """Close `connection` (if any); one already lost may fail to close, which changes nothing."""
    if connection is not None:
        try:
            connection.close()
        except psycopg.Error:
            pass


def _password(url: str) -> str:
    try:
        return str(conninfo_to_dict(url).get("password") or "")
    except psycopg.Error:
        return ""


def client_cursor(connection: psycopg.Connection[tuple[object, ...]]) -> psycopg.ClientCursor[tuple[object, ...]]:
    """A cursor that binds parameters on the client (quoted by libpq's rules), so that several statements with
    parameters go to the server as one simple query: one round trip for all of them."""
    return psycopg.ClientCursor(connection)


def drain_notifies(connection: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """The payloads of the notifications (LISTEN) that reached `connection` since the last call: what its socket
    holds, read without waiting and without a round trip. OperationalError when the connection is lost."""
    raw = connection.pgconn
    raw.consume_input()
    payloads = []
    while (notify := raw.notifies()) is not None:
        payloads.append(notify.extra.decode())
    return payloads


def session_alive(connection: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Whether the server has not ended `connection`'s session, as far as what its socket already received says
    (`drain_notifies` reads it): a FATAL message or the socket's end mark it lost."""
    return not connection.closed and connection.pgconn.status == psycopg.pq.ConnStatus.OK


def in_transaction(connection: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Whether `connection` is inside a transaction (an explicit BEGIN not yet committed or rolled back)."""
    return connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


def is_broken(connection: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Whether the server dropped `connection` (psycopg marks it when a statement meets the loss)."""
    return connection.broken or connection.closed
