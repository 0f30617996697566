"""Rollout timelines on plain values: the phases, the total if all goes well, the gates, the longest exposure,
their words for `fnctl plan` and their JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fnctl.manifest.model import Analysis, Inconclusive, Rollout, RolloutStep, RolloutStepKind, Strategy, Variant
from fnctl.rollout.timeline import (
    Exposure,
    Gate,
    PhaseKind,
    analysis_seconds,
    timeline,
    timeline_from_json,
    timeline_lines,
    timeline_summary,
    timeline_to_json,
)


def weight(n: int) -> RolloutStep:
    return RolloutStep(RolloutStepKind.SET_WEIGHT, weight=n)


def pause(seconds: float | None = None) -> RolloutStep:
    return RolloutStep(RolloutStepKind.PAUSE, pause=seconds)


def analysis(**fields: Any) -> RolloutStep:
    return RolloutStep(RolloutStepKind.ANALYSIS, analysis=Analysis(max_error_rate=0.01, **fields))


# the canary of manifests/rollouts/progressive.yaml
EXAMPLE = Rollout(
    Strategy.CANARY,
    steps=(weight(10), pause(30), analysis(min_requests=50, failure_limit=2), weight(50), pause(), weight(100)),
    expected_traffic=20,
)


def test_the_example_canary() -> None:
    t = timeline(EXAMPLE)
    assert [(p.kind, p.start, p.duration, p.weight, p.gate, p.step) for p in t.phases] == [
        (PhaseKind.SET_WEIGHT, 0, 0, 10, False, 1),
        (PhaseKind.PAUSE, 0, 30, 10, False, 2),
        (PhaseKind.ANALYSIS, 30, 30, 10, False, 3),  # 50 requests at 2/s: 25s, rounded up to 3 intervals
        (PhaseKind.SET_WEIGHT, 60, 0, 50, False, 4),
        (PhaseKind.PAUSE, 60, None, 50, True, 5),
        (PhaseKind.SET_WEIGHT, 60, 0, 100, False, 6),
        (PhaseKind.SCALE_DOWN, 60, 30, 100, False, None),
    ]
    assert t.total == 90
    assert t.gates == (Gate(60, "pause: promote", 5),)
    assert t.exposure == Exposure(10, 30, 1, 2)
    assert timeline_lines(t) == [
        "0s 10% (setWeight) · 0s-30s pause · 30s-1m analysis · 1m 50% (setWeight) · 1m 50% pause: promote (gate) · "
        "1m 100% (setWeight) · 1m-1m30s old revision warm (scaleDownDelay)",
        "total 1m30s if all goes well; gates: step 5 (pause: promote); longest exposure: 10% for 30s (steps 1-2)",
    ]
    assert timeline_summary(t) == "canary: 10% → 50% → 100% over 1m30s and 1 manual gate"


def test_after_the_last_step_the_new_revision_takes_all_traffic() -> None:
    t = timeline(Rollout(Strategy.CANARY, steps=(weight(20), pause(60)), scale_down_delay=10))
    assert [(p.kind, p.start, p.weight) for p in t.phases[-2:]] == [
        (PhaseKind.PROMOTE, 60, 100),
        (PhaseKind.SCALE_DOWN, 60, 100),
    ]
    assert t.total == 70 and t.gates == ()
    assert timeline_summary(t) == "canary: 20% → 100% over 1m10s"


@pytest.mark.parametrize(
    ("fields", "weight_", "traffic", "seconds"),
    [
        ({}, 10, 20.0, 10),  # no minRequests: the first measurement passes
        ({"min_requests": 50}, 10, None, 10),  # traffic unknown: one interval
        ({"min_requests": 50}, 10, 20.0, 30),  # 25s of traffic, in whole intervals
        ({"min_requests": 40}, 10, 20.0, 20),  # exactly two intervals
        ({"min_requests": 50, "interval": 60.0}, 10, 20.0, 60),
        ({"min_requests": 50, "inconclusive": Inconclusive.PASS}, 10, 20.0, 10),  # passes at the first measurement
        ({"min_requests": 50}, 0, 20.0, 10),  # no traffic to count: validation refuses it without checks
        ({"min_requests": 500, "window": 60.0}, 10, 2.0, 10),  # can never collect: validation refuses it
    ],
)
def test_an_analysis_lasts_until_its_first_passing_measurement(
    fields: dict[str, Any], weight_: int, traffic: float | None, seconds: float
) -> None:
    assert analysis_seconds(Analysis(**fields), weight_, traffic) == seconds


def test_the_longest_exposure_is_the_longest_unchecked_stretch_with_the_weight_reached() -> None:
    steps = (
        weight(5),
        pause(60),
        analysis(),
        weight(20),
        pause(60),
        weight(40),
        pause(90),
        analysis(),
        weight(60),
        pause(30),
    )
    t = timeline(Rollout(Strategy.CANARY, steps=steps))
    assert t.exposure == Exposure(40, 150, 4, 7)
    assert timeline_lines(t)[1].endswith("longest exposure: 40% for 2m30s (steps 4-7)")


def test_a_gate_checks_the_new_revision_and_the_release_is_no_exposure() -> None:
    t = timeline(Rollout(Strategy.CANARY, steps=(weight(10), pause(), weight(100))))
    assert t.exposure is None
    assert timeline_lines(t)[1] == (
        "total 30s if all goes well; gates: step 2 (pause: promote); longest exposure: "
        "none (no traffic reaches the new revision unchecked)"
    )
    single = timeline(Rollout(Strategy.CANARY, steps=(weight(10), pause(45), pause())))
    assert single.exposure == Exposure(10, 45, 1, 2)
    assert timeline_lines(single)[1].endswith("longest exposure: 10% for 45s (steps 1-2)")


def test_blue_green_promotes_at_auto_promotion_seconds_and_not_before_the_analysis_passed() -> None:
    check = Analysis(interval=15.0)
    late = timeline(Rollout(Strategy.BLUE_GREEN, auto_promotion_seconds=60, pre_promotion_analysis=check))
    assert [(p.kind, p.start, p.duration, p.weight) for p in late.phases] == [
        (PhaseKind.PREVIEW, 0, 0, 0),
        (PhaseKind.ANALYSIS, 0, 15, 0),
        (PhaseKind.PAUSE, 15, 45, 0),
        (PhaseKind.PROMOTE, 60, 0, 100),
        (PhaseKind.SCALE_DOWN, 60, 30, 100),
    ]
    assert late.total == 90 and late.gates == () and late.exposure is None
    early = timeline(Rollout(Strategy.BLUE_GREEN, auto_promotion_seconds=5, pre_promotion_analysis=check))
    assert [(p.kind, p.start) for p in early.phases][-2:] == [(PhaseKind.PROMOTE, 15), (PhaseKind.SCALE_DOWN, 15)]
    assert timeline_summary(early) == "blueGreen: 0% → 100% over 45s"


def test_a_manual_blue_green_waits_at_a_gate() -> None:
    t = timeline(Rollout(Strategy.BLUE_GREEN, auto_promotion_enabled=False, scale_down_delay=300))
    assert t.gates == (Gate(0, "preview: promote"),)
    assert timeline_lines(t) == [
        "0s 0% (preview) · 0s 0% preview: promote (gate) · 0s 100% (promote) · 0s-5m old revision warm (scaleDownDelay)",
        "total 5m if all goes well; gates: preview: promote; longest exposure: none (no traffic reaches the new "
        "revision unchecked)",
    ]


def test_an_ab_test_runs_until_a_variant_is_promoted() -> None:
    variants = (Variant("control", 70, "stable"), Variant("candidate", 30, "new"))
    t = timeline(Rollout(Strategy.AB_TEST, variants=variants))
    (phase,) = t.phases
    assert (phase.kind, phase.weight, phase.duration, phase.gate) == (PhaseKind.VARIANTS, 30, None, True)
    assert t.total == 0 and t.gates == (Gate(0, "promote --variant"),)
    assert timeline_summary(t) == ("abTest: control 70% (stable), candidate 30% (new) until `fnctl promote --variant`")


def test_an_immediate_rollout_switches_at_once() -> None:
    t = timeline(Rollout())
    assert [(p.kind, p.weight) for p in t.phases] == [(PhaseKind.PROMOTE, 100), (PhaseKind.SCALE_DOWN, 100)]


@pytest.mark.parametrize(
    "rollout",
    [
        EXAMPLE,
        Rollout(Strategy.BLUE_GREEN, auto_promotion_enabled=False, pre_promotion_analysis=Analysis()),
        Rollout(Strategy.AB_TEST, variants=(Variant("a", 50, "stable"), Variant("b", 50, "new"))),
    ],
)
def test_json_is_camel_case_and_round_trips(rollout: Rollout) -> None:
    t = timeline(rollout)
    data = json.loads(json.dumps(timeline_to_json(t)))
    assert set(data) == {"strategy", "phases", "total", "gates", "longestExposure"}
    assert timeline_from_json(data) == t


def test_the_exposure_in_json() -> None:
    data = timeline_to_json(timeline(EXAMPLE))
    assert data["longestExposure"] == {"weight": 10, "duration": 30, "firstStep": 1, "lastStep": 2}
    assert data["gates"] == [{"at": 60, "what": "pause: promote", "step": 5}]
    assert data["phases"][4] == {
        "kind": "pause",
        "start": 60,
        "duration": None,
        "weight": 50,
        "what": "pause: promote",
        "gate": True,
        "step": 5,
    }


def test_the_manifest_reference_shows_the_example_as_plan_prints_it() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "manifest.md").read_text()
    assert (
        "\n".join(["stats-canary: canary timeline", *(f"    {line}" for line in timeline_lines(timeline(EXAMPLE)))])
        in text
    )
