"""onCommit delivery: the gateway's dispatcher of the outbox (`fnctl.state.outbox`).

Each change of a collection with onCommit Triggers is queued for each of them in the change's own
transaction (the write path does it: `DataPlane(outbox=...)`), so an event exists exactly when its change
committed, and survives any crash of the gateway. The dispatcher wakes when a commit queued something (the
data plane's listeners) and at least every `poll` seconds (for writes of other processes, and retries), takes
the due events (the oldest pending one of each document and trigger: a document's events go out in order),
delivers them concurrently through the gateway's invocation path (routed by the weights, measured, audited;
as the principal `trigger:NAME` in the document's tenant), and records the round in one transaction:
delivered, retried later (`retry: {maxAttempts, backoff}`, exponential), or dead after the last attempt.

At least once: an event is marked delivered only after its handler returned, so a gateway killed meanwhile
delivers it again when it is back. The handler de-duplicates on `eventId` (`TRIGGER:SEQ`, stable).
Delivered events are kept DELIVERED_RETENTION seconds, dead letters DEAD_RETENTION (then pruned).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from fnctl.data.committed import Committed
from fnctl.gateway.broker import Broker
from fnctl.gateway.metrics import Metrics
from fnctl.manifest.units import parse_duration
from fnctl.state.outbox import OutboxEvent

log = logging.getLogger("fnctl.events")
Deliver = Callable[[str, str, Any, str], Awaitable[tuple[bool, str]]]  # (trigger, function, event, tenant)
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF = 1.0  # seconds before the 2nd attempt; doubled each time
MAX_BACKOFF = 300.0
DELIVERED_RETENTION = 3600.0  # seconds a delivered event is kept (`fnctl events ls --state delivered`)
DEAD_RETENTION = 7 * 86400.0  # seconds a dead letter is kept for `fnctl events replay`
ROUND = 256  # events taken per round
PRUNE_EVERY = 60.0


def retry_policy(spec: Mapping[str, Any] | None) -> tuple[int, float]:
    """(maxAttempts, backoff seconds) of a Trigger spec's `retry`, with the defaults."""
    retry = spec.get("retry") if isinstance(spec, Mapping) else None
    if not isinstance(retry, Mapping):
        return DEFAULT_MAX_ATTEMPTS, DEFAULT_BACKOFF
    attempts = retry.get("maxAttempts", DEFAULT_MAX_ATTEMPTS)
    backoff = retry.get("backoff", DEFAULT_BACKOFF)
    try:
        seconds = parse_duration(backoff) if isinstance(backoff, str) else float(backoff)
    except (TypeError, ValueError):
        seconds = DEFAULT_BACKOFF
    return (int(attempts) if isinstance(attempts, int) and attempts >= 1 else DEFAULT_MAX_ATTEMPTS), seconds


def next_attempt(attempts: int, max_attempts: int, backoff: float, now: float) -> float | None:
    """When to try again after the `attempts`-th failed attempt; None: that was the last (a dead letter)."""
    if attempts >= max_attempts:
        return None
    return now + min(MAX_BACKOFF, backoff * 2.0 ** (attempts - 1))


def event_body(event: OutboxEvent) -> dict[str, Any]:
    """What the handler receives."""
    return {
        "eventId": f"{event.trigger}:{event.seq}",
        "trigger": event.trigger,
        "event": "onCommit",
        "collection": event.collection,
        "op": event.op,
        "id": event.doc_id,
        "seq": event.seq,
        "at": event.at,
        "before": json.loads(event.before) if event.before else None,
        "after": json.loads(event.after) if event.after else None,
        "attempt": event.attempts + 1,
    }


class Dispatcher:
    def __init__(
        self,
        broker: Broker,
        deliver: Deliver,
        triggers: Callable[[], Mapping[str, Mapping[str, Any]] | None],
        *,
        poll: float = 1.0,
        concurrency: int = 32,
        paused: Callable[[], Iterable[str]] = tuple,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.broker, self._deliver = broker, deliver
        self._triggers = triggers  # the Trigger resources; None until the gateway has read its table
        self._paused = paused  # triggers whose events wait (kept pending, attempts untouched)
        self.poll = poll
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pruned = 0.0
        broker.plane.listeners.append(self._committed)

    def _committed(self, changes: Sequence[Committed]) -> None:
        """On the committing thread: wake the dispatcher when the commit queued events."""
        loop = self._loop
        routes = self.broker.plane.outbox_routes() or {}
        if loop is not None and any(c.collection in routes for c in changes):
            loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set (the round in progress is finished first)."""
        self._loop = asyncio.get_running_loop()
        store = self.broker.plane.store
        while not stop.is_set():
            self._wake.clear()
            try:
                triggers = self._triggers()
                paused = tuple(self._paused())
                due = (
                    []
                    if triggers is None
                    else await self.broker.run(partial(store.outbox_due, time.time(), ROUND, paused))
                )
                if due and triggers is not None:
                    await self._round(due, triggers)
                if time.time() - self._pruned > PRUNE_EVERY:
                    self._pruned = time.time()
                    delivered, dead = self._pruned - DELIVERED_RETENTION, self._pruned - DEAD_RETENTION
                    await self.broker.run(partial(store.outbox_prune, delivered, dead))
            except Exception:  # a busy data file: the next round tries again
                log.exception("delivering onCommit events failed; retrying")
                due = []
            if len(due) < ROUND:
                waits = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
                await asyncio.wait(waits, timeout=self.poll, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()

    async def _round(self, due: Sequence[OutboxEvent], triggers: Mapping[str, Mapping[str, Any]]) -> None:
        outcomes = await asyncio.gather(*(self._one(event, triggers.get(event.trigger)) for event in due))
        delivered, failed = [], []
        now = time.time()
        for event, (ok, error) in zip(due, outcomes, strict=True):
            if ok:
                delivered.append((event.trigger, event.seq))
                continue
            attempts = event.attempts + 1
            max_attempts, backoff = retry_policy(triggers.get(event.trigger))
            when = next_attempt(attempts, max_attempts, backoff, now)
            if when is None:
                log.warning(
                    "onCommit %s:%s is a dead letter after %d attempts: %s", event.trigger, event.seq, attempts, error
                )
            failed.append((event.trigger, event.seq, attempts, when, error))
        store = self.broker.plane.store
        await self.broker.run(lambda: store.outbox_settle(delivered, failed))
        if self.metrics is not None:
            for trigger, _ in delivered:
                self.metrics.event(trigger, delivered=1)
            for trigger, _, _, when, _ in failed:
                self.metrics.event(trigger, failed=1, dead=int(when is None))

    async def _one(self, event: OutboxEvent, spec: Mapping[str, Any] | None) -> tuple[bool, str]:
        if spec is None or not isinstance(spec.get("function"), str):
            return False, f"no trigger {event.trigger!r} (it was deleted)"
        async with self._slots:
            try:
                return await self._deliver(event.trigger, spec["function"], event_body(event), event.tenant)
            except Exception as exc:  # noqa: BLE001 -- a failed delivery is retried, whatever it was
                return False, f"{type(exc).__name__}: {exc}"
