"""What a revision pool and its host (fnctl.gateway.pools.PoolManager) exchange: the `Host` protocol, the
`Target` revision it runs and the `Slot` of each instance; and what a pool answers the gateway (`PoolResult`,
`PoolStats`, `Overloaded`, `Unavailable`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from fnctl.errors import FnctlError
from fnctl.gateway.crew import Crew, SharedUnits
from fnctl.invocation.aiotransport import AsyncCallHandler, AsyncTransport
from fnctl.invocation.outcome import Failure, Outcome
from fnctl.invocation.rendezvous import PeerCheck
from fnctl.manifest.model import Function


@dataclass(slots=True)  # made per request: a frozen one's __init__ costs ~5x (a setattr per field)
class PoolResult:
    outcome: Outcome
    instance: str
    cold_start: bool  # the request found no ready instance and waited for one to start


@dataclass(frozen=True)
class PoolStats:
    instances: int  # starting, ready and retiring
    ready: int
    inflight: int
    queued: int = 0


class Overloaded(FnctlError):
    """A request would wait longer than it may (fnctl.gateway.shedding), or the revision is at maxInstances
    with every instance busy and its queue at the `queue_limit` backstop (→ 429 with Retry-After); below
    maxInstances requests wait for the instances being started instead."""

    def __init__(self, retry_after: float, message: str = "too many requests in flight: try again later") -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(FnctlError):
    """The revision cannot serve: unknown, failed, failed to start, or the gateway is closing (→ 503)."""


@dataclass(frozen=True)
class Target:
    """A revision as the pool runs it: its function (limits, scaling), image and secret values."""

    function: Function
    revision: int
    image: str
    secrets: dict[str, str]
    max_wait: float | None = None  # the gateway's maxQueueWait (None: the function's timeout alone)


# A started instance, its runtime connected to and ready: (container id, socket directory, its transport).
Started = tuple[str, str, AsyncTransport]


class SlotPhase(StrEnum):
    STARTING = "starting"  # container starting, an adopted runtime being connected to, or a paused one thawing
    PAUSED = "paused"  # `scaling.warm: paused`: started, connected and frozen, the reserve of a scale-up
    READY = "ready"  # connected and configured: the only phase that receives requests
    RETIRING = "retiring"  # no new requests; stopped once its last one ends
    DRAINING = "draining"  # `fnctl apply` is draining it: no new requests; it goes away by itself
    GONE = "gone"


FIRST_ANSWER_WAIT = 1.0  # seconds: a thawed reserve stays the reserve at most this long while its first request runs


@dataclass(eq=False)
class Slot:
    """One instance of a revision as the pool sees it."""

    id: str
    order: int
    container_id: str = ""
    socket_dir: str = ""
    _phase: SlotPhase = field(default=SlotPhase.STARTING, init=False)  # `phase`
    # `phase is READY`, kept by `phase`'s setter: a plain attribute, read for every instance on every request
    # (`scaling.pick`), where a property cost ~0.15 us a read (~0.7 us per request)
    ready: bool = field(default=False, init=False)
    inflight: int = 0
    last_used: float = 0.0
    transport: AsyncTransport | None = None
    death: asyncio.Future[tuple[Failure | None, str]] | None = None  # why it died, for its in-flight requests
    retire_reason: str = ""
    spare: bool = False  # started for the warm reserve: paused once ready, unless a request waits for it
    units: int | None = None  # requests at once this process may send it: its share (`--workers`), None: all
    shared: SharedUnits | None = None  # `--workers` above its concurrency: each request leases a unit (crew)
    thawing: bool = False  # a thawed reserve serving while the engine's unpause is under way (a cold start)

    @property
    def phase(self) -> SlotPhase:
        return self._phase

    @phase.setter
    def phase(self, phase: SlotPhase) -> None:
        self._phase, self.ready = phase, phase is SlotPhase.READY

    async def first_answer(self) -> None:
        """Return once its runtime has answered a request (at once if it ever did), or after FIRST_ANSWER_WAIT."""
        if self.transport is not None:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.transport.answered.wait(), FIRST_ANSWER_WAIT)


class Pauser(Protocol):
    """Pauses and thaws instances, for the pools of functions with `scaling.warm: paused`."""

    async def pause_instance(self, slot: Slot, paused: bool) -> None: ...


class Host(Protocol):
    """What a RevisionPool needs from its manager."""

    idle_seconds: float
    grace_seconds: float
    queue_limit: int
    closing: bool
    adopts_only: bool  # it connects to instances someone else runs (Swarm, the owner worker), starts none
    crew: Crew | None  # the other gateway processes of `fnctl serve --workers`, None when this is the only one

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]: ...

    async def start_instance(self, target: Target, instance_id: str) -> Started: ...

    async def stop_instance(self, target: Target, slot: Slot, *, drain: bool) -> None: ...

    def on_call(self, function: str, revision: int) -> AsyncCallHandler | None: ...

    def peer_check(self, slot: Slot) -> PeerCheck:
        """Who may connect as `slot`'s runtime (its container's processes)."""

    async def death_cause(self, target: Target, slot: Slot) -> tuple[Failure | None, str]:
        """Why the runtime went away; None when it exited cleanly after a drain, which waits for every
        invocation it accepted: a request cut by that exit never ran and may be sent elsewhere."""


def lease_any(slots: Iterable[Slot], concurrency: int) -> Slot | None:
    """The least busy ready instance with room whose unit this worker could lease now (taken), or one of no
    leased units: the request's instance when the one `scaling.pick` chose has every unit held elsewhere."""
    free = sorted((s for s in slots if s.ready and s.inflight < concurrency), key=lambda s: (s.inflight, s.order))
    return next((s for s in free if s.shared is None or s.shared.take()), None)
