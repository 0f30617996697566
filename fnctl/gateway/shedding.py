"""Overload without collapse, decided purely: a request that finds a revision's instances busy is refused
(429) only when the wait it would have in the queue is longer than it may wait, never because a queue
reached a fixed length. The wait is estimated from what the pool sees: the requests ahead of it, the
latency it observes and the slots it has (queue length × observed latency ÷ capacity), or, when lower, the
queue worked off at the rate the pool has been answering (queue length ÷ answers per second over the last
RATE_WINDOW seconds); the same estimate tells the refused caller when to come back (`Retry-After`). No I/O,
no clock.

Why: a fixed queue of 64 behind 4 × 8 slots refused 79 % of 200 keep-alive clients whose wait would have
been a few milliseconds, and every refusal ran the whole pipeline, so most of the gateway's CPU went to
refusing. Shedding by the expected wait refuses only what could not be served in time anyway, and the
gateway asks before it reads the body or builds the event: the decision costs a few microseconds, and
a refusal no body, no event, no pool work.

Why the rate too: the latency is a moving average of the last few invocations, and when the gateway itself
is held up (a machine under load deschedules it for a second), every invocation in flight at that moment is
measured a second long: with 200 clients on 4 x 8 slots (a queue of 168) the average says a wait of 5 s and
refused a round of requests that were then served in 0.2 s. The rate, counted over seconds, barely moves
for such a pause; a real overload (slow instances, a growing queue) lowers both, and then both refuse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RETRY_MIN = 1  # seconds: Retry-After is a whole number of seconds (RFC 9110), at least 1
RETRY_MAX = 60  # a caller is never told to stay away longer than this
RATE_WINDOW = 2.0  # seconds: the answers counted for the rate, fading out over about this long


@dataclass(frozen=True, slots=True)
class Shed:
    """A refusal: the wait the request would have had, and when to come back (whole seconds)."""

    wait: float
    retry_after: int


def expected_wait(*, queued: int, capacity: int, latency: float, rate: float = 0.0) -> float | None:
    """Seconds a request arriving now waits for a slot: the `queued` ahead of it and itself, served
    `capacity` at a time, each taking `latency`, or answered at `rate` per second when that is sooner (0: no
    rate seen). None without capacity (no instance ready yet: the wait is a start's, bounded by the start
    timeout, not by this estimate)."""
    if capacity <= 0:
        return None
    wait = (queued + 1) * max(latency, 0.0) / capacity
    return min(wait, (queued + 1) / rate) if rate > 0 else wait


def answer_rate(rate: float, elapsed: float) -> float:
    """The answers per second after one more, `elapsed` seconds after the one before: a count that fades
    out over RATE_WINDOW seconds, divided by it (the rate seen over about the last RATE_WINDOW seconds)."""
    return rate * math.exp(-max(elapsed, 0.0) / RATE_WINDOW) + 1.0 / RATE_WINDOW


def max_wait(timeout: float, configured: float | None) -> float:
    """How long a request may wait in the queue: the function's timeout (a request that waits longer could
    not finish within the time its caller was promised), or the gateway's `maxQueueWait` when lower."""
    return timeout if configured is None else min(timeout, configured)


def retry_after(wait: float) -> int:
    """Whole seconds after which the queue the estimate saw is worked off, within RETRY_MIN..RETRY_MAX."""
    if not wait < RETRY_MAX:  # NaN and infinity too
        return RETRY_MAX
    return max(RETRY_MIN, math.ceil(wait))


def shed(*, queued: int, capacity: int, latency: float, limit: float, rate: float = 0.0) -> Shed | None:
    """The refusal of a request that would queue behind `queued` others, or None to admit it."""
    wait = expected_wait(queued=queued, capacity=capacity, latency=latency, rate=rate)
    if wait is None or wait <= limit:
        return None
    return Shed(wait, retry_after(wait))
