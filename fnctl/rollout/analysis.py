"""One measurement of a rollout's analysis judged: the synthetic checks, then the thresholds, absolute or
relative to stable (`evaluate`), into a `Verdict`. Pure: the figures come in (`TrafficFigures`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from fnctl.manifest.model import Analysis


class TrafficFigures(Protocol):
    """A revision's traffic over a measurement window (fnctl.rollout.latency.Window)."""

    @property
    def requests(self) -> int: ...

    @property
    def errors(self) -> int: ...

    @property
    def error_rate(self) -> float: ...

    @property
    def p95_ms(self) -> float | None: ...


class AnalysisOutcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Verdict:
    outcome: AnalysisOutcome
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


def evaluate(
    analysis: Analysis, canary: TrafficFigures, stable: TrafficFigures | None, check_failures: tuple[str, ...] = ()
) -> Verdict:
    """One measurement: the synthetic checks, then the thresholds, absolute or relative to stable."""
    figures = {
        "requests": canary.requests,
        "errors": canary.errors,
        "errorRate": canary.error_rate,
        "p95Ms": canary.p95_ms,
        "stable": None
        if stable is None
        else {"requests": stable.requests, "errorRate": stable.error_rate, "p95Ms": stable.p95_ms},
    }
    if check_failures:
        return Verdict(AnalysisOutcome.FAIL, "; ".join(check_failures), figures)
    if canary.requests < analysis.min_requests:
        return Verdict(AnalysisOutcome.INCONCLUSIVE, f"{canary.requests} of {analysis.min_requests} requests", figures)
    problems = _threshold_problems(analysis, canary, stable)
    if problems:
        return Verdict(AnalysisOutcome.FAIL, "; ".join(problems), figures)
    return Verdict(
        AnalysisOutcome.PASS,
        f"{canary.requests} requests, {canary.error_rate:.1%} errors"
        + (f", p95 {canary.p95_ms:.1f} ms" if canary.p95_ms is not None else ""),
        figures,
    )


def _threshold_problems(analysis: Analysis, canary: TrafficFigures, stable: TrafficFigures | None) -> list[str]:
    problems = []
    if analysis.max_error_rate is not None and canary.error_rate > analysis.max_error_rate:
        problems.append(f"error rate {canary.error_rate:.1%} > {analysis.max_error_rate:.1%}")
    if (
        analysis.max_error_rate_increase is not None
        and stable is not None
        and canary.error_rate - stable.error_rate > analysis.max_error_rate_increase
    ):
        problems.append(
            f"error rate {canary.error_rate:.1%} is more than {analysis.max_error_rate_increase:.1%} "
            f"above stable's {stable.error_rate:.1%}"
        )
    p95 = canary.p95_ms
    if analysis.max_p95_latency is not None and p95 is not None and p95 > analysis.max_p95_latency * 1000:
        problems.append(f"p95 latency {p95:.1f} ms > {analysis.max_p95_latency * 1000:g} ms")
    if (
        analysis.max_p95_latency_ratio is not None
        and p95 is not None
        and stable is not None
        and stable.p95_ms
        and p95 / stable.p95_ms > analysis.max_p95_latency_ratio
    ):
        problems.append(
            f"p95 latency {p95:.1f} ms is {p95 / stable.p95_ms:.2f}x stable's {stable.p95_ms:.1f} ms "
            f"(at most {analysis.max_p95_latency_ratio:g}x)"
        )
    return problems
