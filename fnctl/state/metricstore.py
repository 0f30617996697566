"""The per-second traffic buckets in the store (`metrics` table): written by the gateway's flusher, read by
rollout analysis and A/B reports as "revision R over the last N seconds"."""

from __future__ import annotations

import json
import math
import time

from fnctl.rollout.latency import INDEX_OF, Second, Window, window_of
from fnctl.state.store import Store

RETENTION_SECONDS = 86_400  # per-second buckets older than this are pruned: analysis looks back minutes


def add_second(store: Store, key: tuple[str, int, int], second: Second) -> None:
    """Insert one bucket (function, revision, second), or add it to the row already there (a restart within
    the same second). `second` is updated to the stored total."""
    rows = store._query(
        "SELECT requests, errors, latency_ms_sum, histogram FROM metrics "
        "WHERE function = ? AND revision = ? AND second = ?",
        key,
    )
    if rows:
        stored = {INDEX_OF[b]: int(c) for b, c in json.loads(rows[0][3]).items() if b in INDEX_OF}
        second.merge(Second(int(rows[0][0]), int(rows[0][1]), float(rows[0][2]), stored))
        store._execute(
            "UPDATE metrics SET requests = ?, errors = ?, latency_ms_sum = ?, histogram = ? "
            "WHERE function = ? AND revision = ? AND second = ?",
            (second.requests, second.errors, second.latency_ms_sum, _histogram_json(second), *key),
        )
    else:
        store._execute(
            "INSERT INTO metrics (function, revision, second, requests, errors, latency_ms_sum, histogram) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*key, second.requests, second.errors, second.latency_ms_sum, _histogram_json(second)),
        )


def prune(store: Store, now: float) -> None:
    store._execute("DELETE FROM metrics WHERE second < ?", (int(now) - RETENTION_SECONDS,))


def _histogram_json(second: Second) -> str:
    return json.dumps(second.histogram_by_bound(), separators=(",", ":"))


def window(store: Store, function: str, revision: int, seconds: float, *, now: float | None = None) -> Window:
    """Requests, errors, error rate and p95 latency of `revision` in the last `seconds` one-second buckets
    (the current one included). Reads what the gateway has flushed: the latest second or two may lag."""
    since = int(time.time() if now is None else now) - math.ceil(seconds) + 1
    return window_of(*totals(store, function, revision, since))


def totals(
    store: Store, function: str, revision: int, since: int, until: int | None = None
) -> tuple[int, int, dict[str, int]]:
    """Requests, errors and the merged latency histogram of `revision` from second `since` to `until`."""
    sql = "SELECT requests, errors, histogram FROM metrics WHERE function = ? AND revision = ? AND second >= ?"
    params: tuple[object, ...] = (function, revision, since)
    if until is not None:
        sql, params = sql + " AND second <= ?", params + (until,)
    rows = store._query(sql, params)
    histogram: dict[str, int] = {}
    for row in rows:
        for bound, count in json.loads(row[2]).items():
            histogram[bound] = histogram.get(bound, 0) + int(count)
    return sum(int(r[0]) for r in rows), sum(int(r[1]) for r in rows), histogram


def series(store: Store, function: str, since: int) -> dict[int, list[tuple[int, int, int]]]:
    """Per revision of `function`: (second, requests, errors) of each bucket from second `since` on, oldest
    first (seconds without traffic have no bucket): the dashboard's sparklines."""
    rows = store._query(
        "SELECT revision, second, requests, errors FROM metrics WHERE function = ? AND second >= ? "
        "ORDER BY revision, second",
        (function, since),
    )
    found: dict[int, list[tuple[int, int, int]]] = {}
    for revision, second, requests, errors in rows:
        found.setdefault(int(revision), []).append((int(second), int(requests), int(errors)))
    return found
