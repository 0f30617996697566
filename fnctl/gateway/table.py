"""The gateway's routing table, kept current: `StoreTable` reads it from the store when the store changed,
and `TableFollower` re-reads it every fraction of a second and has the instance pools follow a change of the
routes, so that `fnctl apply`, `rollback` and rollouts take effect without a restart. On a PostgreSQL state
the follower also LISTENs for the routes' notifications (`Store.set_route`'s NOTIFY) and re-reads at once;
the polling stays as the fallback, once a second. When the store cannot be read the gateway keeps routing by the table it
has, and says so: in its log, once, and in /readyz (`unreachable`) until a read succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from fnctl.deploy.pickup import GATEWAY_HEARTBEAT, change_mark, record_loaded
from fnctl.gateway import router
from fnctl.state.backends import Listener, postgres, watch
from fnctl.state.location import StateLocation
from fnctl.state.revisions import RevisionStatus
from fnctl.state.store import ROUTES_CHANNEL, Store, connect

log = logging.getLogger("fnctl.gateway")
INVOCABLE = (RevisionStatus.READY, RevisionStatus.PENDING, RevisionStatus.PREVIEW)
# Reads the store (in a worker thread): a new table, or None when nothing changed since the last call.
TableSource = Callable[[], "router.Table | None"]
# Seconds between the fallback polls of a follower whose LISTEN works: the notifications carry the changes, the
# poll only bounds how late one that came without a notification is seen.
LISTENING_POLL = 1.0


class Reconciler(Protocol):
    def reconcile(self, routes: Mapping[str, Mapping[int, int]]) -> Awaitable[None]: ...


class StoreTable:
    """The gateway's table source: re-reads routes, revisions, Triggers and Policies when the store changed
    (SQLite's data_version: one cheap query when nothing did). Called from one worker thread at a time."""

    def __init__(self, store_path: StateLocation) -> None:
        self._path = store_path
        url = store_path.url
        # PostgreSQL: the routes' notifications, waited for by the follower between its polls
        self.listener: Listener | None = None if url is None else postgres(url).listen(url, ROUTES_CHANNEL)
        self.watch = watch(store_path)  # SQLite: whether the file moved, asked on the event loop (`due`)
        self._store: Store | None = None
        self._version: int | None = None
        self._specs: dict[tuple[str, int], dict[str, Any]] = {}  # revisions are immutable: read each once
        self._beat = 0.0
        self._mark: int | None = None  # the change mark of the last table returned
        self._confirmed: int | None = None  # the mark last recorded as routed by

    def __call__(self) -> router.Table | None:
        if self._store is None:
            self._store = connect(self._path)
        store = self._store
        if time.monotonic() - self._beat >= 1.0:
            # Tells `fnctl apply` a gateway is routing, so it gives us time to see a switch before draining.
            store.beat(GATEWAY_HEARTBEAT)
            self._beat = time.monotonic()
        if self.watch is not None:  # absorbs our beat: what commits after this moves it, what before is read now
            self.watch.moved()
        version = store.data_version()
        if version == self._version:
            return None
        mark = change_mark(store)  # read first: the table read next includes at least every change up to it
        routes = store.routes()
        specs = {}
        for key, status in store.revision_statuses().items():
            if key[0] in routes and status in INVOCABLE:
                if key not in self._specs:
                    revision = store.revision(*key)
                    self._specs[key] = revision.spec if revision else {}
                specs[key] = self._specs[key]
        table = router.build_table(
            routes, specs, store.resources("Trigger"), store.resources("Policy"), store.resources("View")
        )
        self._version = version  # only once all of it was read: a failed read is retried next time
        self._mark = mark
        return table

    def due(self) -> bool:
        """On the event loop: whether a read is worth a worker-thread hop -- the first one, the heartbeat due,
        or another connection committed since the last read (without a watch: always)."""
        if self.watch is None or self._version is None or time.monotonic() - self._beat >= 1.0:
            return True
        return self.watch.moved()

    def confirm(self) -> None:
        """The last table returned is the one routed by now: tell the commands waiting for it
        (`fnctl.deploy.pickup`). Written only when the mark moved: the metrics flusher's commits alone make the
        table be re-read every interval."""
        if self._store is not None and self._mark is not None and self._mark != self._confirmed:
            record_loaded(self._store, self._mark)
            self._confirmed = self._mark

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.watch is not None:
            self.watch.close()
        if self._store is not None:
            self._store.close()
            self._store = None


class TableFollower:
    """The current table, re-read every `interval` seconds; one pool reconcile at a time (it may start
    containers), run once more afterwards when the routes changed meanwhile."""

    def __init__(self, source: TableSource, pool: Reconciler, interval: float) -> None:
        self.source, self.pool, self.interval = source, pool, interval
        self.table: router.Table | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._reconciling: asyncio.Task[None] | None = None
        self._again = False
        self.on_change: list[Callable[[], None]] = []  # called after each change of the store (the dashboard)
        self.unreachable: str | None = None  # why the last read of the store failed, and since when; None: it worked

    def subscribe(self) -> Callable[[], bool] | None:
        """For a loop that reads the store itself (the leader's rollouts and cron): whether the store changed
        since that loop last asked -- True at first, then after each read of this follower that found the
        SQLite file moved (any commit of another connection than the table's own), so that the loop's reads
        can wait for one instead of repeating every tick, woken by the table's heartbeat. None when the
        follower does not see every change (PostgreSQL: it follows the routes' NOTIFYs; the loops poll)."""
        if getattr(self.source, "watch", None) is None:
            return None
        changed = [True]

        def moved() -> bool:
            was, changed[0] = changed[0], False
            return was

        self.on_change.append(lambda: changed.__setitem__(0, True))
        return moved

    async def reload(self) -> bool:
        """Read the table now; True when it changed."""
        return await self._adopt(await asyncio.to_thread(self.source))

    async def _adopt(self, table: router.Table | None) -> bool:
        """Route by `table` (None: nothing changed since the last read); True when it changed."""
        if table is None:
            return False
        routes_changed = self.table is None or table.routes != self.table.routes
        self.table = table
        for listener in self.on_change:
            listener()
        # Only now, with requests routed by the new table, may a waiting `fnctl apply` or `delete` go on.
        confirm: Callable[[], None] | None = getattr(self.source, "confirm", None)
        if confirm is not None:
            await asyncio.to_thread(confirm)
        if routes_changed:
            self._reconcile()
        return True

    def _reconcile(self) -> None:
        if self._reconciling is not None and not self._reconciling.done():
            self._again = True
            return
        self._reconciling = asyncio.create_task(self._reconcile_loop())

    async def _reconcile_loop(self) -> None:
        while True:
            self._again = False
            try:
                await self.pool.reconcile(self.table.routes if self.table else {})
            except Exception:  # a pool failure must not stop routing; the next change retries
                log.exception("reconciling the instance pools failed")
            if not self._again:
                return

    async def _reload_loop(self) -> None:
        listener: Listener | None = getattr(self.source, "listener", None)
        if listener is not None:
            await self._follow(listener)
        due: Callable[[], bool] = getattr(self.source, "due", lambda: True)
        while True:
            await asyncio.sleep(self.interval)
            if self.unreachable is None and not due():  # idle SQLite: a hop a second (the heartbeat), was four
                continue
            try:
                await self.reload()
            except Exception as exc:  # a busy or broken store: keep serving the last table
                self._failed(exc)
            else:
                self._reachable()

    async def _follow(self, listener: Listener) -> None:
        """PostgreSQL: one worker-thread hop at a time, each waiting for a notification up to a second and
        reading the table in the same hop when one came (or the connection was lost or opened again), or when
        the fallback poll is due -- every `interval`, at least LISTENING_POLL: a change that came with no
        notification (written around fnctl, or lost with the listener's connection) is still seen within it.
        The wait is cut in slices of at most a second: a thread blocked in a wait holds up the gateway's
        shutdown until it returns. Idle, that is one hop and one round trip (the poll, with the heartbeat) a
        second; it was a hop every 0.25 s for the wait and another for the poll."""
        period = max(self.interval, LISTENING_POLL)
        due = time.monotonic() + period
        while True:
            try:
                looked, table = await asyncio.to_thread(self._wait_and_read, listener, due)
                await self._adopt(table)
            except Exception as exc:  # a busy or broken store: keep serving the last table, retry in a second
                self._failed(exc)
                due = time.monotonic() + 1.0
                continue
            if looked:
                due = time.monotonic() + period
                self._reachable()

    def _wait_and_read(self, listener: Listener, due: float) -> tuple[bool, router.Table | None]:
        """In a worker thread: (whether the store was read, the new table or None)."""
        notified = listener.wait(min(1.0, max(0.0, due - time.monotonic())))
        if not notified and time.monotonic() < due:
            return False, None
        return True, self.source()

    def _reachable(self) -> None:
        if self.unreachable is not None:
            log.warning("state store reachable again; routing table current", extra={"fields": {}})
            self.unreachable = None

    def _failed(self, exc: Exception) -> None:
        """Said once per outage, not at every poll; /readyz answers 503 with the reason meanwhile."""
        if self.unreachable is None:
            since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            self.unreachable = f"state unreachable since {since}: {' '.join(str(exc).split())[:300]}"
            log.error("%s; serving the routing table it has", self.unreachable, extra={"fields": {}})

    async def start(self) -> None:
        await self.reload()
        self._reloader = asyncio.create_task(self._reload_loop())

    async def stop(self) -> None:
        for task in (self._reloader, self._reconciling):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass

    def close(self) -> None:
        """Once stopped: close what the source holds open (a `StoreTable`'s connections and watch)."""
        close: Callable[[], None] | None = getattr(self.source, "close", None)
        if close is not None:
            close()
