"""What an idle gateway on PostgreSQL does in the background (issue 19), against a real server: its routing
table's follower and its leadership, as `fnctl serve` runs them, counted in worker-thread hops (asyncio's
default executor, where py-spy found the difference with SQLite) between the gateway's own heartbeats -- one
a second -- so that the count does not depend on how fast this machine runs the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pgserver import RawDb
from polling import counted_over, eventually

from fnctl.deploy.pickup import GATEWAY_HEARTBEAT
from fnctl.gateway.leadership import Leadership
from fnctl.gateway.request import GatewayLimits
from fnctl.gateway.table import StoreTable, TableFollower
from fnctl.state.location import StateLocation

BEATS = 4  # heartbeats counted over


class _NoPools:
    async def reconcile(self, routes: Mapping[str, Mapping[int, int]]) -> None:
        pass


class _CountingExecutor(ThreadPoolExecutor):
    """The event loop's default executor, counting what is handed to it (each `asyncio.to_thread`)."""

    submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_an_idle_leading_gateway_on_postgresql_hops_to_a_worker_thread_about_once_a_second(
    pg_url: str, tmp_path: Path
) -> None:
    """It hopped ~11 times a second: a LISTEN wait and a poll of the store every 0.25 s, and the leader's
    lock check (a round trip) every 0.5 s. Now one hop waits and reads, the poll is due once a second while
    the LISTEN works, and the leader looks at its lock's connection without a hop."""
    location = StateLocation(tmp_path / "anchor", pg_url)
    raw = RawDb(location)

    def heartbeat() -> str | None:
        rows = raw.execute("SELECT value FROM settings WHERE key = ?", (f"heartbeat:{GATEWAY_HEARTBEAT}",))
        return str(rows[0][0]) if rows else None

    async def scenario() -> int:
        executor = _CountingExecutor(max_workers=4)
        asyncio.get_running_loop().set_default_executor(executor)
        follower = TableFollower(StoreTable(location), _NoPools(), GatewayLimits().reload_interval)
        await follower.start()  # the store migrated first, as `fnctl serve` does (the leader's lock shares its key)
        stop, leading = asyncio.Event(), list[bool]()
        leadership = asyncio.create_task(Leadership(location, lambda ended: [], leading.append).run(stop))
        try:
            await eventually(lambda: leading == [True], "the only candidate to lead")
            return await counted_over(heartbeat, lambda: executor.submitted, BEATS, "gateway heartbeats")
        finally:
            stop.set()
            await leadership
            await follower.stop()
            follower.close()

    try:
        hops = asyncio.run(scenario())
    finally:
        raw.close()
    assert hops <= 2 * BEATS, f"{hops} worker-thread hops over {BEATS} heartbeats of an idle gateway"
