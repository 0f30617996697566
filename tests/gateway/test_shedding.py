"""Overload without collapse (issue 18, item 3): requests are refused for the wait they would have, not for
a queue's fixed length: the pure decisions, a revision pool with runtime processes on this machine as its
instances, and the gateway asking before it reads a body (its refusal never reaches the pool).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from polling import eventually
from test_gateway import Harness, run
from test_pool import local_pool, run_local

from fnctl.gateway.poolhost import Overloaded
from fnctl.gateway.shedding import RATE_WINDOW, RETRY_MAX, Shed, answer_rate, expected_wait, max_wait, retry_after, shed


def test_expected_wait_is_the_queue_worked_off_by_the_capacity() -> None:
    assert expected_wait(queued=0, capacity=8, latency=0.08) == pytest.approx(0.01)
    assert expected_wait(queued=167, capacity=32, latency=0.002) == pytest.approx(0.0105)  # 200 clients, 4 x 8
    assert expected_wait(queued=5, capacity=0, latency=1.0) is None  # nothing ready: a start's wait, not this one
    assert expected_wait(queued=5, capacity=2, latency=-1.0) == 0.0


def test_shed_only_past_the_limit_and_retry_after_from_the_same_estimate() -> None:
    assert shed(queued=167, capacity=32, latency=0.002, limit=5.0) is None  # long queue, short wait: admitted
    assert shed(queued=10, capacity=1, latency=0.5, limit=5.0) == Shed(5.5, 6)  # short queue, long wait
    assert shed(queued=9, capacity=1, latency=0.5, limit=5.0) is None  # exactly the limit: still admitted
    assert shed(queued=10_000, capacity=0, latency=1.0, limit=0.1) is None  # cold: never by the estimate
    refused = shed(queued=99, capacity=1, latency=10.0, limit=1.0)
    assert refused is not None and refused.retry_after == RETRY_MAX  # capped
    assert [retry_after(w) for w in (0.0, 0.2, 1.0, 1.01, 59.5, math.inf, math.nan)] == [1, 1, 1, 2, 60, 60, 60]


def _rate(gaps: list[float], rate: float = 0.0) -> float:
    for gap in gaps:
        rate = answer_rate(rate, gap)
    return rate


def test_the_answer_rate_is_the_answers_per_second_over_the_last_seconds() -> None:
    steady = _rate([0.001] * 10_000)  # 1,000 answers a second for 10 s
    assert steady == pytest.approx(1000, rel=0.01)
    assert _rate([0.01] * 2_000, steady) == pytest.approx(100, rel=0.01)  # slower for 20 s: it follows
    assert _rate([3 * RATE_WINDOW], steady) < 0.1 * steady  # nothing for a while: it fades out
    assert answer_rate(0.0, 1e9) == pytest.approx(1 / RATE_WINDOW) and answer_rate(5.0, -1.0) > 5.0


def test_a_pause_of_the_gateway_sheds_nothing_but_slow_instances_do() -> None:
    """200 clients on 4 x 8 slots (a queue of 167), answered at 1,000 a second with 30 ms invocations, when
    the gateway is held up for 1.5 s (a loaded machine): the 32 invocations in flight are measured ~1.5 s
    long and the moving average says a wait of ~7 s, past the 5 s timeout. Before, that round was refused;
    the answer rate, counted over seconds, says 0.3 s: admitted. Instances really that slow lower the rate
    too, and then the request is refused."""
    steady = _rate([0.001] * 10_000)
    after = _rate([1.5] + [0.0] * 31, steady)  # nothing answered during the pause, then the 32 at once
    latency = 0.03
    for _ in range(32):
        latency += (1.5 - latency) * 0.2  # the pool's moving average over those 32
    assert shed(queued=167, capacity=32, latency=latency, limit=5.0) is not None  # the average alone: refused
    assert shed(queued=167, capacity=32, latency=latency, limit=5.0, rate=after) is None
    slow = _rate([1.5 / 32] * 400, steady)  # instances answering 32 per 1.5 s for 19 s
    refused = shed(queued=167, capacity=32, latency=latency, limit=5.0, rate=slow)
    assert refused is not None and refused.wait == pytest.approx(7.8, rel=0.02) and refused.retry_after == 8
    assert expected_wait(queued=9, capacity=2, latency=1.0, rate=100.0) == pytest.approx(0.1)  # the sooner
    assert expected_wait(queued=9, capacity=2, latency=0.01, rate=1.0) == pytest.approx(0.05)


def test_max_wait_is_the_timeout_or_the_configured_wait_when_lower() -> None:
    assert max_wait(5.0, None) == 5.0
    assert max_wait(5.0, 0.5) == 0.5
    assert max_wait(0.2, 0.5) == 0.2


def test_a_pool_at_max_instances_admits_a_long_queue_of_short_requests(tmp_path: Path) -> None:
    """Before: at maxInstances a fixed queue (here the host's 8) refused whatever came next, however short
    the wait. Now the backstop is out of the way and 40 quick requests behind one slot all succeed."""
    host, pool = local_pool(tmp_path, min_instances=1, max_instances=1, concurrency=1)
    host.queue_limit = 1000

    async def scenario() -> None:
        pool.scale()
        await eventually(lambda: pool.stats().ready == 1, "the instance started")
        results = await asyncio.gather(*(pool.invoke({"n": n}, None, f"q{n}") for n in range(40)))
        assert all(r.outcome.ok for r in results)
        assert sorted(r.outcome.result["n"] for r in results) == list(range(40))

    run_local(host, scenario())


def test_a_pool_refuses_what_would_wait_past_the_timeout_with_retry_after(tmp_path: Path) -> None:
    host, pool = local_pool(tmp_path, min_instances=1, max_instances=1, concurrency=1, timeout=1.0)
    host.queue_limit = 1000

    async def scenario() -> None:
        pool.scale()
        await eventually(lambda: pool.stats().ready == 1, "the instance started")
        for n in range(3):  # the pool learns that an invocation takes ~0.3 s
            assert (await pool.invoke({"sleep": 0.3, "n": n}, None, f"warm{n}")).outcome.ok
        assert pool.latency >= 0.15  # a moving average, from 0.1 s towards 0.3 s
        busy = asyncio.ensure_future(pool.invoke({"sleep": 0.3, "n": 0}, None, "busy"))
        await eventually(lambda: pool.stats().inflight == 1, "the only slot taken")
        queued: list[asyncio.Future[Any]] = []
        refused: Overloaded | None = None
        for n in range(20):  # queue until the expected wait passes the 1 s timeout
            if pool.shed() is not None:
                with pytest.raises(Overloaded) as caught:
                    await pool.invoke({"n": n}, None, f"over{n}")
                refused = caught.value
                break
            queued.append(asyncio.ensure_future(pool.invoke({"sleep": 0.3, "n": n}, None, f"q{n}")))
            await eventually(lambda: pool.stats().queued == len(queued), "the request queued")
        assert refused is not None, "never refused"
        assert 2 <= len(queued) <= 6  # ~1 s of work at ~0.3 s each, not a fixed length
        assert refused.retry_after >= 1
        results = await asyncio.gather(busy, *queued)
        assert all(r.outcome.ok for r in results)  # everything admitted was served

    run_local(host, scenario())


def test_the_gateway_sheds_before_reading_the_body_and_never_calls_the_pool() -> None:
    asked: list[tuple[str, int]] = []

    def admission(function: str, revision: int) -> Shed | None:
        asked.append((function, revision))
        return Shed(12.5, 13) if function == "pub" else None

    async def check(h: Harness) -> None:
        h.gateway.admission = admission
        async with h.session.post(h.url + "/invoke/pub", data=b"not even json") as r:
            assert r.status == 429 and r.headers["Retry-After"] == "13"
            assert (await r.json())["error"] == "Too Many Requests"
        async with h.session.get(h.url + "/hello/ada") as r:  # an HTTP Trigger of pub: the same refusal
            assert r.status == 429 and r.headers["Retry-After"] == "13"
        async with h.session.post(h.url + "/invoke/priv", data=b"{}") as r:  # refused for access first
            assert r.status == 401
        assert h.pool.calls == [] and asked == [("pub", 1), ("pub", 1)]
        overloaded = [row for row in h.audit.rows if row["outcome"] == "overloaded"]
        assert [row["status"] for row in overloaded] == [429, 429]  # audited like any refusal

    run(check)
