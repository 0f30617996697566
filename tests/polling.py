"""Waiting in tests: poll a named condition until it holds or a timeout passes (never a bare sleep).

`wait_until` blocks; `eventually` and `eventually_awaited` poll on a running event loop, so that what the
test waits for (a gateway, a pool, a runner on the same loop) keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T | None], *, what: str, timeout: float = 10.0, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    give_up = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def eventually(condition: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """`wait_until` on the event loop: the truthy value of `condition`; fail naming `what` after `timeout`."""

    async def awaited() -> T | None:
        return condition()

    return await eventually_awaited(awaited, what, timeout)


async def eventually_awaited(condition: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0) -> T:
    """`eventually` for a condition that must await (a ping, an invocation)."""
    give_up = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)


async def counted_over(
    beat: Callable[[], object | None], count: Callable[[], int], beats: int, what: str = "heartbeats"
) -> int:
    """How much `count` grew over `beats` changes of `beat` after its first value (None: none yet): a count
    measured against the system's own clock (a gateway's heartbeat), not against how fast this machine runs."""
    seen = [await eventually(beat, f"the first of the {what}")]
    start = count()

    def beaten() -> bool:
        now = beat()
        if now is not None and now != seen[-1]:
            seen.append(now)
        return len(seen) > beats

    await eventually(beaten, f"{beats} more {what}")
    return count() - start
