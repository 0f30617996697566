"""The gateway's metrics: Prometheus series per function and revision (requests, errors, latency, cold
starts, in-flight, instances), and the per-second buckets it flushes to the store (`fnctl.state.metricstore`)
that rollout analysis reads as "revision R over the last N seconds" (count, error rate, p95).

The one module that imports prometheus_client; it uses its own registry so that two gateways in one
process (the tests) never share series. An error is a response with status 500 or above: what the
revision did wrong, not what the caller did (4xx).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fnctl.rollout.latency import Second, bucket_starts
from fnctl.state import metricstore
from fnctl.state.location import StateLocation
from fnctl.state.store import Store, connect

CONTENT_TYPE = CONTENT_TYPE_LATEST
ERROR_STATUS = 500
# Prometheus buckets (seconds): coarse on purpose, every bucket is a series per function and revision.
_PROM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PROM_LE = [repr(b) for b in _PROM_BUCKETS] + ["+Inf"]  # as prometheus_client writes `le` (no exponents here)
# bisect_right(_LATENCY_STARTS, ms) is bucket_index(ms): one C call instead of a log2 (~0.3 µs per request)
_LATENCY_STARTS = bucket_starts()
log = logging.getLogger("fnctl.metrics")


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
        self._pending: dict[tuple[str, int, int], Second] = {}
        self._lock = threading.Lock()  # observe (event loop) against flush (a worker thread)
        self._last_prune = 0.0
        # view → [hits, misses, invalidations]; invalidations are counted on the data thread (a += on a list
        # item under the GIL: a lost count at worst, never a broken one)
        self.views: dict[str, list[int]] = {}
        self.events: dict[str, list[int]] = {}  # onCommit trigger → [delivered, failed attempts, dead letters]
        self.forwarded: dict[str, int] = {}  # function → requests a peer gateway answered (fnctl.gateway.forward)

    def event(self, trigger: str, delivered: int = 0, failed: int = 0, dead: int = 0) -> None:
        """onCommit deliveries of `trigger` (on the event loop): delivered, failed attempts, dead letters."""
        counts = self.events.setdefault(trigger, [0, 0, 0])
        counts[0] += delivered
        counts[1] += failed
        counts[2] += dead

    def view(self, name: str, hits: int = 0, misses: int = 0, invalidations: int = 0) -> None:
        """A view answered from its cache (hit) or computed (miss), or entries of it evicted by writes."""
        counts = self.views.get(name)
        if counts is None:
            counts = self.views.setdefault(name, [0, 0, 0])
        counts[0] += hits
        counts[1] += misses
        counts[2] += invalidations

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
        bucket = bisect_right(_LATENCY_STARTS, latency_ms)
        key = (function, revision, int(time.time()))
        with self._lock:
            second = self._pending.get(key)
            if second is None:
                second = self._pending[key] = Second()
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

    def _take(self) -> dict[tuple[str, int, int], Second]:
        """Every bucket, the running second's too: its row is added to by the next flush, so that analysis
        sees a request within one flush interval instead of after the second is over."""
        with self._lock:
            taken, self._pending = self._pending, {}
        return taken

    def _put_back(self, buckets: dict[tuple[str, int, int], Second]) -> None:
        with self._lock:
            for key, second in buckets.items():
                self._pending.setdefault(key, Second()).merge(second)

    def flush_sync(self, store: Store) -> int:
        """Add the buckets observed since the last flush to the store; returns rows written. On a store error
        the buckets are kept for the next flush and the error is raised."""
        buckets = self._take()
        if buckets:
            try:
                with store.transaction():
                    for key, second in sorted(buckets.items()):
                        metricstore.add_second(store, key, second)
            except BaseException:  # whatever failed (a StoreError, or the flush cancelled half-way)
                self._put_back(buckets)
                raise
        if time.time() - self._last_prune > 60:
            self._last_prune = time.time()
            metricstore.prune(store, time.time())
        return len(buckets)

    async def run_flusher(self, store_path: StateLocation, stop: asyncio.Event, interval: float = 0.25) -> None:
        """Flush every `interval` seconds until `stop` is set, then flush everything, with a store
        connection of its own that only this task's worker thread uses."""
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fnctl-metrics") as worker:
            store = await loop.run_in_executor(worker, connect, store_path)
            try:
                while True:
                    final = stop.is_set()
                    try:
                        if final or self._pending or time.time() - self._last_prune > 60:  # idle: no hop
                            await loop.run_in_executor(worker, lambda: self.flush_sync(store))
                    except Exception as exc:  # the flusher must outlive a busy or broken store
                        log.warning("metrics not written yet, will retry: %s", exc)
                    if final:
                        return
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=interval)
                    except TimeoutError:
                        pass
            finally:
                await loop.run_in_executor(worker, store.close)


class _Collector(Collector):
    """The metric families of a `Metrics`, built from its plain numbers at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m, labels = self.metrics, ["function", "revision"]
        requests = CounterMetricFamily(
            "fnctl_requests", "Invocations answered, by status code.", labels=[*labels, "code"]
        )
        errors = CounterMetricFamily("fnctl_errors", "Invocations answered with status 500 or above.", labels=labels)
        latency = HistogramMetricFamily(
            "fnctl_request_duration_seconds", "Time from request to response.", labels=labels
        )
        cold = CounterMetricFamily("fnctl_cold_starts", "Invocations that waited for a new instance.", labels=labels)
        for series in list(m.series.values()):
            values = list(series.key)
            for status, count in list(series.codes.items()):
                requests.add_metric([*values, str(status)], count, created=series.codes_created[status])
            errors.add_metric(values, series.errors, created=series.created)
            latency.add_metric(
                values, list(zip(_PROM_LE, itertools.accumulate(series.buckets), strict=True)), series.latency_sum
            )
            latency.add_sample(latency.name + "_created", dict(zip(labels, values, strict=True)), series.created)
            cold.add_metric(values, series.cold, created=series.created)
        yield from (requests, errors, latency, cold)
        yield _gauge("fnctl_inflight_requests", "Invocations in progress.", m.inflight_now)
        yield _gauge("fnctl_instances", "Instances in the pool.", m.instances)
        denied = CounterMetricFamily(
            "fnctl_denied", "Requests refused before reaching a revision (401/403).", labels=["function", "code"]
        )
        for key, count in list(m.denials.items()):
            denied.add_metric(list(key), count, created=m.denials_created[key])
        yield denied
        families = [
            CounterMetricFamily("fnctl_view_hits", "View reads answered from the cache.", labels=["view"]),
            CounterMetricFamily("fnctl_view_misses", "View reads that ran the view's function.", labels=["view"]),
            CounterMetricFamily(
                "fnctl_view_invalidations", "Cached view entries evicted by writes that overlap them.", labels=["view"]
            ),
        ]
        ratio = GaugeMetricFamily("fnctl_view_hit_ratio", "Hits / (hits + misses) since start.", labels=["view"])
        for name, counts in list(m.views.items()):
            for family, value in zip(families, counts, strict=True):
                family.add_metric([name], value)
            reads = counts[0] + counts[1]
            ratio.add_metric([name], counts[0] / reads if reads else 0.0)
        yield from families
        yield ratio
        events = [
            CounterMetricFamily("fnctl_events_delivered", "onCommit events delivered.", labels=["trigger"]),
            CounterMetricFamily("fnctl_events_failed", "onCommit delivery attempts that failed.", labels=["trigger"]),
            CounterMetricFamily("fnctl_events_dead", "onCommit events that became dead letters.", labels=["trigger"]),
        ]
        for trigger, counts in list(m.events.items()):
            for family, value in zip(events, counts, strict=True):
                family.add_metric([trigger], value)
        yield from events
        forwarded = CounterMetricFamily(
            "fnctl_forwarded_requests",
            "Requests and the gateway's own invocations sent to a peer gateway that answered (engine = swarm).",
            labels=["function"],
        )
        for function, count in list(m.forwarded.items()):
            forwarded.add_metric([function], count)
        yield forwarded


def _gauge(name: str, documentation: str, values: dict[tuple[str, int], int]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["function", "revision"])
    for (function, revision), value in list(values.items()):
        gauge.add_metric([function, str(revision)], value)
    return gauge
