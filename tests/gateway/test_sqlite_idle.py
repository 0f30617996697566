"""What an idle gateway on SQLite does in the background (issue 18): the routing table's poll, the leader's
rollout and cron loops and the metrics flusher, as `fnctl serve` runs them, counted in worker-thread hops
(every executor's, where strace showed the event loop handing the GIL over ~80 times a second) between the
gateway's own heartbeats -- one a second -- so that the count does not depend on how fast this machine runs
the test (as tests/gateway/test_pg_idle.py does on PostgreSQL). Then a change to the state is still seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from polling import counted_over, eventually

from fnctl.deploy.pickup import GATEWAY_HEARTBEAT
from fnctl.gateway.cron import CronRunner
from fnctl.gateway.leadership import Leadership, drive_rollouts
from fnctl.gateway.metrics import Metrics
from fnctl.gateway.request import GatewayLimits
from fnctl.gateway.table import StoreTable, TableFollower
from fnctl.manifest.project import project_at
from fnctl.state.location import StateLocation
from fnctl.state.store import connect

BEATS = 4  # heartbeats counted over
ROUTES = {"f": {1: 100}}


class _Pools:
    def __init__(self) -> None:
        self.routes: list[dict[str, dict[int, int]]] = []

    async def reconcile(self, routes: Any) -> None:
        self.routes.append({name: dict(weights) for name, weights in routes.items()})


async def _nothing(name: str, function: str, event: Any) -> Any:
    raise AssertionError(f"no cron trigger exists, yet {name} fired")


def test_an_idle_gateway_on_sqlite_hops_to_worker_threads_a_few_times_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It hopped ~11 times a second: the table's poll and the metrics flush every 0.25 s, a rollout pass
    every 0.5 s, the cron reload every second. Now a loop hops only when the file moved (PRAGMA data_version
    on a connection of its own, asked on the event loop) or it has something to do or write."""
    location = StateLocation(tmp_path / "state.db")
    hops = [0]
    submit = ThreadPoolExecutor.submit

    def counted(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        hops[0] += 1
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(ThreadPoolExecutor, "submit", counted)
    store = connect(location)
    project = project_at(tmp_path, "idle")

    def heartbeat() -> str | None:
        return store.read_setting(f"heartbeat:{GATEWAY_HEARTBEAT}")

    async def scenario() -> int:
        pools = _Pools()
        follower = TableFollower(StoreTable(location), pools, GatewayLimits().reload_interval)
        await follower.start()
        stop, leading = asyncio.Event(), list[bool]()

        def controller(ended: asyncio.Event) -> list[asyncio.Task[None]]:
            return [  # as `fnctl serve` runs them on SQLite
                asyncio.create_task(drive_rollouts(project, location, ended, follower.subscribe())),
                asyncio.create_task(CronRunner(location, _nothing, moved=follower.subscribe()).run(ended)),
            ]

        tasks = [
            asyncio.create_task(Leadership(location, controller, leading.append).run(stop)),
            asyncio.create_task(Metrics().run_flusher(location, stop)),
        ]
        try:
            await eventually(lambda: leading == [True], "the only candidate to lead")
            idle = await counted_over(heartbeat, lambda: hops[0], BEATS, "gateway heartbeats")
            # another process's change (here: this test's connection) is still routed by
            store.set_route("f", ROUTES["f"])
            await eventually(lambda: ROUTES in pools.routes, "the follower to see the new route")
            return idle
        finally:
            stop.set()
            await asyncio.wait(tasks)
            await follower.stop()
            follower.close()

    try:
        idle = asyncio.run(scenario())
    finally:
        store.close()
    assert idle <= 2 * BEATS, f"{idle} worker-thread hops over {BEATS} heartbeats of an idle gateway"
