"""Rollouts followed live: the gateway's table follower already notices every change of the store (SQLite's
data_version, every 0.25 s); `Hub.changed` is called then, and each open rollout page's stream re-reads its
rollout once per change (one cheap look at the rollout's mark first, and a whole view only when that moved),
so a change reaches the page within a follower interval plus one read, and nothing polls while nothing changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

KEEPALIVE = 15.0  # seconds between comment lines on a quiet stream (proxies close idle connections)


class Hub:
    """A change counter that streams wait on; `changed` is called on the event loop."""

    def __init__(self) -> None:
        self.version = 0
        self._cond = asyncio.Condition()
        self._pending: asyncio.Task[None] | None = None
        self.closed = False  # the gateway is shutting down: streams end, so they do not hold up the drain

    def changed(self) -> None:
        self.version += 1
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self._notify())

    def close(self) -> None:
        self.closed = True
        self.changed()

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def wait(self, seen: int, timeout: float) -> int:
        """The version once it moved past `seen`, or after `timeout` (the same version then)."""
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: self.version != seen), timeout)
            except TimeoutError:
                pass
        return self.version


async def follow(
    hub: Hub,
    mark: Callable[[], Any],
    view: Callable[[], dict[str, Any]],
    *,
    keepalive: float = KEEPALIVE,
) -> AsyncIterator[dict[str, Any] | None]:
    """The view now, then again whenever the store changed and `mark` (a cheap read) moved; None for a
    keep-alive. `mark` and `view` block: they run in a worker thread."""
    seen, last = hub.version, await asyncio.to_thread(mark)
    yield await asyncio.to_thread(view)
    while True:
        version = await hub.wait(seen, keepalive)
        if hub.closed:
            return
        if version == seen:
            yield None
            continue
        seen = version
        now = await asyncio.to_thread(mark)
        if now != last:
            last = now
            yield await asyncio.to_thread(view)
