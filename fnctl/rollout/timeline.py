"""A rollout's timeline if all goes well: the new revision's weight over time, the total duration, the manual
gates and the longest exposure of users to an unchecked new revision. Pure; shown by `fnctl plan`.

It is derived from the controller's own stages (`fnctl.manifest.stages`), so it cannot read a strategy
differently: times are offsets from the rollout's start, manual gates count as 0 s, and an analysis lasts until its
first passing measurement (estimated from `expectedTraffic`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fnctl.manifest.model import Analysis, Inconclusive, Rollout, Strategy
from fnctl.manifest.stages import Stage, StageKind, stages
from fnctl.manifest.units import format_duration


class PhaseKind(StrEnum):
    SET_WEIGHT = "setWeight"
    PAUSE = "pause"
    ANALYSIS = "analysis"
    PREVIEW = "preview"
    VARIANTS = "variants"
    PROMOTE = "promote"  # the new revision takes 100% in one change
    SCALE_DOWN = "scaleDown"  # the old revision stays warm at 0%, then it is stopped


@dataclass(frozen=True)
class Phase:
    kind: PhaseKind
    start: float  # seconds after the rollout began (manual gates counted as 0 s)
    duration: float | None  # None: a manual gate, until `fnctl promote`
    weight: int  # percent of the traffic on the new revision during the phase
    what: str
    gate: bool = False
    step: int | None = None  # the manifest's step, from 1 (canary only)

    @property
    def end(self) -> float:
        return self.start + (self.duration or 0.0)


@dataclass(frozen=True)
class Gate:
    at: float
    what: str
    step: int | None = None


@dataclass(frozen=True)
class Exposure:
    """The longest stretch of traffic to the new revision that no analysis or manual gate checks."""

    weight: int  # the highest weight reached during the stretch
    duration: float
    first_step: int | None
    last_step: int | None


@dataclass(frozen=True)
class Timeline:
    strategy: Strategy
    phases: tuple[Phase, ...]
    total: float  # if all goes well: manual gates count as 0 s (see `gates`)
    gates: tuple[Gate, ...]
    exposure: Exposure | None


def timeline(rollout: Rollout) -> Timeline:
    if rollout.strategy is Strategy.IMMEDIATE:
        phases = [Phase(PhaseKind.PROMOTE, 0.0, 0.0, 100, "switch")]
    else:
        phases = _phases(rollout, stages(rollout))
    if rollout.strategy is not Strategy.AB_TEST:  # an A/B test ends with a gate: its winner is not known yet
        end = phases[-1].end
        phases.append(
            Phase(PhaseKind.SCALE_DOWN, end, rollout.scale_down_delay, 100, "old revision warm (scaleDownDelay)")
        )
    gates = tuple(
        Gate(p.start, "promote --variant" if p.kind is PhaseKind.VARIANTS else p.what, p.step) for p in phases if p.gate
    )
    return Timeline(rollout.strategy, tuple(phases), phases[-1].end, gates, _longest_exposure(phases))


def _phases(rollout: Rollout, plan: tuple[Stage, ...]) -> list[Phase]:
    """The controller's stages laid out in time: each one starts where the previous one ended."""
    strategy = rollout.strategy
    canary = strategy is Strategy.CANARY  # only a canary's stages are the manifest's steps, one for one
    words = _WORDS[strategy]
    phases = [Phase(PhaseKind.PREVIEW, 0.0, 0.0, 0, "preview")] if strategy is Strategy.BLUE_GREEN else []
    at, weight = 0.0, 0
    for index, stage in enumerate(plan):
        number = index + 1 if canary else None
        if stage.kind is StageKind.WEIGHTS:
            weight = sum(percent for ref, percent in stage.weights if ref == "new")
            if canary:  # an A/B test's variants show in its gate, which names them
                phases.append(Phase(PhaseKind.SET_WEIGHT, at, 0.0, weight, "setWeight", step=number))
            continue
        if stage.kind is StageKind.ANALYSIS:
            assert stage.analysis is not None
            phase = Phase(
                PhaseKind.ANALYSIS,
                at,
                analysis_seconds(stage.analysis, weight, rollout.expected_traffic),
                weight,
                words.analysis,
                step=number,
            )
        elif stage.seconds is None:
            gate_kind = PhaseKind.VARIANTS if strategy is Strategy.AB_TEST else PhaseKind.PAUSE
            phase = Phase(gate_kind, at, None, weight, words.gate or _variants_what(rollout), gate=True, step=number)
        elif not stage.from_start:
            phase = Phase(PhaseKind.PAUSE, at, stage.seconds, weight, "pause", step=number)
        elif stage.seconds > at:  # counted from the rollout's start, and never ends before the stages before it
            phase = Phase(PhaseKind.PAUSE, at, stage.seconds - at, weight, words.pause, step=number)
        else:
            continue
        phases.append(phase)
        at = phase.end
    if strategy is not Strategy.AB_TEST and weight < 100:
        # after the last stage the new revision takes 100%, whatever the last setWeight said
        phases.append(Phase(PhaseKind.PROMOTE, at, 0.0, 100, "promote"))
    return phases


@dataclass(frozen=True)
class _Words:
    """How a strategy's manifest names its stages, for the phases' `what`."""

    analysis: str = "analysis"
    gate: str = ""  # "": the A/B test's gate, which names its variants
    pause: str = "pause"  # a pause counted from the rollout's start


_WORDS = {
    Strategy.CANARY: _Words(gate="pause: promote"),
    Strategy.BLUE_GREEN: _Words("prePromotionAnalysis", "preview: promote", "autoPromotionSeconds"),
    Strategy.AB_TEST: _Words(),
}


def _variants_what(rollout: Rollout) -> str:
    return "A/B test: " + ", ".join(f"{v.name} {v.weight}% ({v.revision})" for v in rollout.variants)


def analysis_seconds(analysis: Analysis, weight: int, traffic: float | None) -> float:
    """How long an analysis lasts if all goes well: its first passing measurement, one `interval` after the
    step began, or the whole intervals it takes `traffic` x `weight` to bring `minRequests`."""
    interval = analysis.interval
    if analysis.min_requests <= 0 or traffic is None or weight <= 0 or analysis.inconclusive is Inconclusive.PASS:
        return interval
    needed = analysis.min_requests / (traffic * weight / 100)
    if analysis.window is not None and needed > analysis.window:
        return interval  # can never collect them: validation refuses such an analysis
    return max(1, math.ceil(round(needed / interval, 9))) * interval


def _longest_exposure(phases: Iterable[Phase]) -> Exposure | None:
    best: Exposure | None = None
    stretch: list[Phase] = []
    for phase in [*phases, None]:
        if phase is not None and phase.kind not in _CHECKED and not phase.gate and phase.weight > 0:
            stretch.append(phase)
            continue
        timed = [p for p in stretch if p.duration]
        if timed:
            found = Exposure(
                max(p.weight for p in timed), sum(p.duration or 0.0 for p in timed), stretch[0].step, timed[-1].step
            )
            if best is None or (found.duration, found.weight) > (best.duration, best.weight):
                best = found
        stretch = []
        if phase is not None and phase.kind in (PhaseKind.PROMOTE, PhaseKind.SCALE_DOWN):
            break  # from here on the new revision is the release itself, not an exposure
    return best


# An analysis checks the traffic while it lasts; a promotion ends the rollout: neither is an unchecked stretch.
_CHECKED = (PhaseKind.ANALYSIS, PhaseKind.PROMOTE, PhaseKind.SCALE_DOWN)


# ---- words and JSON ------------------------------------------------------------------------------


def _seconds(value: float) -> str:
    return "0s" if value == 0 else format_duration(value)


def _phase_text(phase: Phase) -> str:
    if phase.gate:
        return f"{_seconds(phase.start)} {phase.weight}% {phase.what} (gate)"
    if not phase.duration:
        return f"{_seconds(phase.start)} {phase.weight}% ({phase.what})"
    return f"{_seconds(phase.start)}-{_seconds(phase.end)} {phase.what}"


def _gate_text(gate: Gate) -> str:
    return f"step {gate.step} ({gate.what})" if gate.step is not None else gate.what


def _exposure_text(exposure: Exposure | None) -> str:
    if exposure is None:
        return "none (no traffic reaches the new revision unchecked)"
    steps = ""
    if exposure.first_step is not None:
        same = exposure.first_step == exposure.last_step
        steps = f" (step {exposure.first_step})" if same else f" (steps {exposure.first_step}-{exposure.last_step})"
    return f"{exposure.weight}% for {_seconds(exposure.duration)}{steps}"


def timeline_lines(t: Timeline) -> list[str]:
    """Plain text for `fnctl plan`: the phases, then the total, the gates and the longest exposure."""
    summary = f"total {_seconds(t.total)} if all goes well"
    if t.gates:
        summary += "; gates: " + ", ".join(_gate_text(g) for g in t.gates)
    summary += f"; longest exposure: {_exposure_text(t.exposure)}"
    return [" · ".join(_phase_text(p) for p in t.phases), summary]


def timeline_summary(t: Timeline) -> str:
    """One line for the plan's traffic switch, e.g. `canary: 10% → 50% → 100% over 1m30s`."""
    if t.strategy is Strategy.AB_TEST:
        return f"abTest: {t.phases[0].what.removeprefix('A/B test: ')} until `fnctl promote --variant`"
    weights: list[int] = []
    for phase in t.phases:
        if phase.kind in (PhaseKind.SET_WEIGHT, PhaseKind.PREVIEW, PhaseKind.PROMOTE) and (
            not weights or weights[-1] != phase.weight
        ):
            weights.append(phase.weight)
    gates = f" and {len(t.gates)} manual gate{'s' if len(t.gates) > 1 else ''}" if t.gates else ""
    return f"{t.strategy.value}: {' → '.join(f'{w}%' for w in weights)} over {_seconds(t.total)}{gates}"


def timeline_to_json(t: Timeline) -> dict[str, Any]:
    exposure = t.exposure
    return {
        "strategy": t.strategy.value,
        "phases": [
            {
                "kind": p.kind.value,
                "start": p.start,
                "duration": p.duration,
                "weight": p.weight,
                "what": p.what,
                "gate": p.gate,
                "step": p.step,
            }
            for p in t.phases
        ],
        "total": t.total,
        "gates": [{"at": g.at, "what": g.what, "step": g.step} for g in t.gates],
        "longestExposure": None
        if exposure is None
        else {
            "weight": exposure.weight,
            "duration": exposure.duration,
            "firstStep": exposure.first_step,
            "lastStep": exposure.last_step,
        },
    }


def timeline_from_json(data: dict[str, Any]) -> Timeline:
    """The inverse of `timeline_to_json`: `fnctl plan` renders from the plan document."""
    exposure = data.get("longestExposure")
    return Timeline(
        Strategy(data["strategy"]),
        tuple(
            Phase(PhaseKind(p["kind"]), p["start"], p["duration"], p["weight"], p["what"], p["gate"], p["step"])
            for p in data["phases"]
        ),
        data["total"],
        tuple(Gate(g["at"], g["what"], g["step"]) for g in data["gates"]),
        None
        if exposure is None
        else Exposure(exposure["weight"], exposure["duration"], exposure["firstStep"], exposure["lastStep"]),
    )
