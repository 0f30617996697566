"""Rollout logic without Docker. Part one pins `fnctl.rollout.machine` on plain values: a strategy's stages, the
transitions of a progress record under a fake clock (plain floats), analysis verdicts on fake traffic
windows, requests, and whole walks driven by a small loop that feeds each transition back in. Part two
drives `fnctl.deploy.rolloutdriver` against a real SQLite store in tmp_path, with no instance rows (so nothing is
ever stopped through the engine), checking routes, rollout rows, events and resumption.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from fnctl.deploy import executor, rolloutdriver
from fnctl.deploy.revisionspec import function_from_spec
from fnctl.gateway.metrics import Metrics
from fnctl.manifest.kinds import parse_rollout
from fnctl.manifest.model import Analysis, Limits, Strategy
from fnctl.manifest.stages import Stage, StageKind, stages
from fnctl.rollout.analysis import AnalysisOutcome, Verdict, evaluate
from fnctl.rollout.machine import (
    Event,
    EventKind,
    Measure,
    Transition,
    Wait,
    abort,
    complete,
    entering,
    on_measurement,
    on_request,
    resolve,
    step,
    weights_text,
)
from fnctl.rollout.record import Record, State, record_from
from fnctl.state import rolloutstore
from fnctl.state.auditlog import AuditFilter, audit_records
from fnctl.state.location import StateLocation
from fnctl.state.revisions import Revision, RevisionStatus
from fnctl.state.rolloutstore import RolloutRow
from fnctl.state.store import Store, connect

STABLE, NEW = 1, 2
T0 = 1000.0  # the fake clock: a rollout starts here
DELAY = 30.0  # scaleDownDelay of the pure tests


# ---- part one: fnctl.rollout.machine on values ------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """A fake measurement window (the `fnctl.rollout.analysis.TrafficFigures` protocol)."""

    requests: int
    errors: int = 0
    p95_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def plan_of(raw: dict[str, Any]) -> tuple[Stage, ...]:
    """The stages of a rollout written in manifest form."""
    return stages(parse_rollout(raw))


def canary(*steps: dict[str, Any]) -> tuple[Stage, ...]:
    return plan_of({"strategy": "canary", "steps": list(steps)})


def record(strategy: Strategy = Strategy.CANARY, **changes: Any) -> Record:
    """A rollout of revision NEW over STABLE, started at T0, at its first stage unless told otherwise."""
    return replace(
        Record(7, "fn", STABLE, NEW, strategy, State.PROGRESSING, 0, T0, T0, {STABLE: 100, NEW: 0}), **changes
    )


def verdict(outcome: AnalysisOutcome, reason: str = "fake") -> Verdict:
    return Verdict(outcome, reason, {"requests": 1})


def kinds(events: Iterable[Event]) -> list[str]:
    return [e.kind.value for e in events]


@dataclass
class Walk:
    """What a driver loop saw: each event with the fake time and stage it happened at, the revisions each
    transition stopped, the measurements it made, and where it stopped (a gate, or the end)."""

    record: Record
    events: list[tuple[float, str, int]] = field(default_factory=list)
    stops: list[tuple[float, frozenset[int]]] = field(default_factory=list)
    measured: list[tuple[float, float]] = field(default_factory=list)  # (at, window start)
    weights: list[dict[int, int]] = field(default_factory=list)  # the routes, each time they changed
    quarantined: bool = False
    gate: bool = False  # stopped at a gate (Wait(None)) rather than at the end (None)


def walk(
    start: Record,
    plan: tuple[Stage, ...],
    outcomes: Iterable[AnalysisOutcome] = (),
    *,
    now: float = T0,
    delay: float = DELAY,
) -> Walk:
    """Drive `start` the way the controller does: step, wait by jumping the clock to the wait's end,
    measure with the next of `outcomes`, and feed every transition back in, until a gate or the end."""
    pending = list(outcomes)
    seen = Walk(start)
    for _ in range(100):
        decided = step(seen.record, plan, delay, now)
        if decided is None:
            assert not pending, f"measurements left over: {pending}"
            return seen
        if isinstance(decided, Wait):
            if decided.until is None:
                seen.gate = True
                return seen
            assert decided.until > now, "a wait must lie in the future"
            now = decided.until
            continue
        if isinstance(decided, Measure):
            assert pending, f"an unexpected measurement at {now}"
            seen.measured.append((now, decided.since))
            decided = on_measurement(seen.record, plan, verdict(pending.pop(0)), now)
        seen.events += [(now, e.kind.value, e.step) for e in decided.events]
        if decided.stop:
            seen.stops.append((now, decided.stop))
        if decided.record.weights != seen.record.weights:
            seen.weights.append(decided.record.weights)
        seen.quarantined = seen.quarantined or decided.quarantine
        seen.record = decided.record
    raise AssertionError("the walk never stopped")


# ---- stages ----


def test_canary_stages_follow_the_steps_in_order() -> None:
    plan = canary(
        {"setWeight": 20},
        {"pause": "10s"},
        {"pause": {"duration": "1m"}},
        {"pause": {}},
        {"analysis": {"maxErrorRate": 0.01, "interval": "5s"}},
        {"setWeight": 60},
    )
    assert [(s.kind, s.label, s.weights, s.seconds, s.from_start) for s in plan] == [
        (StageKind.WEIGHTS, "setWeight 20", (("new", 20), ("stable", 80)), None, False),
        (StageKind.PAUSE, "pause 10s", (), 10.0, False),
        (StageKind.PAUSE, "pause 1m", (), 60.0, False),
        (StageKind.PAUSE, "pause (until promoted)", (), None, False),
        (StageKind.ANALYSIS, "analysis", (), None, False),
        (StageKind.WEIGHTS, "setWeight 60", (("new", 60), ("stable", 40)), None, False),
    ]
    assert plan[4].analysis == Analysis(max_error_rate=0.01, interval=5.0)
    assert all(s.analysis is None for i, s in enumerate(plan) if i != 4)


def test_blue_green_stages_auto_promote_from_the_start_by_default() -> None:
    (only,) = plan_of({"strategy": "blueGreen"})
    assert (only.kind, only.seconds, only.from_start) == (StageKind.PAUSE, 0.0, True)
    (timed,) = plan_of({"strategy": "blueGreen", "autoPromotionSeconds": 60})
    assert (timed.kind, timed.label, timed.seconds, timed.from_start) == (
        StageKind.PAUSE,
        "auto-promotion 1m after the preview started",
        60.0,
        True,
    )


def test_blue_green_stages_without_auto_promotion_end_at_a_gate() -> None:
    (gate,) = plan_of({"strategy": "blueGreen", "autoPromotionEnabled": False, "autoPromotionSeconds": 60})
    assert (gate.kind, gate.label, gate.seconds, gate.from_start) == (
        StageKind.PAUSE,
        "preview: promote with `fnctl promote`",
        None,
        False,
    )


def test_blue_green_pre_promotion_analysis_comes_first() -> None:
    raw = {
        "strategy": "blueGreen",
        "autoPromotionSeconds": 30,
        "prePromotionAnalysis": {"maxErrorRate": 0.05, "minRequests": 5},
    }
    analysis, pause = plan_of(raw)
    assert (analysis.kind, analysis.label) == (StageKind.ANALYSIS, "pre-promotion analysis")
    assert analysis.analysis == Analysis(max_error_rate=0.05, min_requests=5)
    assert (pause.kind, pause.seconds, pause.from_start) == (StageKind.PAUSE, 30.0, True)
    manual = plan_of({**raw, "autoPromotionEnabled": False})
    assert [(s.kind, s.seconds) for s in manual] == [(StageKind.ANALYSIS, None), (StageKind.PAUSE, None)]


def test_ab_test_stages_set_the_variant_weights_then_wait_for_a_variant() -> None:
    weights, gate = plan_of(
        {
            "strategy": "abTest",
            "variants": [
                {"name": "a", "weight": 50, "revision": "stable"},
                {"name": "b", "weight": 30, "revision": "new"},
                {"name": "c", "weight": 20, "revision": 5},
            ],
        }
    )
    assert (weights.kind, weights.label, weights.weights) == (
        StageKind.WEIGHTS,
        "variants a=50%, b=30%, c=20%",
        (("stable", 50), ("new", 30), (5, 20)),
    )
    assert (gate.kind, gate.seconds) == (StageKind.PAUSE, None)


def test_an_immediate_rollout_has_no_stages() -> None:
    assert plan_of({"strategy": "immediate"}) == ()


# ---- step ----


def test_set_weight_moves_the_weights_and_advances_in_one_transition() -> None:
    plan = canary({"setWeight": 20}, {"setWeight": 60})
    moved = step(record(), plan, DELAY, T0 + 3)
    assert isinstance(moved, Transition)
    assert (moved.record.step, moved.record.weights, moved.record.step_started) == (1, {NEW: 20, STABLE: 80}, T0 + 3)
    assert [(e.kind, e.step, e.message, e.data) for e in moved.events] == [
        (EventKind.WEIGHT, 0, "step 1: setWeight 20: r2=20%, r1=80%", {"weights": {"2": 20, "1": 80}})
    ]
    assert (moved.stop, moved.quarantine) == (frozenset(), False)


def test_entering_a_timed_pause_or_an_analysis_is_an_event_and_a_gate_is_not() -> None:
    into_pause = step(record(), canary({"setWeight": 20}, {"pause": "10s"}), DELAY, T0)
    into_analysis = step(record(), canary({"setWeight": 20}, {"analysis": {}}), DELAY, T0)
    into_gate = step(record(), canary({"setWeight": 20}, {"pause": {}}), DELAY, T0)
    assert isinstance(into_pause, Transition) and isinstance(into_analysis, Transition)
    assert isinstance(into_gate, Transition)
    assert [(e.kind, e.step, e.data) for e in into_pause.events[1:]] == [(EventKind.PAUSE, 1, {"seconds": 10.0})]
    assert [(e.kind, e.step, e.message) for e in into_analysis.events[1:]] == [
        (EventKind.ANALYSIS, 1, "step 2: analysis")
    ]
    assert kinds(into_gate.events) == ["weight"]


def test_a_timed_pause_waits_until_its_end_counted_from_the_step_start() -> None:
    plan = canary({"setWeight": 20}, {"pause": "10s"}, {"setWeight": 60})
    paused = record(step=1, step_started=T0 + 5, weights={NEW: 20, STABLE: 80})
    assert step(paused, plan, DELAY, T0 + 5) == Wait(T0 + 15)
    assert step(paused, plan, DELAY, T0 + 14.9) == Wait(T0 + 15)
    over = step(paused, plan, DELAY, T0 + 15)
    assert isinstance(over, Transition)
    assert (over.record.step, over.record.step_started, over.record.weights, over.events) == (
        2,
        T0 + 15,
        {NEW: 20, STABLE: 80},
        (),
    )


def test_blue_green_auto_promotion_counts_from_the_rollout_start() -> None:
    plan = plan_of({"strategy": "blueGreen", "autoPromotionSeconds": 60, "prePromotionAnalysis": {}})
    # the analysis passed at T0 + 40: the pause began then, but it ends 60 s after the rollout began
    waiting = record(Strategy.BLUE_GREEN, step=1, step_started=T0 + 40)
    assert step(waiting, plan, DELAY, T0 + 40) == Wait(T0 + 60)
    promoted = step(waiting, plan, DELAY, T0 + 60)
    assert isinstance(promoted, Transition) and promoted.record.step == 2
    finished = step(promoted.record, plan, DELAY, T0 + 60)
    assert isinstance(finished, Transition)
    assert (finished.record.state, finished.record.weights) == (State.COMPLETED, {NEW: 100, STABLE: 0})


def test_a_gate_pauses_the_rollout_until_a_request() -> None:
    plan = canary({"setWeight": 20}, {"pause": {}}, {"setWeight": 60})
    at_gate = record(step=1, weights={NEW: 20, STABLE: 80})
    paused = step(at_gate, plan, DELAY, T0)
    assert isinstance(paused, Transition)
    assert (paused.record.state, paused.record.step, paused.record.weights) == (State.PAUSED, 1, {NEW: 20, STABLE: 80})
    assert [(e.kind, e.step, e.message) for e in paused.events] == [
        (EventKind.PAUSED, 1, "step 2: pause (until promoted)")
    ]
    assert step(paused.record, plan, DELAY, T0 + 10_000) == Wait(None)


def test_an_analysis_is_due_one_interval_after_its_step_began() -> None:
    plan = canary({"setWeight": 20}, {"analysis": {"maxErrorRate": 0.01, "interval": "20s"}})
    measuring = record(step=1, step_started=T0 + 5, weights={NEW: 20, STABLE: 80})
    assert step(measuring, plan, DELAY, T0 + 24) == Wait(T0 + 25)
    due = step(measuring, plan, DELAY, T0 + 25)
    assert due == Measure(Analysis(max_error_rate=0.01, interval=20.0), T0 + 5)  # everything since the step began
    later = replace(measuring, next_measure=T0 + 45)  # after a failed or inconclusive measurement
    assert step(later, plan, DELAY, T0 + 44) == Wait(T0 + 45)
    again = step(later, plan, DELAY, T0 + 46)
    assert isinstance(again, Measure) and again.since == T0 + 5


def test_an_analysis_window_measures_the_last_window_even_before_the_step() -> None:
    plan = canary({"setWeight": 20}, {"analysis": {"interval": "10s", "window": "30s"}})
    measuring = record(step=1, step_started=T0 + 5, weights={NEW: 20, STABLE: 80})
    due = step(measuring, plan, DELAY, T0 + 15)
    assert isinstance(due, Measure) and due.since == T0 + 15 - 30


def test_after_the_last_step_the_new_revision_takes_all_traffic_and_the_old_stays_warm() -> None:
    plan = canary({"setWeight": 20}, {"setWeight": 60})
    done = step(record(step=2, weights={NEW: 60, STABLE: 40}), plan, DELAY, T0 + 7)
    assert isinstance(done, Transition)
    assert (done.record.state, done.record.winner, done.record.weights, done.record.scale_down_at) == (
        State.COMPLETED,
        NEW,
        {NEW: 100, STABLE: 0},
        T0 + 7 + DELAY,
    )
    assert not done.record.done and done.stop == frozenset() and not done.quarantine
    assert [(e.kind, e.step, e.message, e.data) for e in done.events] == [
        (
            EventKind.COMPLETED,
            2,
            "all steps done: revision 2 takes 100%; revision 1 stays warm for 30s",
            {"weights": {"2": 100, "1": 0}},
        )
    ]


def test_the_old_revision_is_stopped_once_the_scale_down_delay_is_over() -> None:
    warm = record(state=State.COMPLETED, step=2, winner=NEW, weights={NEW: 100, STABLE: 0}, scale_down_at=T0 + 30)
    plan = canary({"setWeight": 20}, {"setWeight": 60})
    assert step(warm, plan, DELAY, T0 + 29) == Wait(T0 + 30)
    stopped = step(warm, plan, DELAY, T0 + 30)
    assert isinstance(stopped, Transition)
    assert stopped.stop == frozenset({STABLE})
    assert (stopped.record.weights, stopped.record.scaled_down, stopped.record.done) == ({NEW: 100}, True, True)
    assert [(e.kind, e.step, e.message) for e in stopped.events] == [
        (EventKind.SCALED_DOWN, 2, "stopped revision 1 (scaleDownDelay over)")
    ]
    assert step(stopped.record, plan, DELAY, T0 + 1_000) is None


def test_an_aborted_rollout_has_nothing_left_to_do() -> None:
    aborted = abort(record(weights={NEW: 20, STABLE: 80}), "bad").record
    assert aborted.done
    assert step(aborted, canary({"setWeight": 20}), DELAY, T0 + 1) is None


# ---- on_measurement ----


ANALYSIS_THEN_WEIGHT: tuple[dict[str, Any], ...] = (
    {"setWeight": 20},
    {"analysis": {"interval": "10s", "failureLimit": 3}},
    {"setWeight": 60},
)


def measuring(**changes: Any) -> Record:
    return record(step=1, weights={NEW: 20, STABLE: 80}, **changes)


def test_a_passing_measurement_completes_the_analysis_step() -> None:
    plan = canary(*ANALYSIS_THEN_WEIGHT)
    passed = on_measurement(
        measuring(failures=2, next_measure=T0 + 30), plan, verdict(AnalysisOutcome.PASS, "fine"), T0 + 30
    )
    assert (passed.record.step, passed.record.step_started, passed.record.failures, passed.record.next_measure) == (
        2,
        T0 + 30,
        0,
        None,
    )
    assert [(e.kind, e.step, e.message, e.data) for e in passed.events] == [
        (EventKind.MEASUREMENT, 1, "step 2: analysis: pass: fine", {"outcome": "pass", "requests": 1})
    ]
    assert not passed.stop and not passed.quarantine


def test_failed_measurements_count_up_to_the_failure_limit_then_abort_and_quarantine() -> None:
    plan = canary(*ANALYSIS_THEN_WEIGHT)
    once = on_measurement(measuring(), plan, verdict(AnalysisOutcome.FAIL, "too many errors"), T0 + 10)
    assert (once.record.state, once.record.failures, once.record.next_measure, once.record.step) == (
        State.PROGRESSING,
        1,
        T0 + 20,
        1,
    )
    assert kinds(once.events) == ["measurement"] and once.events[0].data["outcome"] == "fail"
    assert (once.stop, once.quarantine, once.record.weights) == (frozenset(), False, {NEW: 20, STABLE: 80})
    twice = on_measurement(once.record, plan, verdict(AnalysisOutcome.FAIL, "too many errors"), T0 + 20)
    assert (twice.record.state, twice.record.failures) == (State.PROGRESSING, 2)
    third = on_measurement(twice.record, plan, verdict(AnalysisOutcome.FAIL, "too many errors"), T0 + 30)
    assert (third.record.state, third.record.failures, third.record.weights) == (State.ABORTED, 3, {STABLE: 100})
    assert third.record.reason == "analysis failed: too many errors"
    assert (third.stop, third.quarantine) == (frozenset({NEW}), True)
    assert [(e.kind, e.step) for e in third.events] == [(EventKind.MEASUREMENT, 1), (EventKind.ABORTED, 1)]
    assert third.events[1].message == "aborted: analysis failed: too many errors; traffic: r1=100%"


def test_a_pass_between_failures_resets_the_count_when_its_step_completes() -> None:
    plan = canary({"setWeight": 20}, {"analysis": {"failureLimit": 2}}, {"analysis": {"failureLimit": 2}})
    failed = on_measurement(measuring(), plan, verdict(AnalysisOutcome.FAIL), T0 + 10)
    passed = on_measurement(failed.record, plan, verdict(AnalysisOutcome.PASS), T0 + 20)
    assert (failed.record.failures, passed.record.failures, passed.record.step) == (1, 0, 2)
    failed_again = on_measurement(passed.record, plan, verdict(AnalysisOutcome.FAIL), T0 + 30)
    assert (failed_again.record.state, failed_again.record.failures) == (State.PROGRESSING, 1)


def test_inconclusive_with_wait_measures_again_without_counting() -> None:
    plan = canary(*ANALYSIS_THEN_WEIGHT)
    waited = on_measurement(
        measuring(failures=1), plan, verdict(AnalysisOutcome.INCONCLUSIVE, "3 of 50 requests"), T0 + 10
    )
    assert (waited.record.step, waited.record.failures, waited.record.next_measure, waited.record.state) == (
        1,
        1,
        T0 + 20,
        State.PROGRESSING,
    )
    assert [(e.kind, e.message, e.data["outcome"]) for e in waited.events] == [
        (EventKind.MEASUREMENT, "step 2: analysis: inconclusive: 3 of 50 requests", "inconclusive")
    ]


def test_inconclusive_with_wait_neither_counts_nor_breaks_a_run_of_failures() -> None:
    plan = canary({"setWeight": 20}, {"analysis": {"failureLimit": 2}})
    failed = on_measurement(measuring(), plan, verdict(AnalysisOutcome.FAIL), T0 + 10)
    waited = on_measurement(failed.record, plan, verdict(AnalysisOutcome.INCONCLUSIVE), T0 + 20)
    aborted = on_measurement(waited.record, plan, verdict(AnalysisOutcome.FAIL), T0 + 30)
    assert (failed.record.failures, waited.record.failures) == (1, 1)
    assert aborted.record.state is State.ABORTED


def test_inconclusive_counts_as_a_pass_or_a_failure_when_the_analysis_says_so() -> None:
    passing = canary({"setWeight": 20}, {"analysis": {"inconclusive": "pass"}}, {"setWeight": 60})
    passed = on_measurement(measuring(), passing, verdict(AnalysisOutcome.INCONCLUSIVE, "0 of 9 requests"), T0 + 10)
    assert passed.record.step == 2
    assert [(e.message, e.data["outcome"]) for e in passed.events] == [
        ("step 2: analysis: inconclusive (counted as pass): 0 of 9 requests", "pass")
    ]
    failing = canary({"setWeight": 20}, {"analysis": {"inconclusive": "fail"}})
    failed = on_measurement(measuring(), failing, verdict(AnalysisOutcome.INCONCLUSIVE, "0 of 9 requests"), T0 + 10)
    assert (failed.record.state, failed.quarantine, failed.record.reason) == (
        State.ABORTED,
        True,
        "analysis failed: 0 of 9 requests",
    )
    assert failed.events[0].data["outcome"] == "fail"
    assert "inconclusive (counted as fail)" in failed.events[0].message


# ---- evaluate ----


def test_too_few_requests_is_inconclusive_and_enough_passes() -> None:
    analysis = Analysis(max_error_rate=0.5, min_requests=50)
    short = evaluate(analysis, Traffic(49, 49), Traffic(100))
    assert (short.outcome, short.reason) == (AnalysisOutcome.INCONCLUSIVE, "49 of 50 requests")
    enough = evaluate(analysis, Traffic(50, 5, p95_ms=12.25), Traffic(100))
    assert (enough.outcome, enough.reason) == (AnalysisOutcome.PASS, "50 requests, 10.0% errors, p95 12.2 ms")
    assert enough.figures == {
        "requests": 50,
        "errors": 5,
        "errorRate": 0.1,
        "p95Ms": 12.25,
        "stable": {"requests": 100, "errorRate": 0.0, "p95Ms": None},
    }
    assert evaluate(analysis, Traffic(50), None).figures["stable"] is None


def test_max_error_rate_is_an_upper_bound() -> None:
    analysis = Analysis(max_error_rate=0.1)
    assert evaluate(analysis, Traffic(100, 10), None).outcome is AnalysisOutcome.PASS
    over = evaluate(analysis, Traffic(100, 11), None)
    assert (over.outcome, over.reason) == (AnalysisOutcome.FAIL, "error rate 11.0% > 10.0%")


def test_max_error_rate_increase_is_relative_to_stable() -> None:
    analysis = Analysis(max_error_rate_increase=0.05)
    assert evaluate(analysis, Traffic(100, 8), Traffic(100, 4)).outcome is AnalysisOutcome.PASS
    worse = evaluate(analysis, Traffic(100, 12), Traffic(100, 4))
    assert (worse.outcome, worse.reason) == (
        AnalysisOutcome.FAIL,
        "error rate 12.0% is more than 5.0% above stable's 4.0%",
    )
    assert evaluate(analysis, Traffic(100, 90), None).outcome is AnalysisOutcome.PASS  # nothing to compare with


def test_max_p95_latency_is_in_seconds_in_the_model_and_in_ms_in_windows() -> None:
    written = {"strategy": "canary", "steps": [{"analysis": {"maxP95Latency": "200ms"}}]}
    analysis = parse_rollout(written).steps[0].analysis
    assert analysis is not None and analysis.max_p95_latency == 0.2
    assert evaluate(analysis, Traffic(10, p95_ms=200.0), None).outcome is AnalysisOutcome.PASS
    slow = evaluate(analysis, Traffic(10, p95_ms=250.0), None)
    assert (slow.outcome, slow.reason) == (AnalysisOutcome.FAIL, "p95 latency 250.0 ms > 200 ms")
    assert evaluate(analysis, Traffic(0), None).outcome is AnalysisOutcome.PASS  # no requests: no latency to judge


def test_max_p95_latency_ratio_is_relative_to_stable() -> None:
    analysis = Analysis(max_p95_latency_ratio=1.5)
    assert evaluate(analysis, Traffic(10, p95_ms=150.0), Traffic(10, p95_ms=100.0)).outcome is AnalysisOutcome.PASS
    slow = evaluate(analysis, Traffic(10, p95_ms=160.0), Traffic(10, p95_ms=100.0))
    assert (slow.outcome, slow.reason) == (
        AnalysisOutcome.FAIL,
        "p95 latency 160.0 ms is 1.60x stable's 100.0 ms (at most 1.5x)",
    )
    assert (
        evaluate(analysis, Traffic(10, p95_ms=900.0), Traffic(0)).outcome is AnalysisOutcome.PASS
    )  # stable has no p95


def test_every_broken_threshold_is_named() -> None:
    analysis = Analysis(max_error_rate=0.1, max_p95_latency=0.1)
    both = evaluate(analysis, Traffic(10, 5, p95_ms=300.0), None)
    assert (both.outcome, both.reason) == (
        AnalysisOutcome.FAIL,
        "error rate 50.0% > 10.0%; p95 latency 300.0 ms > 100 ms",
    )


def test_failing_synthetic_checks_fail_before_anything_is_counted() -> None:
    analysis = Analysis(max_error_rate=0.1, min_requests=100)
    failed = evaluate(analysis, Traffic(3), Traffic(100), ("check[0] failed (error): boom", "check[1] timed out"))
    assert (failed.outcome, failed.reason) == (
        AnalysisOutcome.FAIL,
        "check[0] failed (error): boom; check[1] timed out",
    )
    assert failed.figures["requests"] == 3


# ---- on_request ----


GATED: tuple[dict[str, Any], ...] = (
    {"setWeight": 20},
    {"pause": {}},
    {"setWeight": 60},
    {"pause": "1m"},
    {"analysis": {}},
)


def test_promote_at_a_gate_moves_one_step() -> None:
    plan = canary(*GATED)
    paused = record(state=State.PAUSED, step=1, weights={NEW: 20, STABLE: 80})
    promoted = on_request(paused, plan, "promote-requested", {"by": "alice"}, DELAY, T0 + 50)
    assert (promoted.record.state, promoted.record.step, promoted.record.step_started, promoted.record.weights) == (
        State.PROGRESSING,
        2,
        T0 + 50,
        {NEW: 20, STABLE: 80},
    )
    assert [(e.kind, e.step, e.message) for e in promoted.events] == [
        (EventKind.PROMOTED, 1, "step 2 (pause (until promoted)) promoted")
    ]


def test_promote_during_a_timed_pause_moves_one_step_and_enters_the_next() -> None:
    plan = canary(*GATED)
    pausing = record(step=3, step_started=T0 + 10, weights={NEW: 60, STABLE: 40})
    promoted = on_request(pausing, plan, "promote-requested", {}, DELAY, T0 + 20)
    assert (promoted.record.step, promoted.record.step_started) == (4, T0 + 20)
    assert [(e.kind, e.step) for e in promoted.events] == [(EventKind.PROMOTED, 3), (EventKind.ANALYSIS, 4)]


def test_promote_full_completes_at_once() -> None:
    plan = canary(*GATED)
    paused = record(state=State.PAUSED, step=1, weights={NEW: 20, STABLE: 80})
    full = on_request(paused, plan, "promote-requested", {"full": True}, DELAY, T0 + 50)
    assert (full.record.state, full.record.winner, full.record.weights, full.record.scale_down_at) == (
        State.COMPLETED,
        NEW,
        {NEW: 100, STABLE: 0},
        T0 + 50 + DELAY,
    )
    assert [(e.kind, e.message) for e in full.events] == [
        (EventKind.COMPLETED, "promoted: revision 2 takes 100%; revision 1 stays warm for 30s")
    ]


def test_promoting_a_blue_green_preview_completes_it() -> None:
    for raw in (
        {"strategy": "blueGreen", "autoPromotionEnabled": False},
        {"strategy": "blueGreen", "autoPromotionSeconds": 600},
    ):
        plan = plan_of(raw)
        preview = record(Strategy.BLUE_GREEN, state=State.PAUSED if plan[0].seconds is None else State.PROGRESSING)
        promoted = on_request(preview, plan, "promote-requested", {}, DELAY, T0 + 5)
        assert (promoted.record.state, promoted.record.winner, promoted.record.weights) == (
            State.COMPLETED,
            NEW,
            {NEW: 100, STABLE: 0},
        ), raw


AB = {
    "strategy": "abTest",
    "variants": [{"name": "a", "weight": 70, "revision": "stable"}, {"name": "b", "weight": 30, "revision": "new"}],
}


def ab_record(**changes: Any) -> Record:
    base = {"state": State.PAUSED, "step": 1, "weights": {STABLE: 70, NEW: 30}, "variants": {"a": STABLE, "b": NEW}}
    return record(Strategy.AB_TEST, **{**base, **changes})


def test_ab_promote_needs_a_known_variant() -> None:
    plan = plan_of(AB)
    for data in ({}, {"variant": "z"}, {"full": True}):
        ignored = on_request(ab_record(), plan, "promote-requested", data, DELAY, T0 + 5)
        assert ignored.record == ab_record(), data
        assert [(e.kind, e.message) for e in ignored.events] == [
            (EventKind.IGNORED, "promote: name one of the variants (a, b) with --variant")
        ]


def test_ab_promote_makes_the_variant_the_winner() -> None:
    plan = plan_of(AB)
    b = on_request(ab_record(), plan, "promote-requested", {"variant": "b"}, DELAY, T0 + 5)
    assert (b.record.state, b.record.winner, b.record.weights) == (State.COMPLETED, NEW, {NEW: 100, STABLE: 0})
    assert b.events[0].message == "variant b promoted: revision 2 takes 100%; revision 1 stays warm for 30s"


def test_ab_promote_of_the_stable_variant_keeps_stable_and_stops_the_new_revision() -> None:
    plan = plan_of(AB)
    a = on_request(ab_record(), plan, "promote-requested", {"variant": "a"}, DELAY, T0 + 5)
    assert (a.record.state, a.record.winner, a.record.weights) == (State.COMPLETED, STABLE, {STABLE: 100, NEW: 0})
    assert not a.quarantine
    scaled = step(a.record, plan, DELAY, T0 + 5 + DELAY)
    assert isinstance(scaled, Transition)
    assert (scaled.stop, scaled.record.weights) == (frozenset({NEW}), {STABLE: 100})


def test_abort_sends_everything_back_to_stable_and_quarantines_the_canary() -> None:
    plan = canary(*GATED)
    for before in (
        record(step=3, weights={NEW: 60, STABLE: 40}),
        record(state=State.PAUSED, step=1, weights={NEW: 20, STABLE: 80}),
    ):
        aborted = on_request(before, plan, "abort-requested", {"by": "alice"}, DELAY, T0 + 5)
        assert (aborted.record.state, aborted.record.weights, aborted.record.reason, aborted.record.step) == (
            State.ABORTED,
            {STABLE: 100},
            "aborted by alice",
            before.step,
        )
        assert (aborted.stop, aborted.quarantine) == (frozenset({NEW}), True)
        assert [(e.kind, e.message) for e in aborted.events] == [
            (EventKind.ABORTED, "aborted: aborted by alice; traffic: r1=100%")
        ]
    anonymous = on_request(record(), plan, "abort-requested", {}, DELAY, T0)
    assert anonymous.record.reason == "aborted by a user"


def test_abort_of_an_ab_test_stops_every_variant_but_stable() -> None:
    three = ab_record(weights={STABLE: 50, NEW: 30, 5: 20}, variants={"a": STABLE, "b": NEW, "c": 5})
    aborted = abort(three, "enough")
    assert (aborted.record.weights, aborted.stop) == ({STABLE: 100}, frozenset({NEW, 5}))
    gentle = abort(three, "superseded", quarantine=False)
    assert (gentle.quarantine, gentle.stop) == (False, frozenset({NEW, 5}))


def test_requests_on_a_finished_rollout_are_ignored() -> None:
    plan = canary(*GATED)
    warm = complete(record(step=2, weights={NEW: 20, STABLE: 80}), NEW, DELAY, T0, "promoted").record
    aborted = abort(record(), "bad").record
    for finished in (warm, aborted, replace(warm, scaled_down=True)):
        for kind, data in (("promote-requested", {"full": True}), ("abort-requested", {"by": "bob"})):
            ignored = on_request(finished, plan, kind, data, DELAY, T0 + 9)
            assert ignored.record == finished
            assert (ignored.stop, ignored.quarantine) == (frozenset(), False)
            assert [(e.kind, e.step, e.message) for e in ignored.events] == [
                (EventKind.IGNORED, finished.step, f"{kind}: the rollout is already {finished.state.value}")
            ]


# ---- helpers and the record ----


def test_complete_keeps_stable_warm_even_when_it_had_no_weight() -> None:
    third = record(Strategy.AB_TEST, weights={5: 50, NEW: 50}, variants={"old": 5, "new": NEW})
    done = complete(third, NEW, DELAY, T0, "variant new promoted")
    assert done.record.weights == {NEW: 100, 5: 0, STABLE: 0}
    assert sum(done.record.weights.values()) == 100


def test_resolve_names_revisions_and_weights_text_lists_the_newest_first() -> None:
    assert resolve((("new", 30), ("stable", 50), (5, 20)), record()) == {NEW: 30, STABLE: 50, 5: 20}
    assert resolve((("stable", 50), ("stable", 50)), record()) == {STABLE: 100}
    assert weights_text({STABLE: 80, NEW: 20, 5: 0}) == "r5=0%, r2=20%, r1=80%"


def test_entering_a_rollout_announces_its_first_stage_when_it_takes_time() -> None:
    assert entering(canary({"setWeight": 20}), record()) == ()
    assert [(e.kind, e.step, e.data) for e in entering(canary({"pause": "30s"}), record())] == [
        (EventKind.PAUSE, 0, {"seconds": 30.0})
    ]
    assert kinds(entering(plan_of({"strategy": "blueGreen", "prePromotionAnalysis": {}}), record())) == ["analysis"]
    assert entering(plan_of({"strategy": "blueGreen", "autoPromotionEnabled": False}), record()) == ()


def test_the_record_round_trips_through_its_stored_detail() -> None:
    full = Record(
        9,
        "fn",
        STABLE,
        NEW,
        Strategy.AB_TEST,
        State.COMPLETED,
        2,
        T0,
        T0 + 12.5,
        {STABLE: 0, NEW: 100},
        {"a": STABLE, "b": NEW},
        failures=2,
        next_measure=T0 + 40,
        handled=17,
        winner=NEW,
        scale_down_at=T0 + 70,
        scaled_down=True,
        reason="variant b promoted",
    )
    stored = json.loads(json.dumps(full.detail()))  # as the store keeps it
    assert record_from(9, "fn", STABLE, NEW, "abTest", 2, "completed", stored, T0) == full
    fresh = record()
    assert (
        record_from(7, "fn", STABLE, NEW, "canary", 0, "progressing", json.loads(json.dumps(fresh.detail())), T0)
        == fresh
    )


def test_a_record_without_detail_or_stable_gets_the_defaults() -> None:
    bare = record_from(3, "fn", None, NEW, "canary", 0, "progressing", {}, T0)
    assert bare == Record(3, "fn", NEW, NEW, Strategy.CANARY, State.PROGRESSING, 0, T0, T0, {})


# ---- whole walks ----


def test_a_canary_walk_records_its_events_in_order() -> None:
    plan = canary(
        {"setWeight": 20}, {"pause": "10s"}, {"analysis": {"maxErrorRate": 0.05, "interval": "5s"}}, {"setWeight": 60}
    )
    start = record()
    seen = walk(start, plan, [AnalysisOutcome.PASS])
    assert entering(plan, start) == ()
    assert seen.events == [
        (T0, "weight", 0),
        (T0, "pause", 1),
        (T0 + 10, "analysis", 2),
        (T0 + 15, "measurement", 2),
        (T0 + 15, "weight", 3),
        (T0 + 15, "completed", 4),
        (T0 + 15 + DELAY, "scaled-down", 4),
    ]
    assert seen.measured == [(T0 + 15, T0 + 10)]
    assert seen.weights == [{NEW: 20, STABLE: 80}, {NEW: 60, STABLE: 40}, {NEW: 100, STABLE: 0}, {NEW: 100}]
    assert seen.stops == [(T0 + 15 + DELAY, frozenset({STABLE}))]
    assert (seen.record.state, seen.record.done, seen.gate, seen.quarantined) == (State.COMPLETED, True, False, False)


def test_a_canary_walk_that_fails_its_analysis_rolls_back() -> None:
    plan = canary({"setWeight": 10}, {"analysis": {"interval": "10s", "failureLimit": 2}}, {"setWeight": 50})
    seen = walk(record(), plan, [AnalysisOutcome.FAIL, AnalysisOutcome.INCONCLUSIVE, AnalysisOutcome.FAIL])
    assert seen.events == [
        (T0, "weight", 0),
        (T0, "analysis", 1),
        (T0 + 10, "measurement", 1),
        (T0 + 20, "measurement", 1),
        (T0 + 30, "measurement", 1),
        (T0 + 30, "aborted", 1),
    ]
    assert seen.weights == [{NEW: 10, STABLE: 90}, {STABLE: 100}]
    assert seen.stops == [(T0 + 30, frozenset({NEW}))]
    assert (seen.record.state, seen.quarantined) == (State.ABORTED, True)


def test_a_canary_walk_through_a_gate_and_a_promote() -> None:
    plan = canary({"setWeight": 25}, {"pause": {}}, {"setWeight": 75})
    first = walk(record(), plan)
    assert (first.gate, first.events) == (True, [(T0, "weight", 0), (T0, "paused", 1)])
    promoted = on_request(first.record, plan, "promote-requested", {}, DELAY, T0 + 100)
    rest = walk(promoted.record, plan, now=T0 + 100)
    assert kinds(promoted.events) + [kind for _, kind, _ in rest.events] == [
        "promoted",
        "weight",
        "completed",
        "scaled-down",
    ]
    assert rest.weights == [{NEW: 75, STABLE: 25}, {NEW: 100, STABLE: 0}, {NEW: 100}]


def test_a_blue_green_walk_never_promotes_before_its_analysis_passed() -> None:
    plan = plan_of(
        {
            "strategy": "blueGreen",
            "autoPromotionSeconds": 15,
            "prePromotionAnalysis": {"interval": "20s", "minRequests": 1},
        }
    )
    start = record(Strategy.BLUE_GREEN)
    seen = walk(start, plan, [AnalysisOutcome.INCONCLUSIVE, AnalysisOutcome.PASS])
    assert kinds(entering(plan, start)) == ["analysis"]
    assert seen.events == [
        (T0 + 20, "measurement", 0),
        (T0 + 40, "measurement", 0),
        (T0 + 40, "pause", 1),
        (T0 + 40, "completed", 2),
        (T0 + 40 + DELAY, "scaled-down", 2),
    ]
    assert seen.weights == [{NEW: 100, STABLE: 0}, {NEW: 100}]  # the preview had 0% until then


def test_an_ab_walk_sets_the_variants_then_waits_for_one() -> None:
    plan = plan_of(AB)
    start = record(Strategy.AB_TEST, variants={"a": STABLE, "b": NEW})
    first = walk(start, plan)
    assert (first.gate, first.events, first.weights) == (
        True,
        [(T0, "weight", 0), (T0, "paused", 1)],
        [{STABLE: 70, NEW: 30}],
    )
    won = on_request(first.record, plan, "promote-requested", {"variant": "a"}, DELAY, T0 + 60)
    rest = walk(won.record, plan, now=T0 + 60)
    assert kinds(won.events) + [kind for _, kind, _ in rest.events] == ["completed", "scaled-down"]
    assert rest.stops == [(T0 + 60 + DELAY, frozenset({NEW}))]


# ---- part two: fnctl.deploy.rolloutdriver against a real store ----------------------------------------------


def spec_with(rollout: dict[str, Any]) -> dict[str, Any]:
    """A canonical-like revision spec (the keys of `desired.canonical_spec`) with `rollout`."""
    return {
        "runtime": "python3.11",
        "handler": "main.handler",
        "source": {"path": "./functions/fn", "hash": "0" * 64},
        "baseImage": "fnctl-base:test",
        "labels": {},
        "env": {},
        "secrets": {"names": [], "valuesHash": "", "sources": []},
        "limits": {"timeout": 5.0},
        "network": "none",
        "isolation": "container",
        "scaling": {"minInstances": 1, "maxInstances": 2, "concurrency": 4},
        "access": {"roles": ["public"]},
        "parameters": None,
        "returns": None,
        "healthCheck": [],
        "rollout": rollout,
    }


@dataclass
class Deployer:
    """A store in tmp_path with function `fn`: revision 1 live at 100%, more revisions added on demand."""

    store: Store
    ctx: executor.Context
    progress: list[str]

    def add(self, number: int, rollout: dict[str, Any]) -> None:
        spec = spec_with(rollout)
        self.store.add_revision(
            Revision(
                "fn",
                number,
                f"hash-{number}",
                spec,
                f"fnctl-fn:{number}",
                None,
                None,
                T0,
                "tester",
                RevisionStatus.READY,
                None,
            )
        )

    def begin(self, rollout: dict[str, Any], *, stable: int = STABLE, canary: int = NEW) -> RolloutRow:
        self.add(canary, rollout)
        function = function_from_spec("fn", spec_with(rollout), Limits())
        return rolloutdriver.begin(self.ctx, function, stable, canary)

    def row(self, rollout_id: int) -> RolloutRow:
        found = rolloutstore.rollout(self.store, rollout_id)
        assert found is not None
        return found

    def advance(self, rollout_id: int, at: float | None = None) -> tuple[Record, Wait | None]:
        """Advance a freshly read row, at the fake time `at` (the real clock when None)."""
        clock: Callable[[], float] = time.time if at is None else (lambda: at)
        return rolloutdriver.advance(self.ctx, self.row(rollout_id), now=clock)

    def events(self, rollout_id: int) -> list[str]:
        return [e.kind for e in rolloutstore.events(self.store, rollout_id)]

    def route(self) -> dict[int, int]:
        return self.store.routes()["fn"]

    def status(self, number: int) -> RevisionStatus:
        found = self.store.revision("fn", number)
        assert found is not None
        return found.status

    def request(self, rollout_id: int, kind: EventKind, data: dict[str, Any]) -> int:
        return rolloutdriver.request(self.store, rollout_id, kind, f"{kind.value} by test", data)


@pytest.fixture
def fleet(state_location: StateLocation) -> Iterator[Deployer]:
    store = connect(state_location)
    progress: list[str] = []
    ctx = executor.Context(store, "proj", "fnctl-base:test", "tester", "test", None, progress.append)
    deployer = Deployer(store, ctx, progress)
    deployer.add(STABLE, {"strategy": "immediate"})
    store.set_route("fn", {STABLE: 100})
    yield deployer
    assert store.instances() == [], "these tests must never start or stop an instance"
    store.close()


GATE = {"strategy": "canary", "steps": [{"setWeight": 50}, {"pause": {}}]}


def test_begin_puts_the_canary_at_zero_percent_and_records_the_start(fleet: Deployer) -> None:
    row = fleet.begin(GATE)
    assert (row.function, row.stable, row.canary, row.strategy, row.step, row.state) == (
        "fn",
        STABLE,
        NEW,
        "canary",
        0,
        "progressing",
    )
    assert fleet.route() == {STABLE: 100, NEW: 0}
    (started,) = rolloutstore.events(fleet.store, row.id)
    assert (started.kind, started.step, started.message, started.data) == (
        "started",
        0,
        "canary of revision 2 over revision 1: setWeight 50 → pause (until promoted)",
        {"stages": 2},
    )
    assert [a.action for a in audit_records(fleet.store, AuditFilter(target="fn"))] == ["rollout start"]
    assert rolloutdriver.record_of(row).weights == {STABLE: 100, NEW: 0}


def test_begin_records_the_first_stage_when_it_takes_time(fleet: Deployer) -> None:
    row = fleet.begin({"strategy": "blueGreen", "autoPromotionSeconds": 60})
    assert fleet.events(row.id) == ["started", "pause"]


def test_advance_runs_the_steps_until_a_gate_and_a_second_advance_repeats_nothing(fleet: Deployer) -> None:
    row = fleet.begin(GATE)
    record, waiting = fleet.advance(row.id)
    assert (record.state, record.step, waiting) == (State.PAUSED, 1, Wait(None))
    assert fleet.route() == {STABLE: 50, NEW: 50}
    assert fleet.events(row.id) == ["started", "weight", "paused"]
    stored = fleet.row(row.id)
    assert (stored.step, stored.state, rolloutdriver.record_of(stored)) == (1, "paused", record)
    again, waiting = fleet.advance(row.id)
    assert (again, waiting) == (record, Wait(None))
    assert fleet.events(row.id) == ["started", "weight", "paused"]
    assert "fn: step 1: setWeight 50: r2=50%, r1=50%" in fleet.progress


def test_promote_then_the_scale_down(fleet: Deployer) -> None:
    row = fleet.begin(GATE)
    fleet.advance(row.id)
    asked = fleet.request(row.id, EventKind.PROMOTE_REQUESTED, {"by": "alice"})
    at = row.started_at + 100
    record, waiting = fleet.advance(row.id, at)
    assert (record.state, record.handled, record.winner, record.scale_down_at) == (State.COMPLETED, asked, NEW, at + 30)
    assert waiting == Wait(at + 30)
    assert fleet.route() == {NEW: 100, STABLE: 0}
    assert fleet.events(row.id) == ["started", "weight", "paused", "promote-requested", "promoted", "completed"]
    assert [r.id for r in rolloutdriver.unfinished(fleet.store)] == [row.id]  # the old revision is still warm
    assert fleet.advance(row.id, at + 29)[1] == Wait(at + 30)
    record, waiting = fleet.advance(row.id, at + 30)
    assert (record.scaled_down, waiting) == (True, None)
    assert fleet.route() == {NEW: 100}
    assert fleet.events(row.id)[-1] == "scaled-down"
    assert rolloutdriver.unfinished(fleet.store) == []
    assert fleet.advance(row.id, at + 1_000) == (record, None)
    assert fleet.events(row.id)[-1] == "scaled-down"
    assert {"rollout completed", "route"} <= {a.action for a in audit_records(fleet.store, AuditFilter(target="fn"))}


def test_promote_full_from_a_gate_completes_at_once(fleet: Deployer) -> None:
    row = fleet.begin(
        {"strategy": "canary", "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]}
    )
    fleet.advance(row.id)
    fleet.request(row.id, EventKind.PROMOTE_REQUESTED, {"full": True, "by": "alice"})
    record, _ = fleet.advance(row.id)
    assert (record.state, record.step) == (State.COMPLETED, 1)
    assert fleet.route() == {NEW: 100, STABLE: 0}
    assert fleet.events(row.id)[-2:] == ["promote-requested", "completed"]


def test_abort_goes_back_to_stable_and_quarantines_and_a_second_abort_is_ignored(fleet: Deployer) -> None:
    row = fleet.begin(GATE)
    fleet.advance(row.id)
    fleet.request(row.id, EventKind.ABORT_REQUESTED, {"by": "alice"})
    record, waiting = fleet.advance(row.id)
    assert (record.state, record.reason, waiting) == (State.ABORTED, "aborted by alice", None)
    assert fleet.route() == {STABLE: 100}
    assert fleet.status(NEW) is RevisionStatus.QUARANTINED
    revision = fleet.store.revision("fn", NEW)
    assert revision is not None and revision.reason == "aborted by alice"
    assert fleet.events(row.id) == ["started", "weight", "paused", "abort-requested", "aborted"]
    assert {"quarantine", "rollout aborted"} <= {a.action for a in audit_records(fleet.store, AuditFilter(target="fn"))}
    assert rolloutdriver.unfinished(fleet.store) == []
    late = fleet.request(row.id, EventKind.ABORT_REQUESTED, {"by": "bob"})
    record, _ = fleet.advance(row.id)
    assert (record.state, record.handled, record.reason) == (State.ABORTED, late, "aborted by alice")
    assert fleet.events(row.id)[-2:] == ["abort-requested", "ignored"]
    assert fleet.route() == {STABLE: 100}


def test_a_timed_pause_waits_on_the_callers_clock(fleet: Deployer) -> None:
    row = fleet.begin({"strategy": "canary", "steps": [{"setWeight": 20}, {"pause": "1m"}]})
    t = row.started_at
    record, waiting = fleet.advance(row.id, t)
    assert (record.step, waiting) == (1, Wait(t + 60))
    assert fleet.route() == {STABLE: 80, NEW: 20}
    assert fleet.advance(row.id, t + 59)[1] == Wait(t + 60)
    assert fleet.events(row.id) == ["started", "weight", "pause"]
    record, waiting = fleet.advance(row.id, t + 60)
    assert (record.state, waiting) == (State.COMPLETED, Wait(t + 90))
    assert fleet.route() == {NEW: 100, STABLE: 0}
    assert fleet.events(row.id) == ["started", "weight", "pause", "completed"]


def test_resuming_after_a_crash_never_repeats_a_finished_step(fleet: Deployer) -> None:
    row = fleet.begin({"strategy": "canary", "steps": [{"setWeight": 20}, {"setWeight": 40}, {"pause": {}}]})
    # a driver commits the first transition, then dies before the next one
    plan = stages(rolloutdriver.spec_of(fleet.store, "fn", NEW))
    first = step(rolloutdriver.record_of(row), plan, 30.0, row.started_at)
    assert isinstance(first, Transition)
    rolloutdriver.carry_out(fleet.ctx, rolloutdriver.record_of(row), first)
    assert fleet.route() == {STABLE: 80, NEW: 20}
    # the next driver reads the row afresh and carries on from the second step
    record, waiting = fleet.advance(row.id)
    assert (record.state, record.step, waiting) == (State.PAUSED, 2, Wait(None))
    weights = [e.data["weights"] for e in rolloutstore.events(fleet.store, row.id) if e.kind == "weight"]
    assert weights == [{"2": 20, "1": 80}, {"2": 40, "1": 60}]
    # a handled request is never acted on twice
    fleet.request(row.id, EventKind.PROMOTE_REQUESTED, {})
    fleet.advance(row.id)
    fleet.advance(row.id)
    assert fleet.events(row.id).count("promoted") == 1
    assert fleet.events(row.id).count("completed") == 1


def test_a_blue_green_preview_waits_for_auto_promotion_then_switches_at_once(fleet: Deployer) -> None:
    row = fleet.begin({"strategy": "blueGreen", "autoPromotionSeconds": 60})
    t = row.started_at
    record, waiting = fleet.advance(row.id, t + 59)
    assert (record.state, waiting) == (State.PROGRESSING, Wait(t + 60))
    assert fleet.route() == {STABLE: 100, NEW: 0}
    record, waiting = fleet.advance(row.id, t + 60)
    assert (record.state, record.winner) == (State.COMPLETED, NEW)
    assert fleet.route() == {NEW: 100, STABLE: 0}
    assert fleet.events(row.id) == ["started", "pause", "completed"]


def test_a_manual_blue_green_waits_at_its_gate_for_promote(fleet: Deployer) -> None:
    row = fleet.begin({"strategy": "blueGreen", "autoPromotionEnabled": False})
    assert fleet.advance(row.id)[1] == Wait(None)
    assert fleet.route() == {STABLE: 100, NEW: 0}
    fleet.request(row.id, EventKind.PROMOTE_REQUESTED, {})
    record, _ = fleet.advance(row.id)
    assert record.state is State.COMPLETED
    assert fleet.route() == {NEW: 100, STABLE: 0}
    assert fleet.events(row.id) == ["started", "paused", "promote-requested", "completed"]


def test_an_ab_test_promotes_the_named_variant(fleet: Deployer) -> None:
    row = fleet.begin(
        {
            "strategy": "abTest",
            "variants": [
                {"name": "a", "weight": 60, "revision": "stable"},
                {"name": "b", "weight": 40, "revision": "new"},
            ],
        }
    )
    assert rolloutdriver.record_of(row).variants == {"a": STABLE, "b": NEW}
    fleet.advance(row.id)
    assert fleet.route() == {STABLE: 60, NEW: 40}
    fleet.request(row.id, EventKind.PROMOTE_REQUESTED, {"variant": "nope"})
    record, _ = fleet.advance(row.id)
    assert record.state is State.PAUSED
    fleet.request(row.id, EventKind.PROMOTE_REQUESTED, {"variant": "a"})
    record, waiting = fleet.advance(row.id, row.started_at + 10)
    assert (record.state, record.winner) == (State.COMPLETED, STABLE)
    assert fleet.route() == {STABLE: 100, NEW: 0}
    fleet.advance(row.id, row.started_at + 40)
    assert fleet.route() == {STABLE: 100}
    assert fleet.status(NEW) is RevisionStatus.READY  # it lost the test; it did not fail
    assert fleet.events(row.id) == [
        "started",
        "weight",
        "paused",
        "promote-requested",
        "ignored",
        "promote-requested",
        "completed",
        "scaled-down",
    ]


def observe(store: Store, revision: int, ok: int, failed: int) -> None:
    """Traffic as the gateway records it, flushed to the store's metric windows."""
    metrics = Metrics()
    for _ in range(ok):
        metrics.observe("fn", revision, 200, 0.01, False)
    for _ in range(failed):
        metrics.observe("fn", revision, 500, 0.01, False)
    metrics.flush_sync(store)


MEASURED = {
    "strategy": "canary",
    "steps": [
        {"setWeight": 50},
        {"analysis": {"maxErrorRate": 0.1, "minRequests": 10, "interval": "10s", "window": "1m"}},
    ],
}


def test_an_analysis_passes_on_good_traffic_from_the_store(fleet: Deployer) -> None:
    row = fleet.begin(MEASURED)
    t = row.started_at
    assert fleet.advance(row.id, t)[1] == Wait(t + 10)
    observe(fleet.store, NEW, ok=20, failed=0)
    observe(fleet.store, STABLE, ok=20, failed=1)
    record, _ = fleet.advance(row.id, t + 10)
    assert record.state is State.COMPLETED
    measured = [e for e in rolloutstore.events(fleet.store, row.id) if e.kind == "measurement"]
    assert [
        (e.data["outcome"], e.data["requests"], e.data["errors"], e.data["stable"]["requests"]) for e in measured
    ] == [("pass", 20, 0, 21)]


def test_an_analysis_fails_on_bad_traffic_and_rolls_back(fleet: Deployer) -> None:
    row = fleet.begin(MEASURED)
    t = row.started_at
    fleet.advance(row.id, t)
    observe(fleet.store, NEW, ok=10, failed=10)
    record, waiting = fleet.advance(row.id, t + 10)
    assert (record.state, waiting) == (State.ABORTED, None)
    assert record.reason == "analysis failed: error rate 50.0% > 10.0%"
    assert fleet.route() == {STABLE: 100}
    assert fleet.status(NEW) is RevisionStatus.QUARANTINED
    assert fleet.events(row.id) == ["started", "weight", "analysis", "measurement", "aborted"]


def test_an_analysis_without_traffic_waits_for_enough_requests(fleet: Deployer) -> None:
    row = fleet.begin(MEASURED)
    t = row.started_at
    fleet.advance(row.id, t)
    record, waiting = fleet.advance(row.id, t + 10)
    assert (record.state, record.next_measure, waiting) == (State.PROGRESSING, t + 20, Wait(t + 20))
    measured = [e for e in rolloutstore.events(fleet.store, row.id) if e.kind == "measurement"]
    assert [(e.data["outcome"], e.message) for e in measured] == [
        ("inconclusive", "step 2: analysis: inconclusive: 0 of 10 requests")
    ]


def test_synthetic_checks_without_a_running_instance_fail_the_analysis(fleet: Deployer) -> None:
    row = fleet.begin(
        {"strategy": "canary", "steps": [{"setWeight": 10}, {"analysis": {"checks": [{"event": {"name": "probe"}}]}}]}
    )
    t = row.started_at
    fleet.advance(row.id, t)
    record, _ = fleet.advance(row.id, t + 10)
    assert (record.state, record.reason) == (
        State.ABORTED,
        "analysis failed: no running instance of revision 2 to check",
    )
    assert fleet.status(NEW) is RevisionStatus.QUARANTINED


def test_a_new_rollout_supersedes_the_one_under_way_without_quarantine(fleet: Deployer) -> None:
    first = fleet.begin(GATE)
    fleet.advance(first.id)
    second = fleet.begin(GATE, canary=3)
    old = fleet.row(first.id)
    assert (old.state, rolloutdriver.record_of(old).reason) == ("aborted", "superseded by revision 3")
    assert fleet.status(NEW) is RevisionStatus.READY
    assert fleet.route() == {STABLE: 100, 3: 0}
    assert fleet.events(first.id)[-1] == "aborted"
    assert [r.id for r in rolloutdriver.unfinished(fleet.store)] == [second.id]


def test_retry_starts_an_aborted_rollout_again_from_its_first_step(fleet: Deployer) -> None:
    row = fleet.begin(GATE)
    fleet.advance(row.id)
    fleet.request(row.id, EventKind.ABORT_REQUESTED, {})
    fleet.advance(row.id)
    rolloutdriver.restart(fleet.ctx, fleet.row(row.id))
    assert fleet.status(NEW) is RevisionStatus.READY
    assert fleet.route() == {STABLE: 100, NEW: 0}
    retried = fleet.row(row.id)
    assert (retried.step, retried.state, rolloutdriver.record_of(retried).reason) == (0, "progressing", "")
    record, waiting = fleet.advance(row.id)
    assert (record.state, record.step, waiting) == (State.PAUSED, 1, Wait(None))
    assert fleet.route() == {STABLE: 50, NEW: 50}
    assert fleet.events(row.id) == [
        "started",
        "weight",
        "paused",
        "abort-requested",
        "aborted",
        "retried",
        "weight",
        "paused",
    ]


def test_retire_ends_unfinished_rollouts_without_touching_the_routes(fleet: Deployer) -> None:
    under_way = fleet.begin(GATE)
    fleet.advance(under_way.id)
    with fleet.store.transaction():
        rolloutdriver.retire(fleet.ctx, "fn", "rolled back to revision 1")
    ended = rolloutdriver.record_of(fleet.row(under_way.id))
    assert (ended.state, ended.scaled_down, ended.reason) == (State.ABORTED, True, "rolled back to revision 1")
    assert fleet.route() == {STABLE: 50, NEW: 50}  # the caller moves the traffic itself
    assert fleet.events(under_way.id)[-1] == "aborted"
    warm = fleet.begin(GATE, canary=3)
    fleet.advance(warm.id)
    fleet.request(warm.id, EventKind.PROMOTE_REQUESTED, {"full": True})
    fleet.advance(warm.id)
    with fleet.store.transaction():
        rolloutdriver.retire(fleet.ctx, "fn", "deleted")
    kept = rolloutdriver.record_of(fleet.row(warm.id))
    assert (kept.state, kept.scaled_down, kept.done) == (State.COMPLETED, True, True)
    assert fleet.events(warm.id)[-1] == "scaled-down"
    assert rolloutdriver.unfinished(fleet.store) == []


# ---- bugs found: each test below fails against the code as it is, and says why ----------------------


def test_a_retried_blue_green_counts_auto_promotion_from_the_retry(
    fleet: Deployer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BUG: `restart` sets `started_at` only on the in-memory record; the store's `started_at` column is not
    updated (update_rollout writes step, state and detail only). A blue-green rollout retried later than
    autoPromotionSeconds after it first began is then promoted to 100% at its first advance, with no preview."""
    row = fleet.begin({"strategy": "blueGreen", "autoPromotionSeconds": 60})
    fleet.request(row.id, EventKind.ABORT_REQUESTED, {})
    fleet.advance(row.id, row.started_at + 1)
    later = row.started_at + 3600  # `fnctl retry` an hour after the abort
    with monkeypatch.context() as clock:
        clock.setattr(time, "time", lambda: later)
        rolloutdriver.restart(fleet.ctx, fleet.row(row.id))
    record, waiting = fleet.advance(row.id, later + 1)
    assert fleet.route() == {STABLE: 100, NEW: 0}  # the preview, as after the first start
    assert (record.state, waiting) == (State.PROGRESSING, Wait(later + 60))


def test_a_request_left_over_from_before_a_retry_does_not_act_on_it(fleet: Deployer) -> None:
    """BUG: a request appended after the rollout ended (an `fnctl abort` racing the analysis that aborted
    it) is never handled: drivers skip finished rollouts. `restart` keeps `handled` where it was, so the
    first advance after `fnctl retry` acts on the stale request and aborts (and quarantines) the retry."""
    row = fleet.begin(GATE)
    fleet.advance(row.id)
    fleet.request(row.id, EventKind.ABORT_REQUESTED, {"by": "alice"})
    fleet.advance(row.id)  # aborted by alice
    fleet.request(row.id, EventKind.ABORT_REQUESTED, {"by": "bob"})  # bob's abort lands just after: never driven
    rolloutdriver.restart(fleet.ctx, fleet.row(row.id))
    record, _ = fleet.advance(row.id)
    assert (record.state, record.step) == (State.PAUSED, 1)
    assert fleet.route() == {STABLE: 50, NEW: 50}


@pytest.mark.docker  # recover looks the left instance's container up by its label in the engine
def test_the_serve_loop_removes_instances_an_interrupted_abort_left_behind(fleet: Deployer, tmp_path: Path) -> None:
    """A process killed between an abort's routing change and stopping the canary leaves its instance rows;
    the controller loop of `fnctl serve` cleans them up even though no rollout is unfinished."""
    from fnctl.manifest.project import project_at
    from fnctl.state.revisions import InstanceRow, InstanceState

    fleet.add(NEW, {"strategy": "immediate"})
    fleet.store.add_instance(
        InstanceRow("i-pinned", "fn", NEW, None, str(tmp_path / "gone"), InstanceState.READY, time.time())
    )  # started by the gateway for a pinned request: kept
    project = project_at(tmp_path, "proj")
    assert rolloutdriver.tick(project, fleet.store.location, fleet.progress.append) == 0
    assert [r.id for r in fleet.store.instances()] == ["i-pinned"]
    fleet.store.remove_instance("i-pinned")
    fleet.store.set_revision_status("fn", NEW, RevisionStatus.QUARANTINED, "the analysis failed")
    fleet.store.add_instance(
        InstanceRow("i-left", "fn", NEW, None, str(tmp_path / "gone"), InstanceState.READY, time.time())
    )
    assert rolloutdriver.unfinished(fleet.store) == []
    assert rolloutdriver.tick(project, fleet.store.location, fleet.progress.append) == 0
    assert fleet.store.instances() == []
    assert [a.action for a in audit_records(fleet.store, AuditFilter())][:1] == ["recover"]


def test_steps_driven_without_a_commit_are_audited_with_the_canary_revisions_commit(fleet: Deployer) -> None:
    """`fnctl serve` drives rollouts with no work tree of its own: its audit entries name the commit that
    made the canary revision, as every audit record must."""
    spec = spec_with({"strategy": "canary", "steps": [{"setWeight": 50}]})
    fleet.store.add_revision(
        Revision(
            "fn",
            NEW,
            "hash-2",
            spec,
            "fnctl-fn:2",
            "c" * 40,
            "Ada <ada@example.org>",
            T0,
            "tester",
            RevisionStatus.READY,
            None,
            "Greet louder",
        )
    )
    row = rolloutdriver.begin(fleet.ctx, function_from_spec("fn", spec, Limits()), STABLE, NEW)
    fleet.advance(row.id)
    driven = [
        a for a in audit_records(fleet.store, AuditFilter(target="fn")) if a.action in ("route", "rollout completed")
    ]
    assert len(driven) == 3 and {(a.git_commit, a.git_author, a.git_subject) for a in driven} == {
        ("c" * 40, "Ada <ada@example.org>", "Greet louder")
    }
