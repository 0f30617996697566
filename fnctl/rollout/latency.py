"""Traffic of one revision as rollout analysis and A/B tests see it, decided purely: the latency histogram's
buckets, one second of a revision's requests (`Second`), a window of them (`Window`) and quantiles.

The histogram's upper bounds grow by 2^(1/8) (~9%) from 0.1 ms, so any quantile is within ~9% wherever the
latencies lie; only buckets that were hit are kept. In memory a histogram is keyed by bucket index (cheap to
count), in the store by upper bound (self-describing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

_BASE_MS = 0.1
_STEPS_PER_DOUBLING = 8
GROWTH = 2.0 ** (1.0 / _STEPS_PER_DOUBLING)
_LAST_INDEX = math.ceil(math.log2(120_000 / _BASE_MS) * _STEPS_PER_DOUBLING)  # 2 minutes; beyond: overflow
_OVERFLOW = "inf"


def _bound(index: int) -> str:
    return f"{_BASE_MS * GROWTH**index:.6g}"


BOUNDS = tuple(_bound(i) for i in range(_LAST_INDEX + 1)) + (_OVERFLOW,)  # by index: names of the buckets
INDEX_OF = {bound: index for index, bound in enumerate(BOUNDS)}


def bucket_index(latency_ms: float) -> int:
    if latency_ms <= _BASE_MS:
        return 0
    return min(math.ceil(math.log2(latency_ms / _BASE_MS) * _STEPS_PER_DOUBLING - 1e-9), _LAST_INDEX + 1)


def bucket_starts() -> tuple[float, ...]:
    """The smallest latency of each bucket after the first, exactly as `bucket_index` places it: then
    `bisect_right(bucket_starts(), ms) == bucket_index(ms)` (the gateway's per-request bucket, a C call)."""
    starts = []
    for index in range(1, _LAST_INDEX + 2):
        estimate = _BASE_MS * 2.0 ** ((index - 1 + 1e-9) / _STEPS_PER_DOUBLING)  # what bucket_index solves
        width = 1e-12
        while not bucket_index(estimate * (1 - width)) < index <= bucket_index(estimate * (1 + width)):
            width *= 16
        below, above = estimate * (1 - width), estimate * (1 + width)
        while math.nextafter(below, math.inf) < above:  # halve the gap down to adjacent floats
            middle = (below + above) / 2
            below, above = (below, middle) if bucket_index(middle) >= index else (middle, above)
        starts.append(above)
    return tuple(starts)


@dataclass
class Second:
    """One function-revision-second, accumulated in memory until the second is over."""

    requests: int = 0
    errors: int = 0
    latency_ms_sum: float = 0.0
    histogram: dict[int, int] = field(default_factory=dict)

    def merge(self, other: Second) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency_ms_sum += other.latency_ms_sum
        for index, count in other.histogram.items():
            self.histogram[index] = self.histogram.get(index, 0) + count

    def histogram_by_bound(self) -> dict[str, int]:
        """The histogram as the store keeps it: upper bound (ms, as text) → count."""
        return {BOUNDS[i]: c for i, c in sorted(self.histogram.items())}


@dataclass(frozen=True)
class Window:
    """A revision's traffic over a window: what rollout analysis decides on."""

    requests: int
    errors: int
    error_rate: float  # 0.0 when there were no requests
    p95_ms: float | None  # None when there were no requests: no data is not a fast revision


def window_of(requests: int, errors: int, histogram: dict[str, int]) -> Window:
    return Window(requests, errors, errors / requests if requests else 0.0, quantile(histogram, 0.95))


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
