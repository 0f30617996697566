"""Progressive rollouts, decided purely: a strategy as a list of stages, the progress record kept in the
store, and the transitions between records (weights to set, events to record, revisions to stop).

No store, no engine, no clock: `fnctl.deploy.rolloutdriver` feeds in the time, the requests (`fnctl promote`,
`abort`) and analysis verdicts, and carries out what comes back, each transition in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from fnctl.manifest.model import Analysis, Inconclusive, Rollout, RolloutStepKind, Strategy
from fnctl.manifest.units import format_duration


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


class State(StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"  # at a gate: waits for `fnctl promote`
    COMPLETED = "completed"  # the winner takes 100%; the others stay warm at 0% until the scale-down
    ABORTED = "aborted"  # all traffic back on stable


ACTIVE = (State.PROGRESSING.value, State.PAUSED.value)


class StageKind(StrEnum):
    WEIGHTS = "setWeight"
    PAUSE = "pause"
    ANALYSIS = "analysis"


@dataclass(frozen=True)
class Stage:
    kind: StageKind
    label: str
    weights: tuple[tuple[str | int, int], ...] = ()  # (revision: "new" | "stable" | number, percent)
    seconds: float | None = None  # a pause's length; None: a gate, until `fnctl promote`
    from_start: bool = False  # the pause counts from the rollout's start (blue-green autoPromotionSeconds)
    analysis: Analysis | None = None


def stages(rollout: Rollout) -> tuple[Stage, ...]:
    """A strategy as the stages the controller walks through; after the last one the new revision (or the
    promoted variant) takes 100%."""
    if rollout.strategy is Strategy.CANARY:
        return tuple(_canary_stage(step.kind, step.weight, step.pause, step.analysis) for step in rollout.steps)
    if rollout.strategy is Strategy.BLUE_GREEN:
        found: list[Stage] = []
        if rollout.pre_promotion_analysis is not None:
            found.append(Stage(StageKind.ANALYSIS, "pre-promotion analysis", analysis=rollout.pre_promotion_analysis))
        if rollout.auto_promotion_enabled:
            seconds = float(rollout.auto_promotion_seconds or 0)
            label = (
                f"auto-promotion {format_duration(seconds)} after the preview started" if seconds else "auto-promotion"
            )
            found.append(Stage(StageKind.PAUSE, label, seconds=seconds, from_start=True))
        else:
            found.append(Stage(StageKind.PAUSE, "preview: promote with `fnctl promote`"))
        return tuple(found)
    if rollout.strategy is Strategy.AB_TEST:
        weights = tuple((v.revision, v.weight) for v in rollout.variants)
        return (
            Stage(
                StageKind.WEIGHTS,
                "variants " + ", ".join(f"{v.name}={v.weight}%" for v in rollout.variants),
                weights=weights,
            ),
            Stage(StageKind.PAUSE, "A/B test: promote a variant with `fnctl promote --variant`"),
        )
    return ()


def _canary_stage(kind: RolloutStepKind, weight: int | None, pause: float | None, analysis: Analysis | None) -> Stage:
    if kind is RolloutStepKind.SET_WEIGHT:
        assert weight is not None
        return Stage(StageKind.WEIGHTS, f"setWeight {weight}", weights=(("new", weight), ("stable", 100 - weight)))
    if kind is RolloutStepKind.PAUSE:
        return Stage(
            StageKind.PAUSE,
            f"pause {format_duration(pause)}" if pause is not None else "pause (until promoted)",
            seconds=pause,
        )
    return Stage(StageKind.ANALYSIS, "analysis", analysis=analysis)


# ---- the record ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """A rollout's progress, as the store keeps it (`detail` holds all but the first six fields)."""

    id: int
    function: str
    stable: int
    canary: int
    strategy: Strategy
    state: State
    step: int  # the stage under way (== len(stages) once they are all done)
    started_at: float
    step_started: float
    weights: dict[int, int]
    variants: dict[str, int] = field(default_factory=dict)  # abTest: variant name → revision
    failures: int = 0  # consecutive failed measurements of the analysis under way
    next_measure: float | None = None
    handled: int = 0  # the last request event acted on
    winner: int | None = None
    scale_down_at: float | None = None
    scaled_down: bool = False
    reason: str = ""

    @property
    def done(self) -> bool:
        """Nothing left to do: aborted, or completed with the others stopped."""
        return self.state is State.ABORTED or (self.state is State.COMPLETED and self.scaled_down)

    def detail(self) -> dict[str, Any]:
        """The store's form of the progress (rollouts.detail), read back by `record_from`. Its keys are frozen:
        a store keeps them across upgrades, so a change needs a store migration (tests/golden/store/)."""
        return {
            "startedAt": self.started_at,
            "stepStarted": self.step_started,
            "weights": {str(r): w for r, w in self.weights.items()},
            "variants": self.variants,
            "failures": self.failures,
            "nextMeasure": self.next_measure,
            "handled": self.handled,
            "winner": self.winner,
            "scaleDownAt": self.scale_down_at,
            "scaledDown": self.scaled_down,
            "reason": self.reason,
        }


def record_from(
    id: int,
    function: str,
    stable: int | None,
    canary: int,
    strategy: str,
    step: int,
    state: str,
    detail: Mapping[str, Any],
    started_at: float,
) -> Record:
    return Record(
        id,
        function,
        stable if stable is not None else canary,
        canary,
        Strategy(strategy),
        State(state),
        step,
        float(detail.get("startedAt", started_at)),
        float(detail.get("stepStarted", started_at)),
        {int(r): int(w) for r, w in (detail.get("weights") or {}).items()},
        {str(k): int(v) for k, v in (detail.get("variants") or {}).items()},
        int(detail.get("failures", 0)),
        detail.get("nextMeasure"),
        int(detail.get("handled", 0)),
        detail.get("winner"),
        detail.get("scaleDownAt"),
        bool(detail.get("scaledDown", False)),
        str(detail.get("reason", "")),
    )


# ---- transitions ---------------------------------------------------------------------------------


class EventKind(StrEnum):
    STARTED = "started"
    WEIGHT = "weight"
    PAUSE = "pause"  # a timed pause began
    PAUSED = "paused"  # at a gate
    ANALYSIS = "analysis"  # an analysis began
    MEASUREMENT = "measurement"
    PROMOTE_REQUESTED = "promote-requested"
    ABORT_REQUESTED = "abort-requested"
    PROMOTED = "promoted"
    IGNORED = "ignored"  # a request that did not apply
    ABORTED = "aborted"
    COMPLETED = "completed"
    SCALED_DOWN = "scaled-down"
    RETRIED = "retried"


REQUESTS = (EventKind.PROMOTE_REQUESTED.value, EventKind.ABORT_REQUESTED.value)


@dataclass(frozen=True)
class Event:
    kind: EventKind
    step: int
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Transition:
    """The next record, the events to record with it, and what to do once it is committed."""

    record: Record
    events: tuple[Event, ...]
    stop: frozenset[int] = frozenset()  # revisions whose instances to stop (after the routes moved)
    quarantine: bool = False  # the canary failed: quarantined with the same rule as `fnctl rollback`


@dataclass(frozen=True)
class Wait:
    until: float | None  # None: a gate, until a request


@dataclass(frozen=True)
class Measure:
    analysis: Analysis
    since: float  # the measurement window's start


def step(
    record: Record, plan: tuple[Stage, ...], scale_down_delay: float, now: float
) -> Transition | Wait | Measure | None:
    """What to do next; None when the rollout is done."""
    if record.done:
        return None
    if record.state is State.COMPLETED:
        assert record.scale_down_at is not None
        return _scale_down(record) if now >= record.scale_down_at else Wait(record.scale_down_at)
    if record.state is State.PAUSED:
        return Wait(None)
    if record.step >= len(plan):
        return complete(record, record.canary, scale_down_delay, now, "all steps done")
    stage = plan[record.step]
    if stage.kind is StageKind.WEIGHTS:
        weights = resolve(stage.weights, record)
        moved = replace(record, weights=weights)
        return _next(
            moved,
            plan,
            now,
            Event(
                EventKind.WEIGHT,
                record.step,
                f"step {record.step + 1}: {stage.label}: " + weights_text(weights),
                {"weights": _json_weights(weights)},
            ),
        )
    if stage.kind is StageKind.PAUSE:
        if stage.seconds is None:
            return Transition(
                replace(record, state=State.PAUSED),
                (Event(EventKind.PAUSED, record.step, f"step {record.step + 1}: {stage.label}"),),
            )
        end = (record.started_at if stage.from_start else record.step_started) + stage.seconds
        return _next(record, plan, now) if now >= end else Wait(end)
    assert stage.analysis is not None
    due = record.next_measure if record.next_measure is not None else record.step_started + stage.analysis.interval
    if now < due:
        return Wait(due)
    since = now - stage.analysis.window if stage.analysis.window else record.step_started
    return Measure(stage.analysis, since)


def _next(record: Record, plan: tuple[Stage, ...], now: float, *events: Event) -> Transition:
    """Move on to the next stage, recording its start when it takes time (a pause, an analysis)."""
    index = record.step + 1
    entering: tuple[Event, ...] = ()
    if index < len(plan) and plan[index].kind is StageKind.PAUSE and plan[index].seconds is not None:
        entering = (
            Event(EventKind.PAUSE, index, f"step {index + 1}: {plan[index].label}", {"seconds": plan[index].seconds}),
        )
    elif index < len(plan) and plan[index].kind is StageKind.ANALYSIS:
        entering = (Event(EventKind.ANALYSIS, index, f"step {index + 1}: {plan[index].label}"),)
    moved = replace(record, step=index, step_started=now, state=State.PROGRESSING, failures=0, next_measure=None)
    return Transition(moved, events + entering)


def entering(plan: tuple[Stage, ...], record: Record) -> tuple[Event, ...]:
    """The events of a rollout's start (its first stage's, when that one takes time)."""
    first = replace(record, step=-1)
    return _next(first, plan, record.started_at).events


def complete(record: Record, winner: int, scale_down_delay: float, now: float, why: str) -> Transition:
    """The winner takes 100% in one change; the other routed revisions stay warm at 0% until the scale-down."""
    weights = {winner: 100, **{r: 0 for r in sorted(record.weights) if r != winner}}
    if record.stable not in weights:
        weights[record.stable] = 0
    until = now + scale_down_delay
    others = ", ".join(f"revision {r}" for r in weights if r != winner) or "nothing"
    moved = replace(record, state=State.COMPLETED, weights=weights, winner=winner, scale_down_at=until)
    return Transition(
        moved,
        (
            Event(
                EventKind.COMPLETED,
                record.step,
                f"{why}: revision {winner} takes 100%; {others} stays warm for {format_duration(scale_down_delay)}",
                {"weights": _json_weights(weights)},
            ),
        ),
    )


def _scale_down(record: Record) -> Transition:
    assert record.winner is not None
    others = frozenset(r for r in record.weights if r != record.winner)
    moved = replace(record, weights={record.winner: 100}, scaled_down=True)
    return Transition(
        moved,
        (
            Event(
                EventKind.SCALED_DOWN,
                record.step,
                "stopped "
                + (", ".join(f"revision {r}" for r in sorted(others)) or "nothing")
                + " (scaleDownDelay over)",
            ),
        ),
        stop=others,
    )


def abort(record: Record, reason: str, *, quarantine: bool = True) -> Transition:
    """All traffic back on stable in one change; the canary stopped (and quarantined when it failed)."""
    weights = {record.stable: 100}
    moved = replace(record, state=State.ABORTED, weights=weights, reason=reason)
    doomed = frozenset({record.canary} | set(record.weights) | set(record.variants.values())) - {record.stable}
    return Transition(
        moved,
        (
            Event(
                EventKind.ABORTED,
                record.step,
                f"aborted: {reason}; traffic: " + weights_text(weights),
                {"weights": _json_weights(weights)},
            ),
        ),
        stop=doomed,
        quarantine=quarantine,
    )


# ---- requests ------------------------------------------------------------------------------------


def on_request(
    record: Record, plan: tuple[Stage, ...], kind: str, data: Mapping[str, Any], scale_down_delay: float, now: float
) -> Transition:
    """Act on `fnctl promote` (data: full, variant) or `fnctl abort` (data: by)."""
    if record.state.value not in ACTIVE:
        return _ignored(record, f"{kind}: the rollout is already {record.state.value}")
    if kind == EventKind.ABORT_REQUESTED.value:
        return abort(record, f"aborted by {data.get('by', 'a user')}")
    variant = data.get("variant")
    if record.strategy is Strategy.AB_TEST:
        if variant not in record.variants:
            return _ignored(record, f"promote: name one of the variants ({', '.join(record.variants)}) with --variant")
        return complete(record, record.variants[str(variant)], scale_down_delay, now, f"variant {variant} promoted")
    if data.get("full") or record.strategy is Strategy.BLUE_GREEN:
        return complete(record, record.canary, scale_down_delay, now, "promoted")
    label = plan[record.step].label if record.step < len(plan) else "the end"
    return _next(
        record, plan, now, Event(EventKind.PROMOTED, record.step, f"step {record.step + 1} ({label}) promoted")
    )


def _ignored(record: Record, why: str) -> Transition:
    return Transition(record, (Event(EventKind.IGNORED, record.step, why),))


# ---- analysis ------------------------------------------------------------------------------------


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


def on_measurement(record: Record, plan: tuple[Stage, ...], verdict: Verdict, now: float) -> Transition:
    """Pass: the step is done. Fail: one more consecutive failure; `failureLimit` of them abort. Inconclusive:
    as the analysis says (wait: measure again, pass, fail)."""
    stage = plan[record.step]
    assert stage.analysis is not None
    outcome = verdict.outcome
    if outcome is AnalysisOutcome.INCONCLUSIVE and stage.analysis.inconclusive is not Inconclusive.WAIT:
        outcome = AnalysisOutcome.PASS if stage.analysis.inconclusive is Inconclusive.PASS else AnalysisOutcome.FAIL
    measured = Event(
        EventKind.MEASUREMENT,
        record.step,
        f"step {record.step + 1}: {stage.label}: {verdict.outcome.value}"
        f"{'' if outcome is verdict.outcome else f' (counted as {outcome.value})'}: {verdict.reason}",
        {"outcome": outcome.value, **verdict.figures},
    )
    if outcome is AnalysisOutcome.PASS:
        return _next(record, plan, now, measured)
    if outcome is AnalysisOutcome.FAIL:
        failures = record.failures + 1
        if failures >= stage.analysis.failure_limit:
            aborted = abort(replace(record, failures=failures), f"analysis failed: {verdict.reason}")
            return replace(aborted, events=(measured,) + aborted.events)
        return Transition(replace(record, failures=failures, next_measure=now + stage.analysis.interval), (measured,))
    return Transition(replace(record, next_measure=now + stage.analysis.interval), (measured,))


# ---- helpers -------------------------------------------------------------------------------------


def resolve(weights: tuple[tuple[str | int, int], ...], record: Record) -> dict[int, int]:
    """Stage weights by revision number ("new" is the canary, "stable" the revision traffic came from)."""
    resolved: dict[int, int] = {}
    for ref, weight in weights:
        number = record.canary if ref == "new" else record.stable if ref == "stable" else int(ref)
        resolved[number] = resolved.get(number, 0) + weight
    return resolved


def weights_text(weights: Mapping[int, int]) -> str:
    return ", ".join(f"r{r}={w}%" for r, w in sorted(weights.items(), key=lambda item: -item[0]))


def _json_weights(weights: Mapping[int, int]) -> dict[str, int]:
    return {str(r): w for r, w in weights.items()}
