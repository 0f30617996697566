"""The gateway's instance pools: `PoolManager` keeps one `RevisionPool` per revision that is in the routing
table (with a share of the traffic, or kept warm at 0%) or was invoked on demand (pinned to a revision the
table does not list), and does their blocking work in worker threads.

The blocking work (`DockerActions`) goes through the sync `fnctl.engine.instances` API and the state store, one
store connection per action, each scale action under the store's lock (`fnctl.deploy.lock`, short timeout, retried
later when `fnctl apply` holds it), so the gateway never races a deploy: a container exists only while its
instance row does, and rows are written before containers are started.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from fnctl.deploy import lock
from fnctl.deploy import secrets as secretref
from fnctl.deploy.lock import LockTimeout
from fnctl.deploy.revisionspec import function_from_spec
from fnctl.engine import dockerio, instances
from fnctl.engine.sandbox import labels
from fnctl.errors import FnctlError
from fnctl.gateway.poolhost import PoolResult, PoolStats, Slot, SlotPhase, Target, Unavailable
from fnctl.gateway.revisionpool import RevisionPool
from fnctl.gateway.scaling import Routing, discard_now, may_start, routing_of
from fnctl.gateway.shedding import Shed
from fnctl.invocation.aiotransport import AsyncCallHandler
from fnctl.invocation.outcome import Failure
from fnctl.invocation.rendezvous import PeerCheck, container_peer
from fnctl.manifest.project import Project
from fnctl.state.revisions import InstanceRow, InstanceState, RevisionStatus
from fnctl.state.store import Store, connect

__all__ = ["DockerActions", "PoolManager", "Routing"]

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK_TIMEOUT = 2.0  # the contract with `fnctl apply`: the gateway never waits long for the lock
LOCK_RETRY = 0.5
STOP_BUDGET = 30.0  # seconds `close` gives the stops of extra instances after the drain
EXIT_WAIT = 2.0  # how long a dead runtime's container may take to be recorded as exited (OOM or crash)
Rows = dict[tuple[str, int], list[tuple[str, str, str]]]  # (function, revision) → (id, container, socket dir)


@contextmanager
def _store(path: Path) -> Iterator[Store]:
    store = connect(path)
    try:
        yield store
    finally:
        store.close()


class DockerActions:
    """The pools' blocking work, run in worker threads: each call opens its own store connection."""

    def __init__(self, store_path: Path, project: Project, max_wait: float | None = None) -> None:
        self.store_path = store_path
        self.project = project
        self.max_wait = max_wait

    def routes(self) -> dict[str, dict[int, int]]:
        with _store(self.store_path) as store:
            return store.routes()

    def ready_rows(self) -> tuple[Rows, set[str]]:
        """The store's ready and paused instances with a container, by revision, oldest first; and the ids of
        the paused ones (a warm reserve a gateway left: thawed when adopted)."""
        rows: Rows = {}
        paused: set[str] = set()
        with _store(self.store_path) as store:
            for row in store.instances():
                if row.state in (InstanceState.READY, InstanceState.PAUSED) and row.container_id:
                    rows.setdefault((row.function, row.revision), []).append((row.id, row.container_id, row.socket_dir))
                    if row.state is InstanceState.PAUSED:
                        paused.add(row.id)
        return rows, paused

    def mark(self, instance_id: str, paused: bool) -> None:
        """Record an instance paused or thawed (readers that connect to instances skip paused ones)."""
        with _store(self.store_path) as store:
            if any(row.id == instance_id for row in store.instances()):
                store.update_instance(instance_id, state=InstanceState.PAUSED if paused else InstanceState.READY)

    def load(self, function: str, revision: int) -> Target:
        """What a pool needs to run `revision`; Unavailable when it cannot serve."""
        with _store(self.store_path) as store:
            found = store.revision(function, revision)
        if found is None:
            raise Unavailable(f"{function} has no revision {revision}")
        if (
            found.status not in (RevisionStatus.READY, RevisionStatus.PENDING, RevisionStatus.PREVIEW)
            or not found.image
        ):
            raise Unavailable(f"{function} revision {revision} is {found.status.value}: it cannot serve")
        spec = function_from_spec(function, found.spec, self.project.default_limits)
        try:
            secrets = secretref.resolve(spec, self.project.root)
        except FnctlError as exc:
            raise Unavailable(f"{function} revision {revision}: {exc.message}") from None
        return Target(spec, revision, found.image, secrets, self.max_wait)

    def start(self, target: Target, instance_id: str) -> tuple[str, str]:
        """Start and record one instance: (container id, socket dir). LockTimeout when apply holds the lock."""
        function = target.function
        with lock.held(self.store_path, timeout=LOCK_TIMEOUT, command="serve: scale"), _store(self.store_path) as store:
            # Decided again under the lock: a start asked for before `fnctl delete` took the lock must not
            # bring the deleted function back once it releases it.
            if not may_start(store.routes().get(function.name)):
                raise Unavailable(f"{function.name} is not deployed (deleted): no instance is started")
            socket_dir = str(instances.runtime_root() / instance_id)
            # Recorded first, as apply does: a crash from here on leaves a row that `recover` cleans up.
            store.add_instance(
                InstanceRow(
                    instance_id, function.name, target.revision, None, socket_dir, InstanceState.STARTING, time.time()
                )
            )
            try:
                instance = instances.start(
                    function,
                    image=target.image,
                    revision=str(target.revision),
                    secret_values=target.secrets,
                    labels=labels(self.project.name, function.name, revision=str(target.revision), store=store.id),
                    instance_id=instance_id,
                    settle_cpu=False,  # PoolManager.start_instance does it beside the first request
                )
            except BaseException:
                store.remove_instance(instance_id)
                raise
            instance.transport.close()  # the pool speaks to it through its own asyncio connection
            store.update_instance(instance_id, state=InstanceState.READY, container_id=instance.container_id)
            return instance.container_id, socket_dir

    def stop(self, target: Target, instance_id: str, container_id: str, socket_dir: str, drain: bool) -> None:
        """Stop one instance (finishing what runs on it when `drain`) and remove its row, if still there."""
        function = target.function
        with lock.held(self.store_path, timeout=LOCK_TIMEOUT, command="serve: scale"), _store(self.store_path) as store:
            known = any(row.id == instance_id for row in store.instances(function.name))
            if known:
                store.update_instance(instance_id, state=InstanceState.STOPPING)
            instance = (
                instances.connect_existing(function, container_id, Path(socket_dir), instance_id) if drain else None
            )
            if instance is None:  # dead, or not worth waiting for: no drain
                transport = instances.host_transport(socket_dir, container_id)
                instance = instances.Instance(instance_id, container_id, Path(socket_dir), transport, function)
            instances.remove(instance, drain=drain)
            if known:
                store.remove_instance(instance_id)

    def death_cause(self, target: Target, container_id: str) -> tuple[Failure | None, str]:
        """Why a runtime went away, from its container's exit state: out of memory, a crash, or None for a
        clean exit after a drain (`fnctl apply` replacing it, `docker stop`), which never cuts an invocation:
        the runtime waits for every one it accepted before it exits."""
        state, deadline = None, time.monotonic() + EXIT_WAIT
        while container_id:
            try:
                state = dockerio.exit_state(container_id)
            except FnctlError:
                break  # already removed
            if not state.running or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if state is not None and state.oom_killed:
            limit = target.function.limits.memory // 2**20
            return Failure.OUT_OF_MEMORY, f"the function ran out of memory (limit {limit}Mi); the instance is replaced"
        if state is not None and not state.running and state.exit_code == 0:
            return None, "the instance was drained"
        code = f" (exit code {state.exit_code})" if state is not None and not state.running else ""
        return Failure.CRASHED, f"the instance crashed during the invocation{code}; it is replaced"


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
        store_path: Path,
        *,
        idle_seconds: float = 300.0,
        queue_limit: int = 1024,
        grace_seconds: float = 30.0,
        workers: int = 8,
        max_wait: float | None = None,
    ) -> None:
        self.project = project
        self.store_path = store_path
        self.idle_seconds = idle_seconds
        self.grace_seconds = grace_seconds
        self.queue_limit = queue_limit
        self.max_wait = max_wait
        self.closing = False
        # Answers the `call` frames of the instances of (function, revision): the data broker, when serving data.
        self.call_handler: Callable[[str, int], AsyncCallHandler] | None = None
        self.actions = DockerActions(store_path, project, max_wait)
        self._pools: dict[tuple[str, int], RevisionPool] = {}
        self._loading: dict[tuple[str, int], asyncio.Task[RevisionPool]] = {}
        self._routes: dict[str, dict[int, int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="fnctl-pool")
        self._reads = ThreadPoolExecutor(2, thread_name_prefix="fnctl-pool-read")

    async def start(self) -> None:
        """Adopt the store's ready instances of the revisions in the routing table, keep their minInstances,
        start the upkeep. The Docker client is made now, not by the first cold start (~110 ms more for it)."""
        try:
            await self._in_thread(dockerio.client)
        except FnctlError as exc:  # no engine yet: the first start reports it, as it would have
            log.warning("no Docker engine answers yet: %s", exc.message)
        attaching = await self._follow(await self._in_thread(self.actions.routes, reads=True))
        if attaching:
            await asyncio.wait(attaching)  # ready to serve what is already running before the gateway opens
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
        rows, paused = await self._in_thread(self.actions.ready_rows, reads=True)
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
        self, function: str, revision: int, event: Any, *, caller: dict[str, Any] | None, request_id: str
    ) -> PoolResult:
        """Run one invocation on an instance of `revision` (started on demand when there is none)."""
        if self.closing:
            raise Unavailable("the gateway is shutting down")
        pool = self._pools.get((function, revision)) or await self._pool(function, revision)
        return await pool.invoke(event, caller, request_id)

    def shed(self, function: str, revision: int) -> Shed | None:
        """Whether a request for `revision` would be refused now for its expected wait: asked before its
        body is read, so that a refusal under overload costs next to nothing."""
        pool = self._pools.get((function, revision))
        return None if pool is None else pool.shed()

    def stats(self) -> dict[tuple[str, int], PoolStats]:
        return {key: pool.stats() for key, pool in self._pools.items()}

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
        if self._ticker is not None:
            self._ticker.cancel()
            with suppress(asyncio.CancelledError):
                await self._ticker
        # Stopping gets its own time, however long the drain took: an extra instance left running would
        # outlive the gateway. Starts under way finish first: a container start cannot be interrupted.
        deadline = time.monotonic() + STOP_BUDGET
        await self._settle(deadline)
        for pool in self._pools.values():
            await pool.close()
        await self._settle(deadline)
        for task in list(self._tasks):
            task.cancel()
        self._pools.clear()
        self._threads.shutdown(wait=False)
        self._reads.shutdown(wait=False)

    # ---- the Host side of RevisionPool ----

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    async def start_instance(self, target: Target, instance_id: str) -> tuple[str, str]:
        container_id, socket_dir = await self._in_thread(self.actions.start, target, instance_id)
        self.spawn(self._settle_cpu(target, container_id))
        return container_id, socket_dir

    async def _settle_cpu(self, target: Target, container_id: str) -> None:
        """The function's own CPU quota for an instance that started with more: set while it already takes
        its first request (the engine's update took what the extra CPU saved when a cold start waited for
        it). An instance whose quota cannot be set is removed (its pool replaces it)."""
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
        rows, paused = await self._in_thread(self.actions.ready_rows, reads=True)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = RevisionPool(self, target, routing=self._routing(key), pauser=self)
            pool.adopt(rows.get(key, []), paused)
        return pool

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
