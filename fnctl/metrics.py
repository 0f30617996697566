"""The gateway's metrics: Prometheus series per function and revision (requests, errors, latency, cold
starts, in-flight, instances), and per-second buckets in the store that rollout analysis queries as
"revision R over the last N seconds" (count, error rate, p95).

The one module that imports prometheus_client; it uses its own registry so that two gateways in one
process (the tests) never share series. An error is a response with status 500 or above: what the
revision did wrong, not what the caller did (4xx).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fnctl.store import Store, connect

CONTENT_TYPE = CONTENT_TYPE_LATEST
ERROR_STATUS = 500
RETENTION_SECONDS = 86_400  # per-second buckets older than this are pruned: analysis looks back minutes
# Store histogram: upper bounds growing by 2^(1/8) (~9%) from 0.1 ms, so any quantile is within ~9%
# wherever the latencies lie; only buckets that were hit are written.
_BASE_MS = 0.1
_STEPS_PER_DOUBLING = 8
GROWTH = 2.0 ** (1.0 / _STEPS_PER_DOUBLING)
_LAST_INDEX = math.ceil(math.log2(120_000 / _BASE_MS) * _STEPS_PER_DOUBLING)  # 2 minutes; beyond: overflow
_OVERFLOW = "inf"
# Prometheus buckets (seconds): coarse on purpose, every bucket is a series per function and revision.
_PROM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PROM_LE = [repr(b) for b in _PROM_BUCKETS] + ["+Inf"]  # as prometheus_client writes `le` (no exponents here)
log = logging.getLogger("fnctl.metrics")


@dataclass
class _Second:
    """One function-revision-second, accumulated in memory until the second is over. The histogram is
    keyed by bucket index in memory (cheap to count) and by upper bound in the store (self-describing)."""

    requests: int = 0
    errors: int = 0
    latency_ms_sum: float = 0.0
    histogram: dict[int, int] = field(default_factory=dict)

    def merge(self, other: _Second) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency_ms_sum += other.latency_ms_sum
        for index, count in other.histogram.items():
            self.histogram[index] = self.histogram.get(index, 0) + count


@dataclass(frozen=True)
class Window:
    """A revision's traffic over a window: what rollout analysis decides on."""

    requests: int
    errors: int
    error_rate: float  # 0.0 when there were no requests
    p95_ms: float | None  # None when there were no requests: no data is not a fast revision


def _bound(index: int) -> str:
    return f"{_BASE_MS * GROWTH ** index:.6g}"


_BOUNDS = tuple(_bound(i) for i in range(_LAST_INDEX + 1)) + (_OVERFLOW,)  # by index: names of the buckets
_INDEX_OF = {bound: index for index, bound in enumerate(_BOUNDS)}


def _index(latency_ms: float) -> int:
    if latency_ms <= _BASE_MS:
        return 0
    return min(math.ceil(math.log2(latency_ms / _BASE_MS) * _STEPS_PER_DOUBLING - 1e-9), _LAST_INDEX + 1)


def bucket_of(latency_ms: float) -> str:
    """The store histogram bucket (its upper bound in ms, as text) holding `latency_ms`."""
    return _BOUNDS[_index(latency_ms)]


class _Series:
    """One revision's Prometheus series as plain numbers: bumped on the event loop, turned into metric
    families only when scraped (a prometheus_client child per series costs a lock per update)."""

    __slots__ = ("key", "created", "codes", "codes_created", "errors", "cold", "buckets", "latency_sum")

    def __init__(self, function: str, revision: int) -> None:
        self.key = (function, str(revision))  # the label values
        self.created = time.time()
        self.codes: dict[int, int] = {}  # status → responses
        self.codes_created: dict[int, float] = {}
        self.errors = 0
        self.cold = 0
        self.buckets = [0] * (len(_PROM_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.latency_sum = 0.0


class Metrics:
    """Counters of the running gateway. `observe` and friends are cheap and called on the event loop;
    `flush_sync` adds what was observed since its last call to the store, from another thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.series: dict[tuple[str, int], _Series] = {}
        self.denials: dict[tuple[str, str], int] = {}  # (function, status) → requests refused
        self.denials_created: dict[tuple[str, str], float] = {}
        self.inflight_now: dict[tuple[str, int], int] = {}  # gauges, shown while their key is here
        self.instances: dict[tuple[str, int], int] = {}
        self._pending: dict[tuple[str, int, int], _Second] = {}
        self._lock = threading.Lock()  # observe (event loop) against flush (a worker thread)
        self._last_prune = 0.0

    def observe(self, function: str, revision: int, status: int, latency_s: float, cold_start: bool) -> None:
        """One answered invocation of `revision`."""
        series = self.series.get((function, revision))
        if series is None:
            series = self.series[(function, revision)] = _Series(function, revision)
        count = series.codes.get(status)
        if count is None:
            count = 0
            series.codes_created[status] = time.time()
        series.codes[status] = count + 1
        series.buckets[bisect_left(_PROM_BUCKETS, latency_s)] += 1
        series.latency_sum += latency_s
        is_error = status >= ERROR_STATUS
        series.errors += is_error
        series.cold += cold_start
        latency_ms = latency_s * 1000.0
        bucket = _index(latency_ms)
        key = (function, revision, int(time.time()))
        with self._lock:
            second = self._pending.get(key)
            if second is None:
                second = self._pending[key] = _Second()
            second.requests += 1
            second.errors += is_error
            second.latency_ms_sum += latency_ms
            second.histogram[bucket] = second.histogram.get(bucket, 0) + 1

    def denied(self, function: str, status: int) -> None:
        """A request refused by authentication (401) or authorization (403)."""
        key = (function, str(status))
        if key not in self.denials:
            self.denials_created[key] = time.time()
        self.denials[key] = self.denials.get(key, 0) + 1

    def inflight(self, function: str, revision: int, delta: int) -> None:
        key = (function, revision)
        self.inflight_now[key] = self.inflight_now.get(key, 0) + delta

    def set_instances(self, function: str, revision: int, n: int) -> None:
        self.instances[(function, revision)] = n

    def forget(self, function: str, revision: int) -> None:
        """Drop the gauges of a revision whose pool is gone (its counters stay: they only grow)."""
        if not self.inflight_now.get((function, revision)):
            self.inflight_now.pop((function, revision), None)
        self.instances.pop((function, revision), None)

    def render(self) -> bytes:
        """Every series in the Prometheus text format (serve it with CONTENT_TYPE)."""
        return generate_latest(self.registry)

    # ---- per-second buckets for rollout analysis ----

    def _take(self) -> dict[tuple[str, int, int], _Second]:
        """Every bucket, the running second's too: its row is added to by the next flush, so that analysis
        sees a request within one flush interval instead of after the second is over."""
        with self._lock:
            taken, self._pending = self._pending, {}
        return taken

    def _put_back(self, buckets: dict[tuple[str, int, int], _Second]) -> None:
        with self._lock:
            for key, second in buckets.items():
                self._pending.setdefault(key, _Second()).merge(second)

    def flush_sync(self, store: Store) -> int:
        """Add the buckets observed since the last flush to the store; returns rows written. On a store error
        the buckets are kept for the next flush and the error is raised."""
        buckets = self._take()
        if buckets:
            try:
                with store.transaction():
                    for key, second in sorted(buckets.items()):
                        _write(store, key, second)
            except BaseException:  # whatever failed (store.transaction's BEGIN raises sqlite3's own errors)
                self._put_back(buckets)
                raise
        if time.time() - self._last_prune > 60:
            self._last_prune = time.time()
            store.execute("DELETE FROM metrics WHERE second < ?", (int(time.time()) - RETENTION_SECONDS,))
        return len(buckets)

    async def run_flusher(self, store_path: Path, stop: asyncio.Event, interval: float = 0.25) -> None:
        """Flush every `interval` seconds until `stop` is set, then flush everything, with a store
        connection of its own that only this task's worker thread uses."""
        from concurrent.futures import ThreadPoolExecutor

        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fnctl-metrics") as worker:
            store = await loop.run_in_executor(worker, connect, store_path)
            try:
                while True:
                    final = stop.is_set()
                    try:
                        await loop.run_in_executor(worker, lambda: self.flush_sync(store))
                    except Exception as exc:  # the flusher must outlive a busy or broken store
                        log.warning("metrics not written yet, will retry: %s", exc)
                    if final:
                        return
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=interval)
                    except asyncio.TimeoutError:
                        pass
            finally:
                await loop.run_in_executor(worker, store.close)


class _Collector(Collector):
    """The metric families of a `Metrics`, built from its plain numbers at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m, labels = self.metrics, ["function", "revision"]
        requests = CounterMetricFamily("fnctl_requests", "Invocations answered, by status code.",
                                       labels=[*labels, "code"])
        errors = CounterMetricFamily("fnctl_errors", "Invocations answered with status 500 or above.", labels=labels)
        latency = HistogramMetricFamily("fnctl_request_duration_seconds", "Time from request to response.",
                                        labels=labels)
        cold = CounterMetricFamily("fnctl_cold_starts", "Invocations that waited for a new instance.", labels=labels)
        for series in list(m.series.values()):
            values = list(series.key)
            for status, count in list(series.codes.items()):
                requests.add_metric([*values, str(status)], count, created=series.codes_created[status])
            errors.add_metric(values, series.errors, created=series.created)
            latency.add_metric(values, list(zip(_PROM_LE, itertools.accumulate(series.buckets))), series.latency_sum)
            latency.add_sample(latency.name + "_created", dict(zip(labels, values)), series.created)
            cold.add_metric(values, series.cold, created=series.created)
        yield from (requests, errors, latency, cold)
        yield _gauge("fnctl_inflight_requests", "Invocations in progress.", m.inflight_now)
        yield _gauge("fnctl_instances", "Instances in the pool.", m.instances)
        denied = CounterMetricFamily("fnctl_denied", "Requests refused before reaching a revision (401/403).",
                                     labels=["function", "code"])
        for key, count in list(m.denials.items()):
            denied.add_metric(list(key), count, created=m.denials_created[key])
        yield denied


def _gauge(name: str, documentation: str, values: dict[tuple[str, int], int]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["function", "revision"])
    for (function, revision), value in list(values.items()):
        gauge.add_metric([function, str(revision)], value)
    return gauge


def _write(store: Store, key: tuple[str, int, int], second: _Second) -> None:
    """Insert one bucket, or add it to the row already there (a restart within the same second)."""
    rows = store.query("SELECT requests, errors, latency_ms_sum, histogram FROM metrics "
                       "WHERE function = ? AND revision = ? AND second = ?", key)
    if rows:
        stored = {_INDEX_OF[b]: int(c) for b, c in json.loads(rows[0][3]).items() if b in _INDEX_OF}
        second.merge(_Second(int(rows[0][0]), int(rows[0][1]), float(rows[0][2]), stored))
        store.execute("UPDATE metrics SET requests = ?, errors = ?, latency_ms_sum = ?, histogram = ? "
                      "WHERE function = ? AND revision = ? AND second = ?",
                      (second.requests, second.errors, second.latency_ms_sum, _histogram_json(second), *key))
    else:
        store.execute("INSERT INTO metrics (function, revision, second, requests, errors, latency_ms_sum, histogram) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (*key, second.requests, second.errors, second.latency_ms_sum, _histogram_json(second)))


def _histogram_json(second: _Second) -> str:
    return json.dumps({_BOUNDS[i]: c for i, c in sorted(second.histogram.items())}, separators=(",", ":"))


def window(store: Store, function: str, revision: int, seconds: float, *, now: float | None = None) -> Window:
    """Requests, errors, error rate and p95 latency of `revision` in the last `seconds` one-second buckets
    (the current one included). Reads what the gateway has flushed: the latest second or two may lag."""
    since = int(time.time() if now is None else now) - math.ceil(seconds) + 1
    requests, errors, histogram = totals(store, function, revision, since)
    return Window(requests, errors, errors / requests if requests else 0.0, quantile(histogram, 0.95))


def totals(store: Store, function: str, revision: int, since: int,
           until: int | None = None) -> tuple[int, int, dict[str, int]]:
    """Requests, errors and the merged latency histogram of `revision` from second `since` to `until`."""
    sql = "SELECT requests, errors, histogram FROM metrics WHERE function = ? AND revision = ? AND second >= ?"
    params: tuple[object, ...] = (function, revision, since)
    if until is not None:
        sql, params = sql + " AND second <= ?", params + (until,)
    rows = store.query(sql, params)
    histogram: dict[str, int] = {}
    for row in rows:
        for bound, count in json.loads(row[2]).items():
            histogram[bound] = histogram.get(bound, 0) + int(count)
    return sum(int(r[0]) for r in rows), sum(int(r[1]) for r in rows), histogram


def quantile(histogram: dict[str, int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) in ms of a store histogram, interpolated linearly inside its bucket
    (as Prometheus' histogram_quantile does); None for an empty histogram."""
    total = sum(histogram.values())
    if total == 0:
        return None
    finite = sorted((float(b), c) for b, c in histogram.items() if b != _OVERFLOW and c > 0)
    rank = q * total
    seen = 0
    for upper, count in finite:
        if seen + count >= rank:
            lower = 0.0 if upper <= _BASE_MS * 1.0000001 else upper / GROWTH
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return float(_bound(_LAST_INDEX))  # in the overflow bucket: report the largest bound we can vouch for
