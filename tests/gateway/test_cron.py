"""Cron triggers: schedules in their time zone, per-second runs, no tick ever run twice (across a restart
and between two runners on one store), and missed runs: runOnce runs exactly once at start-up, skip never.

The runners are real (asyncio, croniter, SQLite); the gateway's invoke is a recorder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from polling import eventually

from fnctl.gateway.cron import CronRunner, CronTrigger, Missed, cron_triggers, current_tick
from fnctl.state.location import StateLocation
from fnctl.state.store import Store

EVERY_SECOND = "* * * * * *"  # the sixth field is seconds


class Recorder:
    """Stands in for the gateway's invoke: remembers (trigger, function, event, tick) of every run."""

    def __init__(self, fail_first: bool = False) -> None:
        self.runs: list[tuple[str, str, Any, float]] = []
        self._fail_first = fail_first

    async def __call__(self, trigger: str, function: str, event: Any) -> None:
        self.runs.append((trigger, function, event, current_tick.get()))
        if self._fail_first and len(self.runs) == 1:
            raise RuntimeError("the function failed")

    def ticks(self, trigger: str | None = None) -> list[float]:
        return [r[3] for r in self.runs if trigger is None or r[0] == trigger]


def cron_spec(
    schedule: str, *, missed: str | None = None, tz: str | None = None, event: Any = None, function: str = "report"
) -> dict[str, Any]:
    cron: dict[str, Any] = {"schedule": schedule}
    cron.update({k: v for k, v in (("missed", missed), ("timezone", tz), ("event", event)) if v is not None})
    return {"function": function, "cron": cron}


async def running(runners: list[CronRunner], body: Callable[[], Awaitable[Any]]) -> None:
    """Run the runners while `body` runs, then stop them and wait for them to finish."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    try:
        await body()
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)


def test_a_per_second_trigger_fires_with_its_event(store: Store, state_location: StateLocation) -> None:
    store.set_resources(
        "Trigger",
        {
            "tick": cron_spec(EVERY_SECOND, event={"report": "nightly"}),
            "broken": cron_spec("61 * * * *"),  # logged and left out, never fatal
            "web": {"function": "hello", "http": {"path": "/hello"}},
        },
    )
    recorder = Recorder(fail_first=True)  # a failing run does not stop the schedule

    async def body() -> None:
        await eventually(lambda: len(recorder.runs) >= 3, "three runs of the per-second trigger")

    asyncio.run(running([CronRunner(state_location, recorder)], body))
    assert {(r[0], r[1], repr(r[2])) for r in recorder.runs} == {("tick", "report", "{'report': 'nightly'}")}
    ticks = recorder.ticks()
    assert ticks == sorted(set(ticks)) and all(t == int(t) for t in ticks)  # whole seconds, each once


def test_no_tick_runs_twice_across_a_restart(store: Store, state_location: StateLocation) -> None:
    store.set_resources("Trigger", {"tick": cron_spec(EVERY_SECOND, missed="runOnce")})
    first, second = Recorder(), Recorder()

    async def scenario() -> None:
        async def two_runs(recorder: Recorder) -> Callable[[], Awaitable[None]]:
            async def body() -> None:
                await eventually(lambda: len(recorder.runs) >= 2, "two runs")

            return body

        await running([CronRunner(state_location, first)], await two_runs(first))
        await running([CronRunner(state_location, second)], await two_runs(second))

    asyncio.run(scenario())
    before, after = first.ticks(), second.ticks()
    assert not set(before) & set(after), (before, after)
    assert min(after) > max(before)  # the restart went on from the last claimed tick
    last = store.raw().query("SELECT last_tick FROM cron_state WHERE trigger = 'tick'")[0][0]
    assert last == max(after)


def test_two_runners_on_one_store_run_each_tick_once(store: Store, state_location: StateLocation) -> None:
    store.set_resources("Trigger", {"tick": cron_spec(EVERY_SECOND)})
    a, b = Recorder(), Recorder()

    async def body() -> None:
        await eventually(lambda: len(a.runs) + len(b.runs) >= 4, "four runs between the two runners")

    asyncio.run(running([CronRunner(state_location, a), CronRunner(state_location, b)], body))
    ticks = a.ticks() + b.ticks()
    assert len(ticks) == len(set(ticks)), sorted(ticks)


def daily_far_from_now() -> str:
    """A daily schedule whose latest tick was ~6 h ago: no tick falls due while a test runs."""
    return f"0 {datetime.fromtimestamp(time.time() - 6 * 3600, UTC).hour} * * *"


def test_missed_runs_run_once_or_are_skipped_as_the_trigger_says(store: Store, state_location: StateLocation) -> None:
    daily = daily_far_from_now()
    store.set_resources(
        "Trigger",
        {
            "catch-up": cron_spec(daily, missed="runOnce", event={"n": 1}),
            "skipper": cron_spec(daily, missed="skip"),
            "default": cron_spec(daily),
        },
    )
    latest = CronTrigger("x", "f", daily, "UTC", Missed.SKIP, {}).latest_tick(time.time())
    for name in ("catch-up", "skipper", "default"):  # the gateway was down for the last three days
        store.raw().execute("INSERT INTO cron_state VALUES (?, ?, ?)", (name, latest - 3 * 86400, time.time()))
    first = Recorder()

    async def body_first(runner: CronRunner) -> None:
        await asyncio.wait_for(runner.ready.wait(), timeout=20)
        await eventually(lambda: len(first.runs) >= 1, "the missed run of catch-up")

    async def scenario() -> None:
        runner = CronRunner(state_location, first)
        await running([runner], lambda: body_first(runner))
        again = CronRunner(state_location, second)  # restarted at once: nothing was missed in between
        await running([again], lambda: asyncio.wait_for(again.ready.wait(), timeout=20))

    second = Recorder()
    asyncio.run(scenario())
    assert first.runs == [("catch-up", "report", {"n": 1}, latest)]  # once, for the latest missed tick
    state = dict(store.raw().query("SELECT trigger, last_tick FROM cron_state"))
    assert state == {"catch-up": latest, "skipper": latest, "default": latest}  # skipped ticks are claimed too
    assert second.runs == []


def test_a_new_trigger_does_not_run_ticks_from_before_it_existed(store: Store, state_location: StateLocation) -> None:
    store.set_resources("Trigger", {"daily": cron_spec(daily_far_from_now(), missed="runOnce")})
    recorder = Recorder()

    async def scenario() -> None:
        runner = CronRunner(state_location, recorder)
        await running([runner], lambda: asyncio.wait_for(runner.ready.wait(), timeout=20))

    asyncio.run(scenario())
    assert recorder.runs == []
    assert store.raw().query("SELECT COUNT(*) FROM cron_state")[0][0] == 1


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def test_schedules_follow_the_trigger_time_zone_across_daylight_saving() -> None:
    paris = CronTrigger("nightly", "orders", "0 2 * * *", "Europe/Paris", Missed.RUN_ONCE, {})
    assert paris.next_tick(utc(2024, 1, 15, 12)) == utc(2024, 1, 16, 1)  # 02:00 CET = 01:00 UTC
    assert paris.next_tick(utc(2024, 7, 15, 12)) == utc(2024, 7, 16, 0)  # 02:00 CEST = 00:00 UTC
    assert paris.latest_tick(utc(2024, 1, 16, 1)) == utc(2024, 1, 16, 1)  # a tick is its own latest
    assert paris.latest_tick(utc(2024, 1, 16, 0, 59)) == utc(2024, 1, 15, 1)
    kathmandu = CronTrigger("k", "f", "0 * * * *", "Asia/Kathmandu", Missed.SKIP, {})  # UTC+05:45
    assert datetime.fromtimestamp(kathmandu.next_tick(utc(2024, 3, 1)), UTC).minute == 15
    seconds = CronTrigger("s", "f", "* * * * * */10", "UTC", Missed.SKIP, {})
    assert seconds.next_tick(utc(2024, 3, 1, 0, 0, 3)) == utc(2024, 3, 1, 0, 0, 10)


def test_invalid_triggers_are_left_out_and_defaults_apply() -> None:
    triggers, problems = cron_triggers(
        {
            "bad-schedule": cron_spec("61 * * * *"),
            "bad-zone": cron_spec("* * * * *", tz="Mars/Olympus"),
            "never": cron_spec("0 0 30 2 *"),
            "http": {"function": "f", "http": {"path": "/"}},
            "good": cron_spec("*/5 * * * *"),
        }
    )
    assert list(triggers) == ["good"]
    assert sorted(problems) == ["bad-schedule", "bad-zone", "never"]
    assert triggers["good"] == CronTrigger("good", "report", "*/5 * * * *", "UTC", Missed.SKIP, {})
