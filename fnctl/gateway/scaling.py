"""The instance pool's decisions, as pure functions: how a revision's place in the routing table sets what
is kept warm, which instance takes a request, how many instances to start, which idle ones to stop, when a
busy revision refuses a request, and when a refused caller should come back. No I/O, no clock: callers pass
the time in; tests cover them without a Docker engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Protocol, TypeVar

from fnctl.manifest.model import Scaling


class Routing(StrEnum):
    """A revision's place in its function's routing-table weights."""

    ROUTED = "routed"  # weight > 0: takes a share of the traffic
    WARM = "warm"  # weight 0 but listed: a blue-green preview, or the old revision during scaleDownDelay
    UNROUTED = "unrouted"  # not listed: reached only by pinning, drained after the grace


def routing_of(weights: Mapping[int, int] | None, revision: int) -> Routing:
    if weights is None or revision not in weights:
        return Routing.UNROUTED
    return Routing.ROUTED if weights[revision] > 0 else Routing.WARM


def kept_warm(routing: Routing, scaling: Scaling) -> int:
    """Instances kept running however idle: minInstances for a revision in the routing table (a listed 0%
    revision must be ready to take traffic at once when it is switched to), none for an unrouted one."""
    return 0 if routing is Routing.UNROUTED else scaling.min_instances


def may_start(weights: Mapping[int, int] | None) -> bool:
    """Whether the gateway may start an instance of a function whose routing-table entry is `weights`
    (None: not listed). Never for a function the table does not list, deleted or never deployed, whatever a
    pool, its upkeep or a request asks for: such an instance would serve nobody and run unseen. A listed
    function's unrouted revisions may still start, for pinned requests."""
    return weights is not None


def discard_now(weights: Mapping[int, int] | None, *, instances: int, queued: int) -> bool:
    """Whether a revision's pool can go at once rather than after the grace: its function is gone from the
    table (nothing can ask for it again) and it holds no instance and no request."""
    return weights is None and instances == 0 and queued == 0


class Candidate(Protocol):
    """What the decisions need to know of an instance."""

    @property
    def ready(self) -> bool: ...

    @property
    def inflight(self) -> int: ...

    @property
    def order(self) -> int: ...

    @property
    def last_used(self) -> float: ...

    @property
    def units(
        self,
    ) -> int | None: ...  # requests at once this process may send it (None: `concurrency`; fnctl.gateway.workers)


C = TypeVar("C", bound=Candidate)


def pick(candidates: Iterable[C], concurrency: int) -> C | None:
    """The ready instance with the fewest requests in flight, if one has room under `concurrency`. Ties go to
    the oldest: light traffic then stays on few instances and the others go idle, to be stopped."""
    best: C | None = None
    for c in candidates:  # every request's: no tuples built to compare
        if c.ready:
            inflight = c.inflight
            if inflight < (concurrency if c.units is None else c.units) and (
                best is None or inflight < best.inflight or (inflight == best.inflight and c.order < best.order)
            ):
                best = c
    return best


def to_start(*, ready: int, starting: int, inflight: int, queued: int, scaling: Scaling, keep: int) -> int:
    """How many instances to start now: enough for every in-flight and queued request at `concurrency`
    each, never fewer than `keep` (`kept_warm`), never more than maxInstances in all."""
    needed = -(-(inflight + queued) // max(scaling.concurrency, 1))  # ceiling division
    wanted = min(max(keep, needed), max(scaling.max_instances, keep))
    return max(wanted - ready - starting, 0)


def refuse(*, ready: int, starting: int, queued: int, queue_limit: int, scaling: Scaling, can_start: bool) -> bool:
    """Whether a request that finds every instance busy is refused (429) rather than queued: only when the
    queue is full and no more instances can come, because the revision is at maxInstances (those starting
    count) or because starts are failing (`can_start` false) and none is under way. Below maxInstances a
    request waits for the instances being started, bounded by its timeout."""
    if queued < queue_limit:
        return False
    if ready + starting >= scaling.max_instances:
        return True
    return not can_start and starting == 0


def idle_to_stop(candidates: Iterable[C], *, now: float, idle_seconds: float, keep: int) -> list[C]:
    """Ready instances with nothing in flight for `idle_seconds`, newest first, leaving `keep` ready ones."""
    ready = [c for c in candidates if c.ready]
    spare = len(ready) - keep
    if spare <= 0:
        return []
    idle = [c for c in ready if c.inflight == 0 and now - c.last_used >= idle_seconds]
    return sorted(idle, key=lambda c: c.order, reverse=True)[:spare]


def retry_after(*, queued: int, capacity: int, latency: float) -> float:
    """Seconds after which a refused caller may find room: the time to work off the queue, 1 to 60 s."""
    return min(max(latency * (queued + 1) / max(capacity, 1), 1.0), 60.0)
