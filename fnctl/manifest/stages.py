"""A rollout strategy as the stages a rollout walks through, in order: the one reading of a strategy's steps
(canary `steps`, blue-green's preview and auto-promotion, an A/B test's variants). The controller
(`fnctl.rollout.machine`) walks them, the timeline (`fnctl.rollout.timeline`) projects them, and the semantic
checks (`rolloutchecks`) judge them; after the last stage the new revision (or the promoted variant) takes 100%.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fnctl.manifest.model import Analysis, Rollout, RolloutStepKind, Strategy
from fnctl.manifest.units import format_duration


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

    @property
    def new_weight(self) -> int | None:
        """The new revision's weight this stage sets (a canary's setWeight), or None."""
        return dict(self.weights).get("new") if self.kind is StageKind.WEIGHTS else None


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
