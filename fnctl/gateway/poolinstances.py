"""One revision's instances and their upkeep: starting them (through the `Host`, in worker threads), attaching
to their runtimes, the paused warm reserve (`scaling.warm: paused`), scaling to minInstances and the load,
stopping idle ones, retiring and replacing broken or crashed ones. What to do is decided by the pure functions
of `scaling`; the requests queued for the instances are `fnctl.gateway.revisionpool`'s, which builds on this.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Collection, Sequence
from typing import Any

from fnctl.deploy.lock import LockTimeout
from fnctl.engine import instances
from fnctl.errors import FnctlError
from fnctl.gateway.poolhost import Host, Pauser, PoolStats, Slot, SlotPhase, Target, Unavailable, lease_any
from fnctl.gateway.scaling import Routing, idle_to_stop, kept_warm, pick, to_start
from fnctl.gateway.shedding import max_wait
from fnctl.gateway.workers import units
from fnctl.invocation.aiotransport import AsyncTransport
from fnctl.manifest.model import Warm

log = logging.getLogger(__name__)

START_BACKOFF = 5.0  # after a failed start, requests meeting no ready instance fail fast for this long
ATTACH_TIMEOUT = 2.0  # a running runtime says ready as soon as it is connected to
LEASE_RETRY = 0.005  # seconds between looks at the units other workers lease, while requests wait for one
REMEMBERED = 256  # stopped instances remembered per pool, so that a stale read of the store never revives one


class PoolInstances:
    """The instances of one revision, the queue of requests waiting for one, and their upkeep, on one event loop."""

    def __init__(self, host: Host, target: Target, *, routing: Routing, pauser: Pauser | None = None) -> None:
        self.host = host
        # `scaling.warm: paused`: one instance more is kept started and paused, thawed when one is needed
        self.pauser = pauser if target.function.scaling.warm is Warm.PAUSED else None
        self.target = target
        self.name = f"{target.function.name} revision {target.revision}"
        self.concurrency = max(target.function.scaling.concurrency, 1)
        self.slots: dict[str, Slot] = {}
        self.waiters: deque[asyncio.Future[Slot]] = deque()
        self.routing = routing
        self.unrouted_since = time.monotonic()
        self.start_error: tuple[float, str] | None = None
        self.latency = 0.1  # seconds, moving average: for shedding and Retry-After
        self.max_wait = max_wait(target.function.limits.timeout, target.max_wait)
        self.gone: OrderedDict[str, None] = OrderedDict()  # instances stopped or lost: never adopted again
        self._orders = itertools.count()
        self._retry: asyncio.TimerHandle | None = None  # a look again at leased units (`_claim`)

    @property
    def keep(self) -> int:
        """Instances kept warm: minInstances while the revision is in the routing table (0% included)."""
        return kept_warm(self.routing, self.target.function.scaling)

    def set_routing(self, routing: Routing) -> None:
        if routing is Routing.UNROUTED and self.routing is not Routing.UNROUTED:
            self.unrouted_since = time.monotonic()
        self.routing = routing

    def stats(self) -> PoolStats:
        slots = self.slots.values()
        return PoolStats(
            len(self.slots), sum(s.ready for s in slots), sum(s.inflight for s in slots), len(self.waiters)
        )

    def disposable(self, now: float) -> bool:
        return (
            self.routing is Routing.UNROUTED
            and not self.slots
            and not self.waiters
            and now - self.unrouted_since >= self.host.grace_seconds
        )

    def _dispatch(self) -> None:
        """Hand free capacity to queued requests, oldest first."""
        while self.waiters:
            if self.waiters[0].done():  # its caller gave up meanwhile
                self.waiters.popleft()
                continue
            slot = self._claim()
            if slot is None:
                return
            self.waiters.popleft().set_result(slot)

    # ---- scaling ----

    def expect(self) -> None:
        """A request was admitted and its body is being read: when no instance could take it and none is on
        its way, thaw the paused reserve or start an instance now, while the body is read, not after."""
        if self.host.closing or self.waiters:  # a queue: all busy, and scaled for as each request queued
            return
        for slot in self.slots.values():
            room = self.concurrency if slot.units is None else slot.units  # this worker's share of it
            if (slot.ready and slot.inflight < room) or slot.phase is SlotPhase.STARTING:
                return
        self.scale(expected=1)

    def scale(self, expected: int = 0) -> None:
        """Start what the load and minInstances call for, with `expected` requests more on their way (nothing
        while backing off or closing). A follower worker (`fnctl serve --workers`) starts nothing: it tells
        the owner its load, and the owner scales."""
        slots = self.slots.values()
        load = sum(s.inflight for s in slots if s.ready) + len(self.waiters) + expected
        crew = self.host.crew
        if crew is not None and not crew.owner:
            now = time.monotonic()
            recent = sum(1 for s in slots if s.ready and now - s.last_used < self.host.idle_seconds)
            crew.report((self.target.function.name, self.target.revision), load, recent)
            return
        if (self.host.closing and not self.waiters) or self._backing_off():
            return  # closing: only what already-queued requests need
        if crew is not None:
            load = crew.demand((self.target.function.name, self.target.revision), load)
        count = to_start(
            ready=sum(s.ready for s in slots),
            starting=sum(s.phase is SlotPhase.STARTING for s in slots),
            inflight=load,
            queued=0,
            scaling=self.target.function.scaling,
            keep=self.keep,
        )
        for slot in [s for s in slots if s.phase is SlotPhase.PAUSED][:count]:
            self._thaw(slot)  # the warm reserve first: ~20 ms instead of a start
            count -= 1
        for _ in range(count):
            self._start_slot(spare=False)
        self._keep_spare()

    def _share(self, slot: Slot) -> Slot:
        """Give `slot` this process's share of its instance's concurrency: all of it (the only gateway
        process), a fixed part of its units, or, when `concurrency` is below the workers (a fixed split
        would leave some worker none), a lease of a unit per request (`crew.SharedUnits`)."""
        crew = self.host.crew
        if crew is not None:
            slot.shared = crew.shared_units(slot.id, self.concurrency)
            if slot.shared is None:
                slot.units = units(self.concurrency, crew.workers, crew.worker, slot.id)
        return slot

    def _claim(self) -> Slot | None:
        """A ready instance with room for one request more, counted in flight (None: wait). An instance of
        leased units whose every unit another worker holds is passed over, and looked at again in
        `LEASE_RETRY` seconds (nothing tells this worker when another gives one back)."""
        slot = pick(self.slots.values(), self.concurrency)
        if slot is not None and slot.shared is not None and not slot.shared.take():
            slot = lease_any(self.slots.values(), self.concurrency)
            if slot is None:
                if self._retry is None:
                    self._retry = asyncio.get_running_loop().call_later(LEASE_RETRY, self._retry_dispatch)
                return None
        if slot is not None:
            slot.inflight += 1
        return slot

    def _retry_dispatch(self) -> None:
        self._retry = None
        self._dispatch()

    def _unclaim(self, slot: Slot) -> None:
        slot.inflight -= 1
        if slot.shared is not None:
            slot.shared.give()
            if slot.phase is SlotPhase.GONE and not slot.inflight:
                slot.shared.close()

    def _start_slot(self, *, spare: bool) -> None:
        instance_id = instances.new_instance_id()
        slot = self._share(Slot(instance_id, next(self._orders), spare=spare))
        self.slots[slot.id] = slot
        self.host.spawn(self._bring_up(slot))

    # ---- the warm reserve (`scaling.warm: paused`) ----

    def _keep_spare(self) -> None:
        """Start the paused spare when there is none (nor one on its way), within maxInstances."""
        if self.pauser is None or self.routing is Routing.UNROUTED or self.host.closing:
            return
        slots = self.slots.values()
        if any(s.spare for s in slots) or len(self.slots) >= self.target.function.scaling.max_instances:
            return
        self._start_slot(spare=True)

    def _pause(self, slot: Slot) -> None:
        """Make `slot` the paused spare, counted as starting (no request, no other start) until it is paused."""
        slot.phase, slot.spare = SlotPhase.STARTING, True
        self.host.spawn(self._set_paused(slot, True))

    def _thaw(self, slot: Slot) -> None:
        """Thaw the reserve and send it the waiting requests at once: their frames wait in its socket and are
        read the moment it runs again, so the invocations overlap the engine's unpause (~15-25 ms here)
        instead of following its answer. Should the unpause fail, the instance is removed and they fail."""
        slot.phase, slot.thawing, slot.last_used = SlotPhase.READY, True, time.monotonic()  # still the spare
        self.host.spawn(self._set_paused(slot, False))
        self._dispatch()

    async def _set_paused(self, slot: Slot, paused: bool) -> None:
        assert self.pauser is not None
        try:
            await self.pauser.pause_instance(slot, paused)
        except FnctlError as exc:
            what = "paused" if paused else "thawed"
            log.warning("%s: instance %s could not be %s (%s); removing it", self.name, slot.id, what, exc.message)
            self.start_error = (time.monotonic(), exc.message)  # back off: no new spare at once
            if slot.phase is not SlotPhase.GONE:
                self._stop(slot, drain=False)
            return
        if not paused:
            slot.thawing = False  # the next reserve starts once this one answered: its start competes for the CPUs
            await slot.first_answer()  # still the reserve meanwhile: neither a tick nor a request starts another
            slot.spare = False
            if slot.phase is SlotPhase.READY:  # else stopped meanwhile
                self._keep_spare()
            return
        if slot.phase is not SlotPhase.STARTING:  # stopped meanwhile
            return
        if not self.waiters:
            slot.phase = SlotPhase.PAUSED  # the gateway closing stops it (RevisionPool.close), undrained
            return
        self._thaw(slot)  # requests came while it was being paused: thaw it for them at once

    def _backing_off(self) -> bool:
        return self.start_error is not None and time.monotonic() - self.start_error[0] < START_BACKOFF

    def tick(self, now: float) -> None:
        """Periodic upkeep: stop idle instances beyond `keep`, start what is missing (the owner's alone)."""
        if self.host.crew is not None and not self.host.crew.owner:
            self.scale()  # a follower's standing load, repeated to the owner
            return
        idle = self.host.idle_seconds
        if self.routing is Routing.UNROUTED:
            idle = min(idle, self.host.grace_seconds)
        keep = self.keep
        if self.host.crew is not None:  # the owner keeps as many as a follower used lately
            keep = max(keep, self.host.crew.used((self.target.function.name, self.target.revision)))
        for slot in idle_to_stop(self.slots.values(), now=now, idle_seconds=idle, keep=keep):
            if (
                self.pauser is not None
                and self.routing is not Routing.UNROUTED
                and not any(s.spare for s in self.slots.values())
            ):
                self._pause(slot)  # the idle instance becomes the warm reserve: no start needed for it
            else:
                self._stop(slot, drain=True)
        if self.routing is Routing.UNROUTED or self.host.closing:
            for slot in [s for s in self.slots.values() if s.phase is SlotPhase.PAUSED]:
                self._stop(slot, drain=False)  # no reserve for a revision nobody is routed to
        self.scale()

    async def _bring_up(self, slot: Slot) -> None:
        try:
            slot.container_id, slot.socket_dir, transport = await self.host.start_instance(self.target, slot.id)
        except LockTimeout:
            self.slots.pop(slot.id, None)  # `fnctl apply` holds the lock: the next tick tries again
            return
        except Exception as exc:  # whatever it was, the slot must not stay "starting" for ever
            self.slots.pop(slot.id, None)
            self._start_failed(exc if isinstance(exc, FnctlError) else FnctlError(f"{type(exc).__name__}: {exc}"))
            return
        self._attached(slot, transport)

    def adopt(self, rows: Sequence[tuple[str, str, str]], paused: Collection[str] = ()) -> list[asyncio.Task[Any]]:
        """Take over running instances recorded READY in the store: (id, container id, socket dir). They
        count as starting at once (so nothing more is started for them) and serve once connected to; the
        connections are the tasks returned."""
        tasks = []
        for instance_id, container_id, socket_dir in rows:
            if instance_id not in self.slots and instance_id not in self.gone:
                slot = self._share(Slot(instance_id, next(self._orders), container_id, socket_dir))
                self.slots[instance_id] = slot
                thaw = instance_id in paused  # a reserve left by a gateway that stopped without removing it
                tasks.append(self.host.spawn(self._thaw_and_attach(slot) if thaw else self._attach(slot)))
        return tasks

    async def _thaw_and_attach(self, slot: Slot) -> None:
        try:
            if self.pauser is not None:
                await self.pauser.pause_instance(slot, False)
        except FnctlError as exc:
            log.warning("%s: instance %s could not be thawed (%s); removing it", self.name, slot.id, exc.message)
            self._bury(slot)
            return
        await self._attach(slot)

    async def _attach(self, slot: Slot) -> None:
        transport = AsyncTransport(
            slot.socket_dir,
            peer=self.host.peer_check(slot),
            on_call=self.host.on_call(self.target.function.name, self.target.revision),
            max_request=self.target.function.limits.payload,
        )
        try:
            # The secrets again: a Swarm task was configured only by whoever health-checked it, if anyone.
            await transport.connect(timeout=ATTACH_TIMEOUT, secrets=self.target.secrets)
        except (FnctlError, OSError) as exc:
            if self.host.adopts_only:
                # Someone else runs it (Swarm, the owner worker): a task placed a moment ago may still be
                # starting its runtime. Let go of it, unremembered: the next look adopts it once it answers.
                log.debug("%s: instance %s does not answer yet (%s)", self.name, slot.id, exc)
                self._forget(slot, remember=False)
                return
            log.warning("%s: instance %s does not answer (%s); removing it", self.name, slot.id, exc)
            self._bury(slot)
            return
        self._attached(slot, transport)

    def _attached(self, slot: Slot, transport: AsyncTransport) -> None:
        slot.transport, slot.last_used = transport, time.monotonic()
        transport.on_lost = lambda reason: self._lost(slot, reason)
        if slot.phase is not SlotPhase.STARTING:
            self._stop(slot, drain=True)  # retired while it started
            return
        if slot.spare and self.pauser is not None and not self.waiters and not self.host.closing:
            self._pause(slot)
            self.start_error = None
            return
        slot.spare = False
        slot.phase = SlotPhase.READY
        self.start_error = None
        self._dispatch()

    def _start_failed(self, exc: FnctlError) -> None:
        message = exc.message + (f"\n{exc.detail}" if exc.detail else "")
        log.warning("%s: an instance failed to start: %s", self.name, message)
        self.start_error = (time.monotonic(), exc.message)
        if not any(s.phase in (SlotPhase.READY, SlotPhase.STARTING) for s in self.slots.values()):
            error = Unavailable(f"{self.name} could not start an instance: {exc.message}")
            while self.waiters:
                future = self.waiters.popleft()
                if not future.done():
                    future.set_exception(error)

    def _retire(self, slot: Slot, reason: str) -> None:
        """No new requests for `slot`; it stops once its in-flight ones end. A replacement starts now."""
        if slot.phase in (SlotPhase.READY, SlotPhase.STARTING):
            slot.phase, slot.retire_reason = SlotPhase.RETIRING, reason
            self.scale()

    def let_go(self, slot: Slot) -> None:
        """A follower worker: the owner removed `slot`'s instance from the store. No new requests go to it;
        its connection is closed once the last one ends (and nothing is stopped from here: `Host.stop_instance`)."""
        if slot.inflight:
            slot.phase, slot.retire_reason = SlotPhase.RETIRING, ""
        else:
            self._stop(slot, drain=True)

    def _stop(self, slot: Slot, *, drain: bool) -> None:
        drain = drain and slot.phase is not SlotPhase.PAUSED  # a frozen runtime cannot drain
        self._forget(slot)
        self.host.spawn(self._close_and_stop(slot, drain))
        self.scale()

    async def _close_and_stop(self, slot: Slot, drain: bool) -> None:
        if slot.transport is not None:
            await slot.transport.close()
        await self.host.stop_instance(self.target, slot, drain=drain)

    def _lost(self, slot: Slot, reason: str) -> None:
        """The runtime went away: its in-flight requests learn why, the instance is removed and replaced."""
        log.warning("%s: lost instance %s: %s", self.name, slot.id, reason)
        if slot.inflight:
            slot.death = asyncio.ensure_future(self.host.death_cause(self.target, slot))
        # A process that only adopts knows only that its own connection broke: the instance may run on, and
        # stays adoptable (the next look at who runs it, the store or Swarm, connects again while it is listed).
        self._bury(slot, remember=not self.host.adopts_only)

    def _bury(self, slot: Slot, *, remember: bool = True) -> None:
        self._forget(slot, remember=remember)
        self.host.spawn(self._after_death(slot))
        self.scale()

    def _forget(self, slot: Slot, *, remember: bool = True) -> None:
        slot.phase = SlotPhase.GONE
        if slot.shared is not None and not slot.inflight:  # else the last request's release closes them
            slot.shared.close()
        self.slots.pop(slot.id, None)
        if remember:
            self.gone[slot.id] = None
        while len(self.gone) > REMEMBERED:
            self.gone.popitem(last=False)

    async def _after_death(self, slot: Slot) -> None:
        if slot.death is not None:
            await asyncio.wait([slot.death])  # read the exit state before the container is removed
        await self.host.stop_instance(self.target, slot, drain=False)

    async def close(self) -> None:
        """Stop every instance beyond `keep` (the gateway's extras), detach from the rest."""
        ready = sorted((s for s in self.slots.values() if s.ready), key=lambda s: s.order)
        for slot in list(self.slots.values()):
            if slot not in ready[: self.keep] and slot.phase is not SlotPhase.STARTING:
                self._stop(slot, drain=not slot.retire_reason)
        for slot in ready[: self.keep]:
            if slot.transport is not None:
                await slot.transport.close()
