"""Cron triggers, run inside the gateway: schedules (croniter, in the trigger's time zone) from the
Trigger resources in the store, each tick claimed in `cron_state` before it runs, so that no tick ever
runs twice, whether the gateway restarts or two gateways share a store.

A run missed while no gateway was up runs once at start-up (`missed: runOnce`) or not at all (`skip`,
the default). A sixth field, after the day of the week, gives seconds (`*/5 * * * * *`: every 5 s).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from croniter import croniter

from fnctl.state import cronstate
from fnctl.state.location import StateLocation
from fnctl.state.store import Store, StoreError, connect

log = logging.getLogger("fnctl.cron")
T = TypeVar("T")
Invoke = Callable[[str, str, Any], Awaitable[Any]]  # (trigger name, function, event) → the gateway's invoke
# The tick (seconds since the epoch) a run is for, readable inside `invoke`: one id per run, e.g. for the
# audit's request id, the same in every process that might have run it.
current_tick: ContextVar[float] = ContextVar("fnctl_cron_tick")


class Missed(StrEnum):
    RUN_ONCE = "runOnce"
    SKIP = "skip"


@dataclass(frozen=True)
class CronTrigger:
    name: str
    function: str
    schedule: str
    timezone: str
    missed: Missed
    event: Any

    def next_tick(self, after: float) -> float:
        """The first tick strictly after `after` (seconds since the epoch)."""
        start = datetime.fromtimestamp(after, ZoneInfo(self.timezone))
        return float(croniter(self.schedule, start).get_next(float))

    def latest_tick(self, at: float) -> float:
        """The last tick at or before `at`."""
        start = datetime.fromtimestamp(at, ZoneInfo(self.timezone))
        previous = float(croniter(self.schedule, start).get_prev(float))
        following = self.next_tick(previous)  # get_prev is strict: `at` may itself be a tick
        return following if following <= at else previous


def cron_triggers(resources: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, CronTrigger], dict[str, str]]:
    """The cron triggers among Trigger specs (as written in manifests), and the problem of each invalid one."""
    triggers, problems = {}, {}
    for name, spec in resources.items():
        cron = spec.get("cron")
        if not isinstance(cron, Mapping):
            continue
        try:
            trigger = CronTrigger(
                name,
                str(spec["function"]),
                str(cron["schedule"]),
                str(cron.get("timezone", "UTC")),
                Missed(cron.get("missed", Missed.SKIP.value)),
                cron.get("event", {}),
            )
            trigger.next_tick(time.time())  # an invalid schedule or zone fails here, not at its first tick
        except (KeyError, ValueError, OSError) as exc:  # croniter's and zoneinfo's errors are ValueErrors/OSErrors
            problems[name] = f"{type(exc).__name__}: {exc}"
            continue
        triggers[name] = trigger
    return triggers, problems


class CronRunner:
    """Runs every cron trigger of a store until stopped; picks up changed Trigger resources within
    `reload_interval` seconds. Store access happens on one worker thread of its own. `moved` (SQLite:
    `TableFollower.subscribe`): whether the store changed since it was last asked; the triggers are re-read
    only then (or after a failed read), not every `reload_interval` in the worker thread."""

    def __init__(
        self,
        store_path: StateLocation,
        invoke: Invoke,
        *,
        reload_interval: float = 1.0,
        drain_timeout: float = 30.0,
        moved: Callable[[], bool] | None = None,
    ) -> None:
        self._store_path = store_path
        self._moved = moved
        self._retry = False  # the last reload failed in part: the next one is due whatever `moved` says
        self._invoke = invoke
        self._reload = reload_interval
        self._drain_timeout = drain_timeout
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fnctl-cron")
        self._store: Store | None = None
        self._triggers: dict[str, CronTrigger] = {}
        self._next: dict[str, float] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._seen: set[str] = set()  # triggers whose missed runs this process has dealt with
        self._problems: dict[str, str] = {}  # invalid triggers, as last reported
        self.ready = asyncio.Event()  # set once every trigger is scheduled and missed runs are dealt with

    async def run(self, stop: asyncio.Event) -> None:
        """Schedule until `stop` is set, then wait (up to the drain timeout) for runs in progress."""
        try:
            self._store = await self._db(connect, self._store_path)
            while not stop.is_set():
                if self._retry or self._moved is None or self._moved():
                    self._retry = False
                    await self._refresh()
                self.ready.set()
                await self._fire_due()
                wake = min(self._next.values(), default=time.time() + self._reload)
                delay = max(0.0, min(wake - time.time(), self._reload))
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass
        finally:
            await self._drain()
            if self._store is not None:
                await self._db(self._store.close)
            self._worker.shutdown(wait=False)

    async def _db(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, partial(function, *args))

    async def _refresh(self) -> None:
        """Take in added, changed and removed triggers."""
        assert self._store is not None
        try:
            current, problems = cron_triggers(await self._db(self._store.resources, "Trigger"))
        except StoreError as exc:  # the store is busy or unreachable: keep the current schedule
            log.warning("cron triggers not reloaded: %s", exc)
            self._retry = True
            return
        for name, problem in problems.items():
            if self._problems.get(name) != problem:  # said once, not at every reload
                log.error("cron trigger %s ignored: %s", name, problem)
        self._problems = problems
        for name in set(self._triggers) - set(current):
            self._forget(name)
        for name, trigger in current.items():
            if self._triggers.get(name) != trigger:
                first = name not in self._seen
                self._triggers[name] = trigger
                try:
                    await self._arm(trigger, first)
                    self._seen.add(name)
                except StoreError as exc:
                    log.warning("cron %s: not scheduled yet, will retry: %s", name, exc)
                    self._forget(name)
                    self._retry = True

    def _forget(self, name: str) -> None:
        self._triggers.pop(name, None)
        self._next.pop(name, None)

    async def _arm(self, trigger: CronTrigger, first: bool) -> None:
        """Set the trigger's next tick. When this process first sees it, deal with the runs missed since
        its last claimed tick; a new trigger starts from now (nothing before it existed is missed)."""
        assert self._store is not None
        now = time.time()
        latest = trigger.latest_tick(now)
        last = await self._db(cronstate.last_tick, self._store, trigger.name, latest)
        if first and latest > last:
            claimed = await self._db(cronstate.claim, self._store, trigger.name, latest)
            if claimed and trigger.missed is Missed.RUN_ONCE:
                log.info("cron %s: running the missed tick %s once", trigger.name, _iso(latest))
                self._start(trigger, latest)
            elif claimed:
                log.info("cron %s: skipping the runs missed up to %s", trigger.name, _iso(latest))
            last = latest
        self._next[trigger.name] = trigger.next_tick(max(last, now) if not first else last)

    async def _fire_due(self) -> None:
        assert self._store is not None
        now = time.time()
        for name, at in list(self._next.items()):
            if at > now:
                continue
            trigger = self._triggers[name]
            tick = trigger.latest_tick(now)  # after a stall, one run for the latest tick, never a backlog
            try:
                claimed = await self._db(cronstate.claim, self._store, name, tick)
            except StoreError as exc:
                log.warning("cron %s: tick %s not claimed, will retry: %s", name, _iso(tick), exc)
                continue
            if claimed:
                self._start(trigger, tick)
            self._next[name] = trigger.next_tick(tick)

    def _start(self, trigger: CronTrigger, tick: float) -> None:
        task = asyncio.create_task(self._run_one(trigger, tick), name=f"cron:{trigger.name}@{tick:.0f}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _run_one(self, trigger: CronTrigger, tick: float) -> None:
        current_tick.set(tick)  # in this task's own context: it never leaks into another run
        try:
            await self._invoke(trigger.name, trigger.function, copy.deepcopy(trigger.event))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one failed run must not stop the schedule; the invoke audits it
            log.error("cron %s: the run of %s failed: %s: %s", trigger.name, _iso(tick), type(exc).__name__, exc)

    async def _drain(self) -> None:
        if not self._runs:
            return
        _, pending = await asyncio.wait(set(self._runs), timeout=self._drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")
