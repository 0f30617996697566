"""A cold start through the gateway, on one clock: `fnctl serve` with its cold-start path wrapped in timestamps.

`python benchmarks/coldtrace.py serve [fnctl serve's arguments]` (in a project directory, with COLDTRACE naming a
file) runs the gateway as `python -m fnctl serve` would, with each step of a cold start wrapped: the request
admitted (`PoolManager.invoke`), the pool deciding to start (`start_instance`), the store's lock and the instance
row, every engine API call (create, start, the CPU update, inspect), the runtime connecting (accept), its ready
frame, configure, the first invocation and the answer. Each step appends `monotonic-seconds label` to COLDTRACE
(CLOCK_MONOTONIC is the machine's: the benchmark reads the same clock). Measured only: nothing is changed.

`timeline(events, began)` turns the events of one request into the lines bench_coldstart prints with --trace.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_FD = -1


def mark(label: str) -> None:
    os.write(_FD, f"{time.monotonic():.6f} {label}\n".encode())


def _wrap_async(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    async def traced(*args: Any, **kwargs: Any) -> Any:
        mark(f"{label} begin")
        try:
            return await original(*args, **kwargs)
        finally:
            mark(f"{label} end")

    setattr(owner, name, traced)


def _wrap_sync(owner: Any, name: str, label: Callable[..., str]) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def traced(*args: Any, **kwargs: Any) -> Any:
        what = label(*args, **kwargs)
        mark(f"{what} begin")
        try:
            return original(*args, **kwargs)
        finally:
            mark(f"{what} end")

    setattr(owner, name, traced)


def install(path: str) -> None:
    """Wrap the gateway's cold-start path; events go to `path`."""
    global _FD
    _FD = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    from fnctl.deploy import lock
    from fnctl.engine import dockerapi, instances
    from fnctl.gateway import poolactions, pools
    from fnctl.invocation import aiotransport
    from fnctl.state import store

    _wrap_async(pools.PoolManager, "invoke", "request")
    _wrap_async(pools.PoolManager, "start_instance", "start_instance")
    _wrap_async(pools.PoolManager, "_settle_cpu", "settle_cpu")
    _wrap_sync(poolactions.DockerActions, "start", lambda *a, **k: "thread")
    _wrap_sync(store.Store, "add_instance", lambda *a, **k: "row")
    _wrap_sync(instances, "launch", lambda *a, **k: "launch")
    _wrap_sync(dockerapi, "request", lambda method, where, **k: f"docker {method} {_short(where)}")
    _wrap_async(aiotransport.AsyncTransport, "_accept", "accept")
    _wrap_async(aiotransport.AsyncTransport, "configure", "configure")
    _wrap_async(aiotransport.AsyncTransport, "invoke", "invoke")
    held = lock.held

    @contextlib.contextmanager
    def traced_held(*args: Any, **kwargs: Any) -> Iterator[Any]:
        mark("lock begin")
        with held(*args, **kwargs) as got:
            mark("lock end")
            yield got

    lock.held = traced_held  # poolactions calls it as `lock.held`


def _short(where: str) -> str:
    """An engine API path without the container's ID: `/containers/ID/start` -> `start`."""
    return where.split("?")[0].rstrip("/").rsplit("/", 1)[-1]


def read(path: Path, since: float, until: float) -> list[tuple[float, str]]:
    events = []
    for line in path.read_text().splitlines():
        stamp, _, label = line.partition(" ")
        if since <= float(stamp) <= until:
            events.append((float(stamp), label))
    return events


def timeline(events: list[tuple[float, str]], began: float) -> dict[str, float]:
    """Each event's first occurrence, in ms since `began` (the client's send)."""
    seen: dict[str, float] = {}
    for stamp, label in events:
        seen.setdefault(label, (stamp - began) * 1000)
    return seen


# Each run's steps, as spans between two of its events: (name, from, to). "ours" are the gateway's own.
SPANS = (
    ("ours: sent -> docker create", "", "docker POST create begin"),
    ("engine: docker create", "docker POST create begin", "docker POST create end"),
    ("ours: create -> start", "docker POST create end", "docker POST start begin"),
    ("engine: docker start", "docker POST start begin", "docker POST start end"),
    ("ours: started -> accepting", "docker POST start end", "accept begin"),
    ("runtime: up and connected", "accept begin", "accept end"),
    ("runtime: ready + configure", "accept end", "configure end"),
    ("ours: configured -> invoke sent", "configure end", "invoke begin"),
    ("runtime: first invoke", "invoke begin", "invoke end"),
    ("ours: result -> answer read", "invoke end", "answered"),
)


# A scale from zero with a paused warm instance: the request is sent to the frozen runtime as the engine thaws it.
WARM_SPANS = (
    ("ours: sent -> unpause asked", "", "docker POST unpause begin"),
    ("ours: sent -> invoke sent", "", "invoke begin"),
    ("engine: docker unpause", "docker POST unpause begin", "docker POST unpause end"),
    ("runtime: invoke (thaw + run)", "invoke begin", "invoke end"),
    ("ours: result -> answer read", "invoke end", "answered"),
    ("engine: next spare's create asked", "", "docker POST create begin"),
)


def spans(seen: dict[str, float], which: tuple[tuple[str, str, str], ...] = SPANS) -> dict[str, float]:
    """The spans `which` (SPANS, WARM_SPANS) of one run's `timeline` (with "answered" added: the client's
    figure), in ms."""
    points = seen | {"": 0.0}
    return {name: points[b] - points[a] for name, a, b in which if a in points and b in points}


def main() -> None:
    install(os.environ["COLDTRACE"])
    from fnctl.cli.app import main as fnctl_main

    sys.argv = ["fnctl", *sys.argv[1:]]
    fnctl_main()


if __name__ == "__main__":
    main()
