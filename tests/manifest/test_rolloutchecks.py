"""Validation refuses rollouts that could never work, through the public validate path: each case is a manifest
whose `rollout:` starts on line 9, and each problem is reported with its file, line, column, JSON path and
message. The valid cases show what the rules deliberately let through.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_validate import FUNCTION, lines, make_project, run

F = "manifests/hello.yaml"


def problems(rollout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The rendered diagnostics of function `hello` with `rollout` (YAML indented by 4) under its spec."""
    manifest = FUNCTION.format(name="hello") + "  rollout:\n" + rollout
    return lines(run(make_project(tmp_path, {"hello.yaml": manifest}), monkeypatch))


VALID = {
    "the canary of the repository example": """\
    strategy: canary
    expectedTraffic: 20
    steps:
      - setWeight: 10
      - pause: 30s
      - analysis: {maxErrorRate: 0.01, minRequests: 50, failureLimit: 2}
      - setWeight: 50
      - pause: {}
      - setWeight: 100
""",
    # the last setWeight may be below 100: after the last step the new revision takes 100% anyway
    "a canary ending below 100%": "    strategy: canary\n    steps: [{setWeight: 25}, {pause: 1m}]\n",
    # without a window each measurement counts everything since the step began: a slow analysis still ends
    "a slow analysis without a window that waits": """\
    strategy: canary
    expectedTraffic: 2
    steps: [{setWeight: 10}, {analysis: {maxErrorRate: 0.01, minRequests: 500}}]
""",
    "inconclusive fail that can collect by the last allowed measurement": """\
    strategy: canary
    expectedTraffic: 10
    steps: [{setWeight: 10}, {analysis: {maxErrorRate: 0.01, minRequests: 50, inconclusive: fail, failureLimit: 5}}]
""",
    "inconclusive pass with enough traffic at the first measurement": """\
    strategy: canary
    expectedTraffic: 10
    steps: [{setWeight: 10}, {analysis: {maxErrorRate: 0.01, minRequests: 10, inconclusive: pass}}]
""",
    # a window reaches back before the step: here over the pause, at the same weight
    "inconclusive pass with a window that looks back over a pause": """\
    strategy: canary
    expectedTraffic: 10
    steps: [{setWeight: 10}, {pause: 1m}, {analysis: {maxErrorRate: 0.01, minRequests: 50, window: 1m, inconclusive: pass}}]
""",
    "an analysis at 100% (a failure still moves all traffic back)": """\
    strategy: canary
    steps: [{setWeight: 100}, {analysis: {maxErrorRate: 0.01, minRequests: 10}}]
""",
    "a pause at 100% that a windowed analysis looks back over": """\
    strategy: canary
    steps: [{setWeight: 50}, {setWeight: 100}, {pause: 1m}, {analysis: {maxErrorRate: 0.01, window: 1m}}]
""",
    "synthetic checks before any traffic": """\
    strategy: canary
    steps: [{analysis: {minRequests: 3, checks: [{event: {}}]}}, {setWeight: 100}]
""",
    "a bare blue-green (switch at once, old revision warm)": "    strategy: blueGreen\n",
    "a blue-green with a manual promotion": "    strategy: blueGreen\n    autoPromotionEnabled: false\n",
    "an A/B test against a numbered revision": """\
    strategy: abTest
    variants: [{name: a, weight: 30, revision: 3}, {name: b, weight: 70, revision: new}]
""",
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_possible_rollouts_validate(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems(VALID[name], tmp_path, monkeypatch) == []


INVALID: dict[str, tuple[str, list[str]]] = {
    # fields that the strategy would ignore
    "prePromotionAnalysis on a canary": (
        """\
    strategy: canary
    steps: [{setWeight: 50}]
    prePromotionAnalysis: {checks: [{event: {}}]}
""",
        [
            f"{F}:12:27: $.spec.rollout.prePromotionAnalysis: prePromotionAnalysis applies only to the blueGreen strategy, "
            "not canary"
        ],
    ),
    "variants on a blue-green": (
        """\
    strategy: blueGreen
    variants: [{name: a, weight: 100, revision: new}]
""",
        [f"{F}:11:15: $.spec.rollout.variants: variants apply only to the abTest strategy, not blueGreen"],
    ),
    "minSamples and steps on immediate": (
        """\
    strategy: immediate
    steps: [{setWeight: 50}]
    minSamples: 10
""",
        [
            f"{F}:11:12: $.spec.rollout.steps: steps apply only to the canary strategy, not immediate",
            f"{F}:12:17: $.spec.rollout.minSamples: minSamples applies only to the abTest strategy, not immediate",
        ],
    ),
    # weights
    "setWeight 0 first": (
        """\
    strategy: canary
    steps: [{setWeight: 0}, {setWeight: 50}]
""",
        [
            f"{F}:11:25: $.spec.rollout.steps[0].setWeight: setWeight: 0 changes nothing: a canary starts with no traffic "
            "on the new revision"
        ],
    ),
    "the same weight twice": (
        """\
    strategy: canary
    steps: [{setWeight: 50}, {setWeight: 50}]
""",
        [
            f"{F}:11:42: $.spec.rollout.steps[1].setWeight: weights must increase: 50 after 50 (steps only move traffic "
            "towards the new revision)"
        ],
    ),
    "a pause after setWeight 100": (
        """\
    strategy: canary
    steps: [{setWeight: 50}, {setWeight: 100}, {pause: 5m}]
""",
        [
            f"{F}:11:56: $.spec.rollout.steps[2].pause: this pause comes after setWeight: 100: all traffic is already on "
            "the new revision, so it only delays the end of the rollout (scaleDownDelay keeps the old revision warm); "
            "remove it, or follow it with an analysis whose window covers it"
        ],
    ),
    "a canary that moves all traffic at once": (
        """\
    strategy: canary
    steps: [{pause: {}}, {setWeight: 100}]
""",
        [
            f"{F}:11:12: $.spec.rollout.steps: this canary never sends part of the traffic to the new revision (no "
            "setWeight between 1 and 99) and never analyses it, so all traffic moves at once: use strategy: immediate, or "
            "blueGreen to check a preview first"
        ],
    ),
    # analyses that could never collect minRequests
    "a fixed window too short for the expected traffic": (
        """\
    strategy: canary
    expectedTraffic: 2
    steps: [{setWeight: 10}, {analysis: {maxErrorRate: 0.01, minRequests: 500, window: 1m}}]
""",
        [
            f"{F}:12:75: $.spec.rollout.steps[1].analysis.minRequests: at 2 requests/s and 10% weight, a 1m window "
            "collects about 12 requests, fewer than minRequests (500)"
        ],
    ),
    "inconclusive fail that always aborts": (
        """\
    strategy: canary
    expectedTraffic: 10
    steps: [{setWeight: 10}, {analysis: {maxErrorRate: 0.01, minRequests: 50, inconclusive: fail, failureLimit: 3}}]
""",
        [
            f"{F}:12:75: $.spec.rollout.steps[1].analysis.minRequests: at 10 requests/s and 10% weight, the analysis sees "
            "about 30 requests by its measurement number 3 (failureLimit, one every 10s), fewer than minRequests (50): "
            "with inconclusive: fail every rollout would abort"
        ],
    ),
    "a fixed window reported before inconclusive fail": (
        """\
    strategy: canary
    expectedTraffic: 10
    steps: [{setWeight: 10}, {analysis: {maxErrorRate: 0.01, minRequests: 50, window: 20s, inconclusive: fail}}]
""",
        [
            f"{F}:12:75: $.spec.rollout.steps[1].analysis.minRequests: at 10 requests/s and 10% weight, a 20s window "
            "collects about 20 requests, fewer than minRequests (50)"
        ],
    ),
    "inconclusive pass that never judges": (
        """\
    strategy: canary
    expectedTraffic: 10
    steps: [{setWeight: 10}, {analysis: {maxErrorRate: 0.01, minRequests: 20, inconclusive: pass}}]
""",
        [
            f"{F}:12:75: $.spec.rollout.steps[1].analysis.minRequests: at 10 requests/s and 10% weight, the first "
            "measurement (after 10s) sees about 10 requests, fewer than minRequests (20): with inconclusive: pass the "
            "analysis would pass without judging the new revision"
        ],
    ),
    "minRequests before any traffic": (
        """\
    strategy: canary
    steps: [{analysis: {maxErrorRate: 0.01, minRequests: 1}}, {setWeight: 100}]
""",
        [
            f"{F}:11:58: $.spec.rollout.steps[0].analysis.minRequests: this analysis runs before any traffic reaches the "
            "new revision (no setWeight > 0 before it)"
        ],
    ),
    # blue-green
    "contradictory promotion settings": (
        """\
    strategy: blueGreen
    autoPromotionEnabled: false
    autoPromotionSeconds: 60
""",
        [
            f"{F}:12:27: $.spec.rollout.autoPromotionSeconds: autoPromotionSeconds contradicts autoPromotionEnabled: false "
            "(promotion then waits for `fnctl promote`); remove one of them"
        ],
    ),
    "a preview analysis waiting for user traffic": (
        """\
    strategy: blueGreen
    prePromotionAnalysis: {maxErrorRate: 0.01, minRequests: 5}
""",
        [
            f"{F}:11:61: $.spec.rollout.prePromotionAnalysis.minRequests: a blue-green preview receives no user traffic, "
            "so minRequests can never be reached; add checks"
        ],
    ),
    # A/B tests
    "one variant": (
        """\
    strategy: abTest
    variants: [{name: a, weight: 100, revision: new}]
""",
        [f"{F}:11:15: $.spec.rollout.variants: an A/B test needs at least two variants"],
    ),
    "variants that compare nothing": (
        """\
    strategy: abTest
    variants:
      - {name: a, weight: 40, revision: stable}
      - {name: b, weight: 40, revision: stable}
      - {name: a, weight: 0, revision: 2}
""",
        [
            f"{F}:12:7: $.spec.rollout.variants: one variant must be the revision being deployed (revision: new)",
            f"{F}:12:7: $.spec.rollout.variants: variant weights must sum to 100, not 80",
            f"{F}:13:41: $.spec.rollout.variants[1].revision: variants 'a' and 'b' both run revision stable: an A/B test "
            "compares different revisions",
            f"{F}:14:16: $.spec.rollout.variants[2].name: variant name 'a' is already used by variant 1",
            f"{F}:14:27: $.spec.rollout.variants[2].weight: variant 'a' has weight 0: it would get no traffic, so the test "
            "could not measure it",
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_impossible_rollouts_are_refused(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rollout, expected = INVALID[name]
    assert problems(rollout, tmp_path, monkeypatch) == expected
