"""Progressive rollouts, decided purely: the transitions between a rollout's records (`rollout.record`) as it
walks its strategy's stages (`fnctl.manifest.stages`): weights to set, events to record, revisions to stop.

No store, no engine, no clock: `fnctl.deploy.rolloutdriver` feeds in the time, the requests (`fnctl promote`,
`abort`) and analysis verdicts, and carries out what comes back, each transition in one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from fnctl.manifest.model import Analysis, Inconclusive, Strategy
from fnctl.manifest.stages import Stage, StageKind
from fnctl.manifest.units import format_duration
from fnctl.rollout.analysis import AnalysisOutcome, Verdict
from fnctl.rollout.record import ACTIVE, Record, State


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
