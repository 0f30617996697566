"""A/B test statistics: per-variant summaries and significance tests of each variant against the control
(two-proportion z-test for error rate, Mann-Whitney U on the latency histograms), as plain values.

Pure: takes the counts and histograms the gateway stored, returns a report; no store, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fnctl.rollout.latency import quantile


@dataclass(frozen=True)
class Sample:
    """One variant's traffic over the test: counts and the store latency histogram
    ({bucket upper bound in ms as text, "inf" for the overflow: count})."""

    requests: int
    errors: int
    histogram: Mapping[str, int]


@dataclass(frozen=True)
class VariantSummary:
    name: str
    revision: int
    requests: int
    errors: int
    error_rate: float  # 0.0 when there were no requests
    p50_ms: float | None  # None when there is no latency data: no data is not a fast variant
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class TestResult:
    """A test of a variant against the control. `statistic` is a z score, positive when the variant is
    higher (more errors, slower) than the control."""

    __test__ = False  # a result, not a test case: keeps pytest from collecting it where it is imported

    statistic: float
    p_value: float
    significant: bool


@dataclass(frozen=True)
class Comparison:
    variant: str
    control: str
    enough_samples: bool
    error_rate: TestResult | None  # None when there were not enough samples to test
    latency: TestResult | None
    verdict: str  # in plain words, for people


@dataclass(frozen=True)
class AbReport:
    confidence: float
    min_samples: int
    variants: tuple[VariantSummary, ...]  # the control first
    comparisons: tuple[Comparison, ...]  # one per variant other than the control


def _two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def two_proportion_z(errors_a: int, n_a: int, errors_b: int, n_b: int) -> tuple[float, float]:
    """z statistic of p_a - p_b with the pooled proportion, and its two-sided p-value. (0, 1) when there is
    nothing to compare: a side without requests, or a pooled variance of 0 (no errors, or only errors)."""
    if n_a <= 0 or n_b <= 0:
        return 0.0, 1.0
    pooled = (errors_a + errors_b) / (n_a + n_b)
    variance = pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b)
    if variance <= 0.0:
        return 0.0, 1.0
    z = (errors_a / n_a - errors_b / n_b) / math.sqrt(variance)
    return z, _two_sided_p(z)


def _bucket_order(bound: str) -> float:
    return float(bound)  # "inf", the overflow bucket, parses as infinity: the last bucket


def mann_whitney_u(histogram_a: Mapping[str, int], histogram_b: Mapping[str, int]) -> tuple[float, float]:
    """Mann-Whitney U (Wilcoxon rank-sum) test of two latency histograms: z, positive when A tends to be
    slower than B, and its two-sided p-value; (0, 1) when undefined (an empty side, or all in one bucket).

    Why this test: latencies are skewed and long-tailed, not normal, so a t-test on means would be misled
    by a few slow requests; a rank test asks "does one variant tend to be slower" without assuming a
    shape. And only histograms are kept, never raw latencies: every request of a bucket is a tie, so each
    bucket takes the mean of the ranks it spans (midrank) and the variance gets the tie correction. With
    the sample sizes an A/B test needs, the normal approximation is accurate (no continuity correction).
    """
    bounds = sorted(
        {b for b, c in histogram_a.items() if c > 0} | {b for b, c in histogram_b.items() if c > 0}, key=_bucket_order
    )
    n_a = sum(c for c in histogram_a.values() if c > 0)
    n_b = sum(c for c in histogram_b.values() if c > 0)
    n = n_a + n_b
    if n_a == 0 or n_b == 0:
        return 0.0, 1.0
    rank_sum_a = 0.0
    ties = 0.0  # sum over buckets of t^3 - t
    below = 0
    for bound in bounds:
        in_a, in_b = max(histogram_a.get(bound, 0), 0), max(histogram_b.get(bound, 0), 0)
        tied = in_a + in_b
        rank_sum_a += in_a * (below + (tied + 1) / 2.0)  # ranks below+1 .. below+tied, all at their mean
        ties += float(tied) ** 3 - tied
        below += tied
    u_a = rank_sum_a - n_a * (n_a + 1) / 2.0
    variance = n_a * n_b / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0.0:
        return 0.0, 1.0
    z = (u_a - n_a * n_b / 2.0) / math.sqrt(variance)
    return z, _two_sided_p(z)


def summarize(name: str, revision: int, sample: Sample) -> VariantSummary:
    histogram = dict(sample.histogram)
    rate = sample.errors / sample.requests if sample.requests > 0 else 0.0
    return VariantSummary(
        name,
        revision,
        sample.requests,
        sample.errors,
        rate,
        quantile(histogram, 0.50),
        quantile(histogram, 0.95),
        quantile(histogram, 0.99),
    )


def report(samples: Sequence[tuple[str, int, Sample]], *, confidence: float, min_samples: int) -> AbReport:
    """Summaries of the variants (name, revision, sample), the first being the control, and a comparison
    of each other variant with it. A difference is significant when p < 1 - confidence; no test is run
    while either side has fewer than `min_samples` requests (and a side without requests is never enough)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), not {confidence}")
    if min_samples < 0:
        raise ValueError(f"min_samples must not be negative, not {min_samples}")
    names = [name for name, _, _ in samples]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique: {', '.join(names)}")
    summaries = tuple(summarize(name, revision, sample) for name, revision, sample in samples)
    comparisons = tuple(
        _compare(summary, sample.histogram, summaries[0], samples[0][2].histogram, 1.0 - confidence, min_samples)
        for summary, (_, _, sample) in zip(summaries[1:], samples[1:], strict=True)
    )
    return AbReport(confidence, min_samples, summaries, comparisons)


def _compare(
    variant: VariantSummary,
    histogram: Mapping[str, int],
    control: VariantSummary,
    control_histogram: Mapping[str, int],
    alpha: float,
    min_samples: int,
) -> Comparison:
    needed = max(min_samples, 1)
    short = [(v.name, v.requests) for v in (variant, control) if v.requests < needed]
    if short:
        return Comparison(variant.name, control.name, False, None, None, _not_enough(short, needed))
    z, p = two_proportion_z(variant.errors, variant.requests, control.errors, control.requests)
    error_rate = TestResult(z, p, p < alpha)
    z, p = mann_whitney_u(histogram, control_histogram)
    latency = TestResult(z, p, p < alpha)
    findings: list[str] = []
    if error_rate.significant:
        findings.append(
            f"{variant.name}'s error rate is significantly {_direction(error_rate, 'higher', 'lower')} "
            f"({_percent(variant.error_rate)} vs {_percent(control.error_rate)}, "
            f"{_p(error_rate.p_value)})"
        )
    if latency.significant:
        findings.append(
            f"{variant.name} is significantly {_direction(latency, 'slower', 'faster')} "
            f"(p50 {_ms(variant.p50_ms)} vs {_ms(control.p50_ms)}, {_p(latency.p_value)})"
        )
    verdict = "; ".join(findings) if findings else "no significant difference"
    return Comparison(variant.name, control.name, True, error_rate, latency, verdict)


def _not_enough(short: list[tuple[str, int]], needed: int) -> str:
    parts = [f"{count} of {needed} requests in {name} ({needed - count} more needed)" for name, count in short]
    return "not enough samples: " + ", ".join(parts)


def _direction(result: TestResult, up: str, down: str) -> str:
    return up if result.statistic > 0 else down


def _percent(rate: float) -> str:
    return f"{rate * 100:.3g}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f} ms" if value >= 100 else f"{value:.3g} ms"


def _p(p_value: float) -> str:
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.3g}"


def _test_to_json(result: TestResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {"statistic": result.statistic, "pValue": result.p_value, "significant": result.significant}


def report_to_json(report: AbReport) -> dict[str, Any]:
    return {
        "confidence": report.confidence,
        "minSamples": report.min_samples,
        "variants": [
            {
                "name": v.name,
                "revision": v.revision,
                "requests": v.requests,
                "errors": v.errors,
                "errorRate": v.error_rate,
                "p50Ms": v.p50_ms,
                "p95Ms": v.p95_ms,
                "p99Ms": v.p99_ms,
            }
            for v in report.variants
        ],
        "comparisons": [
            {
                "variant": c.variant,
                "control": c.control,
                "enoughSamples": c.enough_samples,
                "errorRate": _test_to_json(c.error_rate),
                "latency": _test_to_json(c.latency),
                "verdict": c.verdict,
            }
            for c in report.comparisons
        ],
    }
