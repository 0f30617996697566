"""Gateway metrics: per-second buckets in a real SQLite store and the window queries rollout analysis
makes (count, error rate, p95), and the Prometheus text with its per-function/revision series."""

from __future__ import annotations

import asyncio
import json
import math
import random
from bisect import bisect_right
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fnctl.gateway import metrics
from fnctl.gateway.metrics import Metrics
from fnctl.rollout.latency import BOUNDS, GROWTH, Window, bucket_index, bucket_starts, quantile
from fnctl.state.location import StateLocation
from fnctl.state.metricstore import window
from fnctl.state.store import Store, StoreError, connect


class Clock:
    """The wall clock metrics read, set by the test so that observations land in chosen seconds."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(1_700_000_000.25)
    monkeypatch.setattr(metrics, "time", SimpleNamespace(time=fake.time))
    return fake


def exact_p95(latencies_ms: list[float]) -> float:
    ordered = sorted(latencies_ms)
    return ordered[max(0, int(round(0.95 * len(ordered))) - 1)]


def test_window_counts_errors_and_p95_from_per_second_buckets(store: Store, clock: Clock) -> None:
    m = Metrics()
    rng = random.Random(7)
    recent: list[float] = []
    for second in range(10):  # 10 seconds of traffic on revision 2; the window will take the last 5
        clock.now = 1_700_000_000.5 + second
        for _ in range(50):
            latency = rng.lognormvariate(3.0, 0.6)  # ms: a realistic long tail around 20 ms
            status = 500 if rng.random() < 0.1 else 200
            m.observe("hello", 2, status, latency / 1000, cold_start=False)
            if second >= 5:
                recent.append(latency)
        m.observe("hello", 1, 404, 0.001, cold_start=False)  # another revision; a 4xx is no error
    assert m.flush_sync(store) == 20
    rows = store.raw().query("SELECT second, requests FROM metrics WHERE revision = 2 ORDER BY second")
    assert [r[1] for r in rows] == [50] * 10 and rows[-1][0] - rows[0][0] == 9

    result = window(store, "hello", 2, 5, now=1_700_000_009.9)
    assert result.requests == 250
    assert result.error_rate == result.errors / 250 and 0 < result.errors < 250
    truth = exact_p95(recent)
    assert result.p95_ms is not None and abs(result.p95_ms - truth) / truth < 0.1  # buckets are ~9% wide

    other = window(store, "hello", 1, 60, now=1_700_000_009.9)
    assert (other.requests, other.errors, other.error_rate) == (10, 0, 0.0)
    assert window(store, "hello", 2, 5, now=1_800_000_000) == Window(0, 0, 0.0, None)
    assert window(store, "nobody", 1, 60) == Window(0, 0, 0.0, None)


def test_a_running_second_is_flushed_and_added_to(store: Store, clock: Clock) -> None:
    m = Metrics()
    m.observe("hello", 1, 200, 0.002, cold_start=True)
    assert m.flush_sync(store) == 1  # analysis sees it now, not once the second is over
    m.observe("hello", 1, 503, 0.004, cold_start=False)
    assert m.flush_sync(store) == 1  # the same second: added to its row
    clock.now += 1
    m.observe("hello", 1, 200, 0.003, cold_start=False)
    assert m.flush_sync(store) == 1
    assert m.flush_sync(store) == 0
    rows = store.raw().query("SELECT requests, errors, histogram FROM metrics ORDER BY second")
    assert [tuple(r[:2]) for r in rows] == [(2, 1), (1, 0)]
    assert sum(json.loads(rows[0][2]).values()) == 2


class BrokenStore:
    """A store whose every transaction fails, as a locked or full disk would."""

    def transaction(self) -> Any:
        raise StoreError("database is locked")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        raise StoreError("database is locked")


def test_buckets_survive_a_failed_flush(store: Store, clock: Clock) -> None:
    m = Metrics()
    m.observe("hello", 1, 200, 0.002, cold_start=False)
    with pytest.raises(StoreError):
        m.flush_sync(BrokenStore())  # type: ignore[arg-type]
    m.observe("hello", 1, 500, 0.002, cold_start=False)
    assert m.flush_sync(store) == 1
    assert window(store, "hello", 1, 10, now=clock.now).requests == 2


def test_a_second_written_twice_adds_up(store: Store, clock: Clock) -> None:
    """A gateway restarted within the same second (or two gateways on one store) add to the row."""
    first, second = Metrics(), Metrics()
    for m, latency in ((first, 0.010), (second, 0.030)):
        m.observe("hello", 1, 200, latency, cold_start=False)
        m.observe("hello", 1, 502, latency, cold_start=False)
        m.flush_sync(store)
    result = window(store, "hello", 1, 10, now=clock.now)
    assert (result.requests, result.errors, result.error_rate) == (4, 2, 0.5)
    assert result.p95_ms is not None and 30 / GROWTH < result.p95_ms <= 30 * GROWTH


def test_quantiles_of_known_distributions() -> None:
    def histogram(latencies: list[float]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for latency in latencies:
            counts[BOUNDS[bucket_index(latency)]] = counts.get(BOUNDS[bucket_index(latency)], 0) + 1
        return counts

    uniform = [float(n) for n in range(1, 1001)]  # 1..1000 ms
    for q, truth in ((0.5, 500.0), (0.95, 950.0), (0.99, 990.0)):
        estimate = quantile(histogram(uniform), q)
        assert estimate is not None and abs(estimate - truth) / truth < 0.09
    assert quantile({}, 0.95) is None
    assert quantile(histogram([0.01] * 10), 0.95) == pytest.approx(0.095)  # the first bucket starts at 0
    assert quantile(histogram([10**7]), 0.5) == pytest.approx(120_000, rel=0.1)  # overflow: the top bound
    assert float(BOUNDS[bucket_index(1.0)]) >= 1.0 > float(BOUNDS[bucket_index(1.0)]) / GROWTH


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_prometheus_text_has_per_function_and_revision_series() -> None:
    m = Metrics()
    for status, latency in ((200, 0.003), (200, 0.2), (500, 0.004)):
        m.observe("hello", 3, status, latency, cold_start=status == 500)
    m.observe("orders", 1, 200, 0.001, cold_start=False)
    m.inflight("hello", 3, 2)
    m.inflight("hello", 3, -1)
    m.set_instances("hello", 3, 2)
    m.denied("orders", 401)
    text = m.render().decode()
    assert metrics.CONTENT_TYPE.startswith("text/plain")
    found = samples(text)

    def value(name: str, **labels: str) -> float:
        return found[(name, frozenset(labels.items()))]

    hello = {"function": "hello", "revision": "3"}
    assert value("fnctl_requests_total", code="200", **hello) == 2
    assert value("fnctl_requests_total", code="500", **hello) == 1
    assert value("fnctl_requests_total", code="200", function="orders", revision="1") == 1
    assert value("fnctl_errors_total", **hello) == 1
    assert value("fnctl_cold_starts_total", **hello) == 1
    assert value("fnctl_request_duration_seconds_count", **hello) == 3
    assert value("fnctl_request_duration_seconds_bucket", le="0.005", **hello) == 2
    assert value("fnctl_request_duration_seconds_bucket", le="+Inf", **hello) == 3
    assert value("fnctl_inflight_requests", **hello) == 1
    assert value("fnctl_instances", **hello) == 2
    assert value("fnctl_denied_total", function="orders", code="401") == 1

    m.forget("hello", 3)
    assert ("fnctl_instances", frozenset(hello.items())) not in samples(m.render().decode())
    assert "fnctl_requests_total" not in Metrics().render().decode().split("# TYPE")[-1]  # own registry each


def test_the_flusher_writes_everything_when_stopped(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    m = Metrics()

    async def scenario() -> None:
        stop = asyncio.Event()
        flusher = asyncio.create_task(m.run_flusher(StateLocation(path), stop, interval=0.05))
        for n in range(20):
            m.observe("hello", 1, 200 if n % 4 else 500, 0.001 * (n + 1), cold_start=False)
        stop.set()
        await asyncio.wait_for(flusher, timeout=30)

    asyncio.run(scenario())
    store = connect(path)
    try:
        result = window(store, "hello", 1, 60)
    finally:
        store.close()
    assert (result.requests, result.errors, result.error_rate) == (20, 5, 0.25)


def test_bucket_starts_place_latencies_as_bucket_index_does() -> None:
    """The gateway buckets a latency by bisecting `bucket_starts()` (no log2 per request): the same bucket as
    `bucket_index` at every bucket's first latency, the float just below it, and anywhere in between."""
    starts = bucket_starts()
    assert len(starts) == len(BOUNDS) - 1
    for index, start in enumerate(starts, 1):
        assert bucket_index(start) == bisect_right(starts, start) == index
        below = math.nextafter(start, 0.0)
        assert bucket_index(below) == bisect_right(starts, below) == index - 1
    rng = random.Random(7)
    for ms in [0.0, -1.0, 0.1, 1e12, *(10 ** rng.uniform(-3, 6) for _ in range(20_000))]:
        assert bisect_right(starts, ms) == bucket_index(ms)
