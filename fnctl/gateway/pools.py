"""The gateway's instance pools: `PoolManager` keeps one `RevisionPool` per revision that is in the routing
table (with a share of the traffic, or kept warm at 0%) or was invoked on demand (pinned to a revision the
table does not list), and does their blocking work in worker threads.

The blocking work is `fnctl.gateway.poolactions`' (`DockerActions`: the engine and the store, under the store's
lock), so the gateway never races a deploy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any, TypeVar

from fnctl.deploy.lock import LockTimeout
from fnctl.engine import dockerio, instances
from fnctl.errors import FnctlError
from fnctl.gateway.crew import Crew
from fnctl.gateway.poolhost import PoolResult, PoolStats, Slot, SlotPhase, Started, Target, Unavailable
from fnctl.gateway.poolstart import meet_launched
from fnctl.gateway.poolswarm import pool_actions
from fnctl.gateway.revisionpool import CallerIdentity, RevisionPool
from fnctl.gateway.scaling import Routing, discard_now, routing_of
from fnctl.gateway.shedding import Shed
from fnctl.invocation.aiotransport import AsyncCallHandler, AsyncTransport
from fnctl.invocation.outcome import Failure
from fnctl.invocation.rendezvous import PeerCheck, container_peer
from fnctl.manifest.project import Project
from fnctl.state.location import StateLocation

__all__ = ["PoolManager", "Routing"]

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK_RETRY = 0.5
STOP_BUDGET = 30.0  # seconds `close` gives the stops of extra instances after the drain
# Seconds a started instance keeps its start-up CPU (sandbox.STARTUP_CPUS) while its first request runs: its
# own quota is set once that request is answered, or after this long, whichever comes first.
SETTLE_WAIT = 1.0


class PoolManager:
    """Every revision's pool, on one event loop. `idle_seconds`: how long an instance beyond minInstances
    may stay idle before it is stopped; `grace_seconds`: the same for revisions the routing table does not
    list (invoked by pinning, or no longer routed); `queue_limit`: requests queued per revision at
    maxInstances (below it, requests wait for the instances being started): a backstop on memory; what
    refuses requests under load is their expected wait (`max_wait`: the gateway's maxQueueWait, else each
    function's timeout; fnctl.gateway.shedding)."""

    def __init__(
        self,
        project: Project,
        store_path: StateLocation,
        *,
        idle_seconds: float = 300.0,
        queue_limit: int = 1024,
        grace_seconds: float = 30.0,
        workers: int = 8,
        max_wait: float | None = None,
        crew: Crew | None = None,
    ) -> None:
        self.project = project
        self.store_path = store_path
        self.idle_seconds = idle_seconds
        self.grace_seconds = grace_seconds
        self.queue_limit = queue_limit
        self.max_wait = max_wait
        self.closing = False
        # `fnctl serve --workers`: the owner (worker 0) starts, scales and stops instances; the other workers
        # follow the store's instance table (fnctl.gateway.crew).
        self.crew = crew
        # Answers the `call` frames of the instances of (function, revision): the data broker, when serving data.
        self.call_handler: Callable[[str, int], AsyncCallHandler] | None = None
        self.actions = pool_actions(store_path, project, max_wait)
        # This process adopts only: it connects to the instances someone else runs and never starts, stops,
        # pauses or idle-stops one. Two kinds: a follower worker of `fnctl serve --workers` (the owner runs
        # them; its source is the store's instance table) and every gateway under engine = "swarm" (Swarm runs
        # them; its source is this node's tasks, fnctl.gateway.poolswarm). Both look at their source again
        # every `actions.follow_interval` (`_follow_instances`).
        self.adopts_only = self.actions.adopts_only or (crew is not None and not crew.owner)
        if self.actions.adopts_only:
            self.idle_seconds = float("inf")  # a task is let go when Swarm stops it, never for being idle
        self._pools: dict[tuple[str, int], RevisionPool] = {}
        self._loading: dict[tuple[str, int], asyncio.Task[RevisionPool]] = {}
        self._routes: dict[str, dict[int, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="fnctl-pool")
        self._reads = ThreadPoolExecutor(2, thread_name_prefix="fnctl-pool-read")

    async def start(self) -> None:
        """Adopt the store's ready instances of the revisions in the routing table, keep their minInstances,
        start the upkeep."""
        attaching = await self._follow(await self._in_thread(self.actions.routes, reads=True))
        if attaching:
            await asyncio.wait(attaching)  # ready to serve what is already running before the gateway opens
        if self.adopts_only:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())
            self._follower = asyncio.get_running_loop().create_task(self._follow_instances())
            return
        if self.crew is not None:
            self.crew.listen(self._on_load)
        for pool in self._pools.values():  # a gateway killed right after a start left its instance boosted
            for slot in list(pool.slots.values()):
                if slot.container_id and slot.phase is not SlotPhase.PAUSED:
                    self.spawn(self._settle_cpu(pool.target, slot.container_id))
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())

    async def reconcile(self, routes: Mapping[str, Mapping[int, int]]) -> None:
        """Follow a routing table: a pool for every revision it lists, routed (weight > 0) or kept warm
        (weight 0), adopting the instances `fnctl apply` started and keeping minInstances; the revisions it
        does not list lose their minInstances and are drained after `grace_seconds` idle."""
        await self._follow(routes)

    async def _follow(self, routes: Mapping[str, Mapping[int, int]]) -> list[asyncio.Task[Any]]:
        """`reconcile`, returning the connections to adopted instances, still under way."""
        attaching: list[asyncio.Task[Any]] = []
        self._routes = {f: {int(r): int(w) for r, w in weights.items()} for f, weights in routes.items()}
        wanted = {(f, r) for f, weights in self._routes.items() for r in weights}
        for key, pool in self._pools.items():
            pool.set_routing(self._routing(key))
        if self.closing:
            return attaching
        rows, paused = await self._ready_rows()
        for key in sorted(wanted):
            try:
                pool = await self._pool(*key)
            except FnctlError as exc:
                log.warning("cannot serve %s revision %s: %s", key[0], key[1], exc.message)
                continue
            pool.set_routing(self._routing(key))
            attaching += pool.adopt(rows.get(key, []), paused)
            pool.scale()
        return attaching

    async def invoke(
        self, function: str, revision: int, event: Any, *, caller: CallerIdentity, request_id: str
    ) -> PoolResult:
        """Run one invocation on an instance of `revision` (started on demand when there is none)."""
        if self.closing:
            raise Unavailable("the gateway is shutting down")
        pool = self._pools.get((function, revision)) or await self._pool(function, revision)
        return await pool.invoke(event, caller, request_id)

    def shed(self, function: str, revision: int) -> Shed | None:
        """Whether a request for `revision` would be refused now for its expected wait: asked before its
        body is read, so that a refusal under overload costs next to nothing; an admitted one finding no
        instance to take it has one thawed or started at once (`expect`)."""
        pool = self._pools.get((function, revision))
        if pool is None:
            return None
        if pool.waiters:  # RevisionPool.shed admits whoever finds no queue; `expect` does nothing behind one
            return pool.shed()
        pool.expect()  # a scale from zero begins while the body is read and the event built
        return None

    def stats(self) -> dict[tuple[str, int], PoolStats]:
        return {key: pool.stats() for key, pool in self._pools.items()}

    def holds(self, function: str, revision: int) -> bool:
        """Whether this gateway has a ready instance of `revision` (busy or not)."""
        pool = self._pools.get((function, revision))
        return pool is not None and any(slot.ready for slot in pool.slots.values())

    def held(self) -> set[tuple[str, int]]:
        """The revisions this gateway has a ready instance of."""
        return {key for key, pool in self._pools.items() if any(slot.ready for slot in pool.slots.values())}

    async def close(self, timeout: float = 30.0) -> None:
        """Drain: refuse new requests, let in-flight and queued ones finish (up to `timeout`), stop the
        instances beyond the minInstances of each revision in the routing table and every instance of the
        others."""
        self.closing = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            p.waiters or any(s.inflight for s in p.slots.values()) for p in self._pools.values()
        ):
            await asyncio.sleep(0.02)
        for task in (self._ticker, self._follower):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        if self.crew is not None:
            self.crew.close()
        # Stopping gets its own time, however long the drain took: an extra instance left running would
        # outlive the gateway. Starts under way finish first: a container start cannot be interrupted.
        deadline = time.monotonic() + STOP_BUDGET
        await self._settle(deadline)
        await asyncio.gather(*(pool.close() for pool in self._pools.values()))
        await self._settle(deadline)
        for task in list(self._tasks):
            task.cancel()
        self._pools.clear()
        self._threads.shutdown(wait=False)
        self._reads.shutdown(wait=False)
        self.actions.close()

    # ---- the Host side of RevisionPool ----

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    async def start_instance(self, target: Target, instance_id: str) -> Started:
        """Launch an instance in a worker thread (under the store's lock, its row written first) and connect
        to its runtime here, with the transport that will serve it: the runtime connects once, to a listener
        that was up before its container started, and is configured (secrets, worker connections) in one
        round trip. The transport is handed over as soon as the runtime is ready; recording the instance
        READY and setting its own CPU quota happen beside its first request."""
        if self.crew is not None and not self.crew.owner:  # never asked (a follower's pools do not scale)
            raise FnctlError("a follower gateway worker does not start instances")
        # (A Swarm node's pools do ask, when no task of theirs here is free: SwarmActions.start says why not.)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[Started] = loop.create_future()

        def attach(launched: instances.Launched) -> None:  # in the worker thread, holding the store's lock
            on_call = self.on_call(target.function.name, target.revision)
            meeting = meet_launched(target, launched, ready, on_call, functools.partial(self._in_thread, reads=True))
            connecting = asyncio.run_coroutine_threadsafe(meeting, loop)
            connecting.result(timeout=instances.START_TIMEOUT + 5)  # never hangs on a loop that stopped

        job = asyncio.ensure_future(self._in_thread(self.actions.start, target, instance_id, attach))
        first: list[asyncio.Future[Any]] = [ready, job]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            job.result()  # the launch failed: its error
            raise FnctlError(f"instance {instance_id} was launched but never attached")  # not reached
        self.spawn(self._recorded(job, target, instance_id))
        started = ready.result()
        self.spawn(self._settle_cpu(target, started[0], after=started[2]))
        return started

    async def _recorded(self, job: asyncio.Future[None], target: Target, instance_id: str) -> None:
        try:
            await job
        except Exception as exc:  # the instance serves; `recover` may remove it later: its pool then replaces it
            log.warning("recording instance %s of %s as ready: %s", instance_id, target.function.name, exc)

    async def _settle_cpu(self, target: Target, container_id: str, after: AsyncTransport | None = None) -> None:
        """The function's own CPU quota for an instance that started with more. A started instance (`after`:
        its transport) keeps the extra CPU until its first request is answered (at most SETTLE_WAIT): the
        engine's update beside that request took CPU from it on a busy machine and cut its quota while it
        forked its first worker. An instance whose quota cannot be set is removed (its pool replaces it)."""
        if after is not None:
            with suppress(TimeoutError):
                await asyncio.wait_for(after.answered.wait(), SETTLE_WAIT)
        try:
            await self._in_thread(instances.settle_cpu, target.function, container_id)
        except FnctlError as exc:
            log.warning("instance %s of %s: %s; removing it", container_id[:12], target.function.name, exc.message)
            with suppress(FnctlError):
                await self._in_thread(dockerio.kill, container_id)

    async def pause_instance(self, slot: Slot, paused: bool) -> None:
        # on the read threads: a thaw is on a request's path, never behind starts waiting for the lock
        await self._in_thread(dockerio.pause, slot.container_id, paused, reads=True)
        self.spawn(self._mark(slot.id, paused))  # the store learns it after the fact: off the request's path

    async def _mark(self, instance_id: str, paused: bool) -> None:
        try:
            await self._in_thread(self.actions.mark, instance_id, paused, reads=True)
        except Exception as exc:  # a busy store: only `status` and direct readers see the stale state
            log.warning("recording instance %s as %s: %s", instance_id, "paused" if paused else "ready", exc)

    async def stop_instance(self, target: Target, slot: Slot, *, drain: bool) -> None:
        if self.adopts_only:
            return  # only let go of (its connection is closed): the owner worker or Swarm stops instances
        while True:
            try:
                await self._in_thread(self.actions.stop, target, slot.id, slot.container_id, slot.socket_dir, drain)
                return
            except LockTimeout:
                await asyncio.sleep(LOCK_RETRY)  # `fnctl apply` holds the lock: try again after it
            except FnctlError as exc:
                log.warning("stopping instance %s of %s: %s", slot.id, target.function.name, exc.message)
                return

    def peer_check(self, slot: Slot) -> PeerCheck:
        return container_peer(slot.container_id)

    def on_call(self, function: str, revision: int) -> AsyncCallHandler | None:
        return None if self.call_handler is None else self.call_handler(function, revision)

    async def death_cause(self, target: Target, slot: Slot) -> tuple[Failure | None, str]:
        try:
            return await self._in_thread(self.actions.death_cause, target, slot.container_id)
        except FnctlError:
            return Failure.CRASHED, "the instance crashed during the invocation; it is replaced"

    # ---- internals ----

    async def _in_thread(self, fn: Callable[..., T], *args: Any, reads: bool = False) -> T:
        """Run blocking work in a worker thread; store reads have their own threads, so that starts and
        stops waiting for the lock never delay a request's first look-up of its revision."""
        threads = self._reads if reads else self._threads
        return await asyncio.get_running_loop().run_in_executor(threads, functools.partial(fn, *args))

    async def _pool(self, function: str, revision: int) -> RevisionPool:
        key = (function, revision)
        pool = self._pools.get(key)
        if pool is not None:
            return pool
        task = self._loading.get(key)
        if task is None:  # one load per revision, however many requests ask at once
            task = asyncio.get_running_loop().create_task(self._load(key))
            self._loading[key] = task
            task.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(task)

    async def _load(self, key: tuple[str, int]) -> RevisionPool:
        target = await self._in_thread(self.actions.load, *key, reads=True)
        # Read before the pool exists: once it does, the upkeep would start instances for it that the
        # store already has.
        rows, paused = await self._ready_rows()
        pool = self._pools.get(key)
        if pool is None:
            pauser = None if self.adopts_only else self
            pool = self._pools[key] = RevisionPool(self, target, routing=self._routing(key), pauser=pauser)
            pool.adopt(rows.get(key, []), paused)
        return pool

    async def _ready_rows(self) -> tuple[dict[tuple[str, int], list[tuple[str, str, str]]], set[str]]:
        """The store's ready instances, by revision; a follower leaves out the paused ones (the owner's warm
        reserve, frozen: it connects once the owner has thawed one and recorded it ready)."""
        rows, paused = await self._in_thread(self.actions.ready_rows, reads=True)
        if self.crew is not None and not self.crew.owner and paused:
            rows = {key: [row for row in found if row[0] not in paused] for key, found in rows.items()}
        return rows, paused

    async def _follow_instances(self) -> None:
        """An adopting process's loop: connect to the instances its source lists (the owner worker's, recorded
        ready in the store; the tasks Swarm placed or replaced on this node), and let go of the ones it no
        longer lists (retired here: no new requests, its connection closed once the last one ends; never taken
        for a crash, never stopped from here)."""
        while True:
            await asyncio.sleep(self.actions.follow_interval)
            try:
                rows, _ = await self._ready_rows()
            except Exception as exc:  # a busy store, the node's engine busy or restarting: the next look
                log.warning("reading the instances: %s", exc)
                continue
            for key, pool in list(self._pools.items()):
                listed = rows.get(key, [])
                pool.adopt(listed)
                ids = {row[0] for row in listed}
                for slot in [s for s in pool.slots.values() if s.ready and s.id not in ids]:
                    pool.let_go(slot)
                pool.scale()  # a follower's pools tell the owner their load (repeated while it stands)

    def _on_load(self, function: str, revision: int) -> None:
        """The owner: a follower's load of (function, revision) changed: scale for it."""
        pool = self._pools.get((function, revision))
        if pool is not None:
            pool.scale()
        elif not self.closing and function in self._routes:
            self.spawn(self._scale_new(function, revision))

    async def _scale_new(self, function: str, revision: int) -> None:
        try:
            (await self._pool(function, revision)).scale()
        except FnctlError as exc:
            log.warning("cannot serve %s revision %s: %s", function, revision, exc.message)

    def _routing(self, key: tuple[str, int]) -> Routing:
        return routing_of(self._routes.get(key[0]), key[1])

    async def _tick_loop(self) -> None:
        interval = max(0.05, min(1.0, self.idle_seconds / 4, self.grace_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for key, pool in list(self._pools.items()):
                try:
                    pool.tick(now)
                except Exception:  # one pool's bug must not stop the upkeep of the others
                    log.exception("upkeep of %s revision %s failed", *key)
                if pool.disposable(now) or discard_now(
                    self._routes.get(key[0]), instances=len(pool.slots), queued=len(pool.waiters)
                ):
                    del self._pools[key]

    async def _settle(self, deadline: float) -> None:
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(list(self._tasks), timeout=max(deadline - time.monotonic(), 0.01))

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pool task failed", exc_info=task.exception())
