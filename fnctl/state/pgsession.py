"""What several gateways on one PostgreSQL state hold on connections of their own: the leader's session lock
(`AdvisoryLeaderLock`: a session advisory lock, which the server releases when the session ends, however its process
died) and a LISTEN for the routing table's changes (`NotifyListener`). Reached through the state's PostgreSQL opener
(`backends.PostgresOpener`), never imported by a SQLite path."""

from __future__ import annotations

import time
from typing import Any

from fnctl.state import pg
from fnctl.state.location import StoreError
from fnctl.state.pglocks import LEADER_LOCK


class AdvisoryLeaderLock:
    """The controller's lock on a connection of its own. `try_take` and `held` never raise: a database that
    cannot be reached means the lock is not (or no longer) held."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: pg.Connection[tuple[Any, ...]] | None = None
        self._held = False

    def try_take(self) -> bool:
        try:
            if self._conn is None or pg.is_broken(self._conn):
                self._drop()
                self._conn = pg.connect(self._url)
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
        except (pg.DatabaseError, StoreError):
            self._drop()
            return False
        self._held = bool(row and row[0])
        return self._held

    def held(self) -> bool:
        """Whether the lock is still ours, without a round trip: the server releases it only with the session,
        and a session it ended (a restart, pg_terminate_backend) or whose socket closed shows on the connection
        at once -- what arrived on its socket is read without waiting, so this may run on the event loop."""
        if not self._held or self._conn is None:
            return False
        try:
            pg.drain_notifies(self._conn)  # reads the socket; raises when the session is gone
            alive = pg.session_alive(self._conn)
        except pg.DatabaseError:
            alive = False
        if not alive:
            self._drop()
        return self._held

    def release(self) -> None:
        self._drop()  # ending the session releases the lock

    def _drop(self) -> None:
        self._held = False
        pg.close_quietly(self._conn)
        self._conn = None


class NotifyListener:
    """Notifications on `channel` (LISTEN), waited for on a connection of its own, from one thread."""

    def __init__(self, url: str, channel: str) -> None:
        self._url, self._channel = url, channel
        self._conn: pg.Connection[tuple[Any, ...]] | None = None

    def wait(self, timeout: float) -> bool:
        """True when a notification came within `timeout` seconds, or the connection was lost or opened again
        (what was missed meanwhile is unknown: look). Never raises; a database that cannot be reached is waited
        on for `timeout` before the next try."""
        try:
            if self._conn is None:
                self._conn = pg.listen(self._url, self._channel)
                return True
            return any(True for _ in self._conn.notifies(timeout=timeout, stop_after=1))
        except (pg.DatabaseError, StoreError):
            self.close()
            time.sleep(timeout)
            return True

    def close(self) -> None:
        pg.close_quietly(self._conn)
        self._conn = None
