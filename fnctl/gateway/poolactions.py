"""The gateway pools' blocking work (`DockerActions`), run in worker threads by `fnctl.gateway.pools.PoolManager`:
through the sync `fnctl.engine.instances` API and the state store, a store connection of a few kept open per action, each scale
action under the store's lock (`fnctl.deploy.lock`, short timeout, retried later when `fnctl apply` holds it), so
the gateway never races a deploy: a container exists only while its instance row does, and rows are written
before containers are started.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fnctl.deploy import lock
from fnctl.deploy import secrets as secretref
from fnctl.deploy.revisionspec import function_from_spec
from fnctl.engine import dockerio, instances
from fnctl.engine.sandbox import labels
from fnctl.errors import FnctlError
from fnctl.gateway.poolhost import Target, Unavailable
from fnctl.gateway.scaling import may_start
from fnctl.invocation.outcome import Failure
from fnctl.manifest.project import Project
from fnctl.state.location import StateLocation
from fnctl.state.revisions import InstanceRow, InstanceState, RevisionStatus
from fnctl.state.storepool import StorePool

LOCK_TIMEOUT = 2.0  # the contract with `fnctl apply`: the gateway never waits long for the lock
EXIT_WAIT = 2.0  # how long a dead runtime's container may take to be recorded as exited (OOM or crash)
Rows = dict[tuple[str, int], list[tuple[str, str, str]]]  # (function, revision) → (id, container, socket dir)


class DockerActions:
    """The pools' blocking work, run in worker threads: each call borrows a store connection of its own from
    a few kept open (`StorePool`), so a serving gateway does not connect anew for every look-up."""

    adopts_only = False  # True: the pools only adopt instances the engine runs (fnctl.gateway.poolswarm)
    follow_interval = 0.1  # seconds between an adopting process's looks at `ready_rows` (a store query)

    def __init__(self, store_path: StateLocation, project: Project, max_wait: float | None = None) -> None:
        self.store_path = store_path
        self.project = project
        self.max_wait = max_wait
        self.stores = StorePool(store_path)

    def close(self) -> None:
        """Close the kept store connections (the pools' close, once their worker threads are done)."""
        self.stores.close()

    def routes(self) -> dict[str, dict[int, int]]:
        with self.stores.store() as store:
            return store.routes()

    def ready_rows(self) -> tuple[Rows, set[str]]:
        """The store's ready and paused instances with a container, by revision, oldest first; and the ids of
        the paused ones (a warm reserve a gateway left: thawed when adopted)."""
        rows: Rows = {}
        paused: set[str] = set()
        with self.stores.store() as store:
            for row in store.instances():
                if row.state in (InstanceState.READY, InstanceState.PAUSED) and row.container_id:
                    rows.setdefault((row.function, row.revision), []).append((row.id, row.container_id, row.socket_dir))
                    if row.state is InstanceState.PAUSED:
                        paused.add(row.id)
        return rows, paused

    def mark(self, instance_id: str, paused: bool) -> None:
        """Record an instance paused or thawed (readers that connect to instances skip paused ones)."""
        with self.stores.store() as store:
            if any(row.id == instance_id for row in store.instances()):
                store.update_instance(instance_id, state=InstanceState.PAUSED if paused else InstanceState.READY)

    def load(self, function: str, revision: int) -> Target:
        """What a pool needs to run `revision`; Unavailable when it cannot serve."""
        with self.stores.store() as store:
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

    def start(self, target: Target, instance_id: str, attach: Callable[[instances.Launched], None]) -> None:
        """Launch and record one instance; `attach(launched)` returns once its runtime is connected to and
        ready (the gateway's event loop does the connecting), else raises. The row goes READY after that,
        still under the lock, while the instance already serves. LockTimeout when apply holds the lock."""
        function = target.function
        with lock.held(self.store_path, timeout=LOCK_TIMEOUT, command="serve: scale"), self.stores.store() as store:
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
                launched = instances.launch(
                    function,
                    image=target.image,
                    revision=str(target.revision),
                    labels=labels(self.project.name, function.name, revision=str(target.revision), store=store.id),
                    instance_id=instance_id,
                )
                try:
                    attach(launched)
                except BaseException:
                    instances.discard(launched)
                    raise
            except BaseException:
                store.remove_instance(instance_id)
                raise
            store.update_instance(instance_id, state=InstanceState.READY, container_id=launched.container_id)

    def stop(self, target: Target, instance_id: str, container_id: str, socket_dir: str, drain: bool) -> None:
        """Stop one instance (finishing what runs on it when `drain`) and remove its row, if still there."""
        function = target.function
        with lock.held(self.store_path, timeout=LOCK_TIMEOUT, command="serve: scale"), self.stores.store() as store:
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
