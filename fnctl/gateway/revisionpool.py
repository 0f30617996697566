"""One revision's instance pool: the requests it serves, queued (first come, first served) while every
instance is busy, shed when the wait they would have exceeds what the caller can get, and the outcome of each,
retiring an instance that timed out, crashed or broke the protocol. Its instances and their upkeep (minInstances
kept warm, scaling with load up to maxInstances, idle ones stopped, crashed ones replaced) are
`fnctl.gateway.poolinstances`'.

It lives on the gateway's event loop and acts through its `Host` (fnctl.gateway.pools.PoolManager), which runs the
container starts and stops in worker threads; what to do is decided by the pure functions of `scaling`. The
values they exchange are fnctl.gateway.poolhost's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from fnctl.engine import instances
from fnctl.gateway.poolhost import Host, Overloaded, Pauser, PoolResult, Slot, SlotPhase, Target, Unavailable
from fnctl.gateway.poolinstances import PoolInstances
from fnctl.gateway.scaling import Routing, refuse, retry_after
from fnctl.gateway.shedding import Shed, answer_rate, shed
from fnctl.invocation.aiotransport import FrameTooLarge
from fnctl.invocation.outcome import RECYCLE, Failure, Outcome, outcome_of
from fnctl.invocation.protocol import ConnectionLost, EncodedJson, ErrorKind, TransportError
from fnctl.invocation.transport import TransportTimeout

# Who an invocation runs for, as the handler sees it: a dict, or its JSON text (encoded once per principal)
CallerIdentity = Mapping[str, Any] | EncodedJson | None
TIMEOUT_GRACE = 0.5  # seconds past the function's timeout before an invocation counts as timed out
DRAIN_RETRIES = 3  # an instance being drained by `fnctl apply` refuses work: try another this many times


def _failed(failure: Failure, message: str, started: float) -> Outcome:
    return Outcome(False, None, failure, message, "", "", (time.monotonic() - started) * 1000)


class RevisionPool(PoolInstances):
    """One revision's pool: its instances (`PoolInstances`) and the requests served by them. Lives on one
    event loop."""

    rate = 0.0  # answers per second, over about the last shedding.RATE_WINDOW seconds (`answer_rate`)
    answered = 0.0  # time.monotonic() of the last answer

    def __init__(self, host: Host, target: Target, *, routing: Routing, pauser: Pauser | None = None) -> None:
        super().__init__(host, target, routing=routing, pauser=pauser)
        # The queued requests' deadlines, oldest first (a dict keeps insertion order), under one timer for the
        # oldest: a timer per queued request (a TimerHandle, a heap push, a cancellation) cost more than the
        # rest of queueing it, and 200 clients on 4 x 8 slots queue nearly every request.
        self._deadlines: dict[asyncio.Future[Slot], float] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # asked once: each get_running_loop() is a getpid()

    # ---- requests ----

    async def invoke(self, event: Any, caller: CallerIdentity, request_id: str) -> PoolResult:
        for _ in range(DRAIN_RETRIES):
            # A free instance is claimed without a coroutine of its own (the common case: one less await
            # level per request); nobody overtakes a queued request
            slot = None if self.waiters else self._claim()
            if slot is not None:
                cold = slot.thawing  # a reserve thawed for it on admission: still a cold start
            else:
                slot, cold = await self._queue()
            try:
                outcome = await self._run(slot, event, caller, request_id)
            finally:
                self._release(slot)
            if outcome is not None:
                return PoolResult(outcome, slot.id, cold)
        raise Unavailable(f"{self.name}: every instance tried is being drained")

    def _counts(self) -> tuple[int, int]:
        """(ready, starting) instances, in one pass (asked for every request that finds them all busy)."""
        ready = starting = 0
        for slot in self.slots.values():
            if slot.ready:
                ready += 1
            elif slot.phase is SlotPhase.STARTING:
                starting += 1
        return ready, starting

    def shed(self, counts: tuple[int, int] | None = None) -> Shed | None:
        """Whether a request arriving now would be refused for the wait it would have (None: admitted).
        Asked by the gateway before it reads a request's body, and again here before a request queues."""
        if not self.waiters:  # nobody ahead: it waits for one invocation at most, never longer than a timeout
            return None
        ready, starting = counts or self._counts()
        if not ready:
            return None  # a cold start: bounded by the start timeout, not by this estimate
        return shed(
            queued=len(self.waiters),
            capacity=(ready + starting) * self.concurrency,
            latency=self.latency,
            limit=self.max_wait,
            rate=self.rate,
        )

    async def _queue(self) -> tuple[Slot, bool]:
        ready, starting = counts = self._counts()
        refused = self.shed(counts)
        if refused is not None:
            raise Overloaded(
                refused.retry_after,
                f"{self.name}: all instances busy; the wait ({refused.wait:.3g}s) would exceed {self.max_wait:g}s",
            )
        if refuse(
            ready=ready,
            starting=starting,
            queued=len(self.waiters),
            queue_limit=self.host.queue_limit,
            scaling=self.target.function.scaling,
            can_start=not self._backing_off(),
        ):
            raise Overloaded(self._retry_after(), f"{self.name}: all instances busy and the queue is full")
        cold = not ready
        if cold and self._backing_off() and not starting:
            assert self.start_error is not None
            raise Unavailable(f"{self.name} could not start an instance: {self.start_error[1]}")
        loop = self._loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Slot] = loop.create_future()
        self.waiters.append(future)
        if ready + starting < max(self.target.function.scaling.max_instances, self.keep) or self.host.crew is not None:
            self.scale()  # (at maxInstances, with no crew to tell its load, there is nothing it could start)
        self._deadlines[future] = loop.time() + self._queue_limit
        if self._expiry is None:
            self._arm()
        try:
            return await future, cold
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._release(future.result())  # served just as the caller gave up: hand the slot back
            elif future in self.waiters:  # given up or expired while queued (served ones left the queue)
                self.waiters.remove(future)
            raise
        finally:
            del self._deadlines[future]

    @property
    def _queue_limit(self) -> float:
        """How long a request may stay queued: its timeout, and a start on top (it may be waiting for one)."""
        return self.target.function.limits.timeout + instances.START_TIMEOUT

    def _arm(self) -> None:
        """The queue's timer, for the oldest request still waiting (none: no timer)."""
        self._expiry = None
        for future, deadline in self._deadlines.items():
            if not future.done():
                assert self._loop is not None
                self._expiry = self._loop.call_at(deadline, self._expire)
                return

    def _expire(self) -> None:
        """Fail the queued requests past their deadline, oldest first, then wait for the next one's."""
        assert self._loop is not None
        now = self._loop.time()
        for future, deadline in self._deadlines.items():
            if deadline > now:
                break
            if not future.done():
                future.set_exception(
                    Unavailable(f"{self.name}: no instance became available within {self._queue_limit:g}s")
                )
        self._arm()

    def _release(self, slot: Slot) -> None:
        self._unclaim(slot)
        slot.last_used = time.monotonic()
        if not slot.ready and slot.phase is SlotPhase.RETIRING and slot.inflight == 0:  # (`phase`: a property)
            self._stop(slot, drain=not slot.retire_reason)  # retired for a failure: no waiting for it
        elif self.waiters:
            self._dispatch()

    async def _run(self, slot: Slot, event: Any, caller: CallerIdentity, request_id: str) -> Outcome | None:
        """One invocation on `slot`; None when the instance is being drained and another must be tried."""
        limits, started = self.target.function.limits, time.monotonic()
        assert slot.transport is not None
        try:
            result = await slot.transport.invoke(
                event,
                invocation_id=request_id,
                deadline=time.time() + limits.timeout,
                caller=caller,
                timeout=limits.timeout + TIMEOUT_GRACE,
            )
        except FrameTooLarge as exc:
            return _failed(Failure.PAYLOAD_TOO_LARGE, f"the event is too large: {exc.message}", started)
        except TransportTimeout:
            self._retire(slot, "another invocation on it timed out")
            return _failed(
                Failure.TIMEOUT,
                f"the function did not finish within its timeout of {limits.timeout:g}s; "
                "the instance is being replaced",
                started,
            )
        except ConnectionLost:
            return await self._crash_outcome(slot, started)
        except TransportError as exc:
            self._retire(slot, "it broke the protocol")
            return _failed(Failure.CRASHED, f"the instance broke the protocol: {exc.message}", started)
        if result.error is not None and result.error.kind is ErrorKind.DRAINING:
            slot.phase = SlotPhase.DRAINING if slot.phase is SlotPhase.READY else slot.phase
            return None
        now = time.monotonic()
        self.latency += ((now - started) - self.latency) * 0.2
        self.rate, self.answered = answer_rate(self.rate, now - self.answered), now
        outcome = outcome_of(result)
        if outcome.failure in RECYCLE:
            self._retire(slot, f"another invocation on it failed: {outcome.failure}")
        return outcome

    async def _crash_outcome(self, slot: Slot, started: float) -> Outcome | None:
        """The outcome of a request whose connection broke; None when it never ran (drained: try elsewhere)."""
        if slot.death is None:  # closed on purpose (retired, or the gateway is stopping)
            reason = slot.retire_reason or "the gateway stopped it"
            return _failed(Failure.CRASHED, f"the instance was stopped during the invocation ({reason})", started)
        failure, message = await asyncio.shield(slot.death)
        return None if failure is None else _failed(failure, message, started)

    def _retry_after(self) -> float:
        capacity = sum(s.ready for s in self.slots.values()) * self.concurrency
        return retry_after(queued=len(self.waiters), capacity=capacity, latency=self.latency)
