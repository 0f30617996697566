"""A/B statistics: the two-proportion z-test and the histogram Mann-Whitney test on values worked out by
hand, their undefined cases, and the report's minimum sample size, verdicts and JSON."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from fnctl.rollout.abstats import Sample, mann_whitney_u, report, report_to_json, two_proportion_z
from fnctl.rollout.latency import BOUNDS, bucket_index


def histogram(latencies_ms: list[float]) -> dict[str, int]:
    """A store histogram of these latencies, bucketed as the gateway does."""
    return dict(Counter(BOUNDS[bucket_index(ms)] for ms in latencies_ms))


def spread(low_ms: float, high_ms: float, n: int) -> list[float]:
    """n latencies evenly spread over [low, high]."""
    return [low_ms + (high_ms - low_ms) * i / (n - 1) for i in range(n)]


def sample(requests: int, errors: int, latencies_ms: list[float] | None = None) -> Sample:
    """A variant's sample; its latencies are spread over 10-30 ms unless given."""
    if latencies_ms is None:
        latencies_ms = spread(10.0, 30.0, requests) if requests > 1 else [20.0] * requests
    return Sample(requests, errors, histogram(latencies_ms))


# ---- two-proportion z-test ----


def test_z_test_on_a_case_worked_by_hand() -> None:
    # A: 0 of 50, B: 10 of 50. Pooled p = 10/100 = 0.1; variance = 0.1 * 0.9 * (1/50 + 1/50) = 0.0036,
    # so the standard error is 0.06 and z = (0 - 0.2) / 0.06 = -10/3. Two-sided p = 2 * (1 - Phi(3.333))
    # = 2 * 0.000429 = 0.000858 (normal table).
    z, p = two_proportion_z(0, 50, 10, 50)
    assert z == pytest.approx(-10 / 3)
    assert p == pytest.approx(0.000858, abs=2e-6)
    assert two_proportion_z(10, 50, 0, 50) == pytest.approx((10 / 3, p))


def test_z_test_of_equal_proportions_is_zero_with_p_one() -> None:
    assert two_proportion_z(5, 100, 5, 100) == (0.0, 1.0)
    assert two_proportion_z(5, 100, 10, 200) == (0.0, 1.0)


@pytest.mark.parametrize("case", [(0, 100, 0, 100), (100, 100, 40, 40), (0, 0, 3, 10), (0, 10, 0, 0)])
def test_z_test_without_variance_or_requests_is_undefined(case: tuple[int, int, int, int]) -> None:
    # no errors anywhere, only errors, or a side without requests: nothing to compare
    assert two_proportion_z(*case) == (0.0, 1.0)


def test_z_test_of_all_errors_against_none_is_significant() -> None:
    z, p = two_proportion_z(100, 100, 0, 100)
    assert z > 0 and p < 1e-6


# ---- Mann-Whitney on histograms ----


def test_mann_whitney_on_a_case_worked_by_hand() -> None:
    # A = {1, 1, 2}, B = {2, 4, 4} ms. Buckets 1, 2, 4 hold 2 values each: midranks 1.5, 3.5, 5.5.
    # R_A = 2 * 1.5 + 3.5 = 6.5, U_A = 6.5 - 3 * 4 / 2 = 0.5 (pairs: one tie, A smaller in the rest).
    # Mean n_a * n_b / 2 = 4.5; ties sum(t^3 - t) = 3 * 6 = 18, so the variance is
    # 9 / 12 * (7 - 18 / 30) = 4.8 and z = (0.5 - 4.5) / sqrt(4.8) = -1.8257: p = 0.0679, not significant.
    z, p = mann_whitney_u({"1": 2, "2": 1}, {"2": 1, "4": 2})
    assert z == pytest.approx(-4 / math.sqrt(4.8))
    assert p == pytest.approx(0.0679, abs=1e-4)


def test_mann_whitney_orders_buckets_by_value_with_overflow_last() -> None:
    z, _ = mann_whitney_u({"9": 5}, {"10": 5})  # as text, "10" < "9": the order must be numeric
    assert z < 0
    z, _ = mann_whitney_u({"inf": 5}, {"120000": 5})
    assert z > 0


def test_mann_whitney_of_identical_histograms_is_not_significant() -> None:
    latencies = histogram(spread(5.0, 80.0, 500))
    assert mann_whitney_u(latencies, dict(latencies)) == (0.0, 1.0)


def test_mann_whitney_of_shifted_latencies_is_significant_and_signed() -> None:
    fast, slow = histogram(spread(10.0, 30.0, 200)), histogram(spread(15.0, 45.0, 200))
    z, p = mann_whitney_u(slow, fast)
    assert z > 0 and p < 0.001
    assert mann_whitney_u(fast, slow) == pytest.approx((-z, p))


@pytest.mark.parametrize("a, b", [({}, {"10": 3}), ({"10": 3}, {"10": 0}), ({"10": 4}, {"10": 7})])
def test_mann_whitney_without_data_or_spread_is_undefined(a: dict[str, int], b: dict[str, int]) -> None:
    assert mann_whitney_u(a, b) == (0.0, 1.0)


# ---- the report ----


def test_report_summarizes_each_variant() -> None:
    result = report([("A", 1, sample(200, 2)), ("B", 2, sample(0, 0))], confidence=0.95, min_samples=100)
    a, b = result.variants
    assert (a.name, a.revision, a.requests, a.errors, a.error_rate) == ("A", 1, 200, 2, 0.01)
    assert a.p50_ms is not None and a.p95_ms is not None and a.p99_ms is not None
    assert 10.0 < a.p50_ms < a.p95_ms <= a.p99_ms < 35.0
    assert (b.requests, b.error_rate, b.p50_ms, b.p95_ms, b.p99_ms) == (0, 0.0, None, None, None)


def test_report_runs_no_test_below_the_minimum_sample_size() -> None:
    result = report([("A", 1, sample(100, 0)), ("B", 2, sample(40, 40))], confidence=0.95, min_samples=100)
    (comparison,) = result.comparisons
    assert (comparison.variant, comparison.control, comparison.enough_samples) == ("B", "A", False)
    assert comparison.error_rate is None and comparison.latency is None
    assert comparison.verdict == "not enough samples: 40 of 100 requests in B (60 more needed)"


def test_report_names_every_side_short_of_samples_and_a_variant_without_requests() -> None:
    result = report([("A", 1, sample(30, 0)), ("B", 2, sample(0, 0))], confidence=0.95, min_samples=50)
    assert result.comparisons[0].verdict == (
        "not enough samples: 0 of 50 requests in B (50 more needed), 30 of 50 requests in A (20 more needed)"
    )
    result = report([("A", 1, sample(30, 0)), ("B", 2, sample(0, 0))], confidence=0.95, min_samples=0)
    assert result.comparisons[0].verdict == "not enough samples: 0 of 1 requests in B (1 more needed)"


def test_report_of_identical_variants_finds_no_difference() -> None:
    result = report([("A", 1, sample(500, 5)), ("B", 2, sample(500, 5))], confidence=0.95, min_samples=100)
    (comparison,) = result.comparisons
    assert comparison.enough_samples
    assert comparison.error_rate is not None and comparison.latency is not None
    assert (comparison.error_rate.p_value, comparison.latency.p_value) == (1.0, 1.0)
    assert comparison.verdict == "no significant difference"


def test_report_flags_a_significantly_higher_error_rate() -> None:
    result = report([("A", 1, sample(1000, 4)), ("B", 2, sample(1000, 21))], confidence=0.95, min_samples=100)
    (comparison,) = result.comparisons
    assert comparison.error_rate is not None and comparison.error_rate.significant
    assert comparison.latency is not None and not comparison.latency.significant
    assert comparison.verdict == "B's error rate is significantly higher (2.1% vs 0.4%, p<0.001)"


def test_report_flags_a_significantly_faster_variant() -> None:
    control = sample(300, 0, spread(40.0, 120.0, 300))
    result = report(
        [("A", 1, control), ("B", 2, sample(300, 0, spread(10.0, 30.0, 300)))], confidence=0.99, min_samples=100
    )
    (comparison,) = result.comparisons
    assert comparison.latency is not None and comparison.latency.statistic < 0
    assert comparison.verdict.startswith("B is significantly faster (p50 ")
    assert comparison.verdict.endswith(", p<0.001)")


def test_significance_follows_the_confidence() -> None:
    # 0 of 50 against 5 of 50: pooled 0.05, standard error sqrt(0.05 * 0.95 * 0.04) = 0.0436,
    # z = -0.1 / 0.0436 = -2.29, p = 0.022: significant at 95 %, not at 99 %.
    samples = [("A", 1, sample(50, 0)), ("B", 2, sample(50, 5))]
    at_95 = report(samples, confidence=0.95, min_samples=50).comparisons[0]
    at_99 = report(samples, confidence=0.99, min_samples=50).comparisons[0]
    assert at_95.error_rate is not None and at_99.error_rate is not None
    assert at_95.error_rate.p_value == pytest.approx(0.0218, abs=1e-4)
    assert at_95.verdict == "B's error rate is significantly higher (10% vs 0%, p=0.0218)"
    assert not at_99.error_rate.significant and at_99.verdict == "no significant difference"


def test_all_errors_on_both_sides_is_no_difference_and_against_none_is_significant() -> None:
    both = report([("A", 1, sample(100, 100)), ("B", 2, sample(100, 100))], confidence=0.95, min_samples=100)
    assert both.comparisons[0].verdict == "no significant difference"
    better = report([("A", 1, sample(100, 100)), ("B", 2, sample(100, 0))], confidence=0.95, min_samples=100)
    assert better.comparisons[0].verdict == "B's error rate is significantly lower (0% vs 100%, p<0.001)"


def test_every_variant_is_compared_with_the_control() -> None:
    result = report(
        [("A", 1, sample(200, 1)), ("B", 2, sample(200, 1)), ("C", 3, sample(200, 60))],
        confidence=0.95,
        min_samples=100,
    )
    assert [(c.variant, c.control) for c in result.comparisons] == [("B", "A"), ("C", "A")]
    assert [c.verdict.startswith("C's error rate is significantly higher") for c in result.comparisons] == [False, True]


def test_report_refuses_bad_parameters() -> None:
    samples = [("A", 1, sample(10, 0)), ("A", 2, sample(10, 0))]
    with pytest.raises(ValueError, match="unique"):
        report(samples, confidence=0.95, min_samples=1)
    with pytest.raises(ValueError, match="confidence"):
        report(samples[:1], confidence=95, min_samples=1)
    with pytest.raises(ValueError, match="min_samples"):
        report(samples[:1], confidence=0.95, min_samples=-1)


def test_report_to_json_uses_camel_case_and_serializes() -> None:
    result = report([("A", 1, sample(100, 1)), ("B", 2, sample(40, 0))], confidence=0.95, min_samples=50)
    data = json.loads(json.dumps(report_to_json(result)))
    assert (data["confidence"], data["minSamples"]) == (0.95, 50)
    assert set(data["variants"][0]) == {
        "name",
        "revision",
        "requests",
        "errors",
        "errorRate",
        "p50Ms",
        "p95Ms",
        "p99Ms",
    }
    assert data["comparisons"] == [
        {
            "variant": "B",
            "control": "A",
            "enoughSamples": False,
            "errorRate": None,
            "latency": None,
            "verdict": result.comparisons[0].verdict,
        }
    ]
    tested = report_to_json(
        report([("A", 1, sample(100, 1)), ("B", 2, sample(100, 1))], confidence=0.95, min_samples=50)
    )
    assert tested["comparisons"][0]["errorRate"] == {"statistic": 0.0, "pValue": 1.0, "significant": False}
