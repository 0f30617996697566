"""Who drives the controller's work — rollouts, cron and onCommit delivery — when several gateways share a
state: exactly one at a time, the leader.

On PostgreSQL the leader is whichever candidate holds a session advisory lock on a connection of its own
(`backends.LeaderLock`): every candidate tries to take it once a `POLL`; when the holder dies (`kill -9`, a
lost host) the server ends its session and the lock with it, and another candidate takes over at its next try.
A leader looks at its lock's connection every `CHECK` -- on the event loop, without a round trip: what its
socket received says whether the server ended the session -- and stops the controller's tasks as soon as it
is lost (its database connection gone). Nothing runs twice across a takeover: a rollout step commits its weights, progress and
event in one transaction, and a cron tick is claimed in the store before it fires.
On SQLite nothing changes: the state is a file on one host, and the candidate leads at once.
With `fnctl serve --workers N` worker 0 (the host's instance owner) is the host's only candidate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fnctl.deploy.rolloutdriver import drive
from fnctl.manifest.project import Project
from fnctl.state.backends import LeaderLock, postgres
from fnctl.state.location import StateLocation
from fnctl.state.storepool import StorePool

log = logging.getLogger("fnctl.serve")
ROLLOUT_TICK = 0.5  # seconds between the controller loop's looks at the rollouts
POLL = 1.0  # seconds between a candidate's tries for the lock (a worker-thread hop and a round trip each)
CHECK = 0.25  # seconds between a leader's looks at its lock's connection (no hop, no round trip)
# The controller's tasks, started when this gateway leads, told to stop by the event when it no longer does.
Controller = Callable[[asyncio.Event], list["asyncio.Task[None]"]]


class Leadership:
    def __init__(self, location: StateLocation, controller: Controller, on_change: Callable[[bool], None]) -> None:
        self._url = location.url
        self._controller = controller
        self._on_change = on_change  # told True when this gateway starts leading, False when it stops
        self._lock: LeaderLock | None = None if self._url is None else postgres(self._url).leader_lock(self._url)

    async def run(self, stop: asyncio.Event) -> None:
        """Lead whenever this gateway holds the lock, until `stop`."""
        leading, ended = False, asyncio.Event()  # `ended`: tells the controller's tasks to stop
        tasks: list[asyncio.Task[None]] = []
        try:
            while not stop.is_set():
                lock = self._lock
                if not leading and (lock is None or await asyncio.to_thread(lock.try_take)):
                    leading, ended = True, asyncio.Event()
                    tasks = self._controller(ended)
                    self._on_change(True)
                elif leading and lock is not None and not lock.held():
                    log.error("leadership lost (the state's database connection is gone): stopping rollouts and cron")
                    await self._stop(ended, tasks)
                    leading, tasks = False, []
                    self._on_change(False)
                try:
                    await asyncio.wait_for(stop.wait(), CHECK if leading and lock is not None else POLL)
                except TimeoutError:
                    pass
        finally:
            await self._stop(ended, tasks)
            if self._lock is not None:
                await asyncio.to_thread(self._lock.release)

    @staticmethod
    async def _stop(ended: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
        ended.set()
        if tasks:
            await asyncio.wait(tasks)


def _tick(stores: StorePool, project: Project, progress: Callable[[str], None]) -> bool:
    """One pass; whether rollouts were left to drive (False: none until the state changes)."""
    with stores.store() as store:  # connecting (the first pass, or after an error) is blocking work too
        return drive(project, stores.location, progress, store) is not None


async def drive_rollouts(
    project: Project, store_path: StateLocation, stop: asyncio.Event, moved: Callable[[], bool] | None = None
) -> None:
    """The leader's rollout loop: rollouts advance while it leads, whenever no fnctl command holds the deploy
    lock (one that does drives them itself). `moved` (SQLite: `TableFollower.subscribe`): whether the store
    changed since it was last asked; a pass that found nothing to drive is repeated only once it did, not
    every tick in a worker thread."""

    def progress(line: str) -> None:
        log.info("rollout", extra={"fields": {"detail": line}})

    # One connection for the loop's life, used by one worker thread at a time (the passes run one after the
    # other); on PostgreSQL it reconnects by itself when the server dropped it.
    stores = StorePool(store_path, keep=1)
    busy = True
    try:
        while not stop.is_set():
            try:
                if busy or moved is None or moved():
                    busy = await asyncio.to_thread(_tick, stores, project, progress)
            except Exception:  # a busy store or a failed stop: the next tick tries again
                log.exception("advancing the rollouts failed")
                busy = True
            try:
                await asyncio.wait_for(stop.wait(), ROLLOUT_TICK)
            except TimeoutError:
                pass
    finally:
        await asyncio.to_thread(stores.close)
