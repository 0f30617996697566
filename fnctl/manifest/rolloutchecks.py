"""Semantic checks of a function's rollout: strategies that could never finish, analyses that could never judge,
blue-green promotions that contradict themselves, A/B tests that compare nothing.

Each finding names the exact JSON path to change. A strategy's steps are read once, as the stages the controller
walks (`fnctl.manifest.stages`), and judged here as docs/manifest.md describes them; `checks` calls `check_rollout`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fnctl.manifest.model import Analysis, Finding, Function, Inconclusive, Strategy
from fnctl.manifest.stages import Stage, StageKind, stages
from fnctl.manifest.units import format_duration

JsonPath = tuple[str | int, ...]
_AT: JsonPath = ("spec", "rollout")

# Fields that only some strategies read: anywhere else they would be silently ignored.
_ONLY_FOR = {
    "steps": Strategy.CANARY,
    "prePromotionAnalysis": Strategy.BLUE_GREEN,
    "autoPromotionSeconds": Strategy.BLUE_GREEN,
    "autoPromotionEnabled": Strategy.BLUE_GREEN,
    "variants": Strategy.AB_TEST,
    "confidence": Strategy.AB_TEST,
    "minSamples": Strategy.AB_TEST,
}


def check_rollout(function: Function) -> Iterator[Finding]:
    yield from _misplaced_fields(function)
    strategy = function.rollout.strategy
    if strategy is Strategy.CANARY:
        yield from _canary(function)
    elif strategy is Strategy.BLUE_GREEN:
        yield from _blue_green(function)
    elif strategy is Strategy.AB_TEST:
        yield from _variants(function)


def _misplaced_fields(function: Function) -> Iterator[Finding]:
    raw: dict[str, Any] = function.spec.get("rollout", {})
    strategy = function.rollout.strategy
    for key, owner in _ONLY_FOR.items():
        if key in raw and strategy is not owner:
            verb = "apply" if key in ("steps", "variants") else "applies"
            yield function, _AT + (key,), f"{key} {verb} only to the {owner.value} strategy, not {strategy.value}"


# ---- canary --------------------------------------------------------------------------------------


def _canary(function: Function) -> Iterator[Finding]:
    plan, at = stages(function.rollout), _AT + ("steps",)  # a canary: one stage per step, in order
    if not plan:
        yield function, at, "a canary needs at least one step (e.g. setWeight: 20)"
        return
    weight = 0
    for i, stage in enumerate(plan):
        if stage.new_weight is not None:
            yield from _set_weight(function, at + (i, "setWeight"), stage.new_weight, weight)
            weight = max(weight, stage.new_weight)
        elif stage.kind is StageKind.PAUSE and weight == 100 and not _windowed_analysis(plan[i + 1 :]):
            yield (
                function,
                at + (i, "pause"),
                "this pause comes after setWeight: 100: all traffic is already on the new revision, so it only "
                "delays the end of the rollout (scaleDownDelay keeps the old revision warm); remove it, or "
                "follow it with an analysis whose window covers it",
            )
        elif stage.kind is StageKind.ANALYSIS and stage.analysis is not None:
            yield from _analysis(function, at + (i, "analysis"), stage.analysis, weight)
    partial = any(0 < (s.new_weight or 0) < 100 for s in plan)
    if not partial and not any(s.kind is StageKind.ANALYSIS for s in plan):
        # Nothing is learnt before the switch: a canary in name only. An analysis at 100% still earns its place:
        # a failure there moves all traffic back to the old revision at once.
        yield (
            function,
            at,
            "this canary never sends part of the traffic to the new revision (no setWeight "
            "between 1 and 99) and never analyses it, so all traffic moves at once: use strategy: immediate, "
            "or blueGreen to check a preview first",
        )


def _windowed_analysis(following: tuple[Stage, ...]) -> bool:
    """Whether an analysis with a `window` follows: its measurements then look back over the pause's traffic."""
    return any(s.analysis is not None and s.analysis.window is not None for s in following)


def _set_weight(function: Function, at: JsonPath, weight: int, before: int) -> Iterator[Finding]:
    if weight == 0 and before == 0:
        yield function, at, "setWeight: 0 changes nothing: a canary starts with no traffic on the new revision"
    elif weight <= before:
        yield (
            function,
            at,
            f"weights must increase: {weight} after {before} (steps only move traffic towards the new revision)",
        )


def _analysis(function: Function, at: JsonPath, analysis: Analysis, weight: int) -> Iterator[Finding]:
    if analysis.min_requests <= 0:
        return
    if weight == 0:
        if not analysis.checks:
            yield (
                function,
                at + ("minRequests",),
                "this analysis runs before any traffic reaches the new revision (no setWeight > 0 before it)",
            )
        return
    traffic = function.rollout.expected_traffic
    problem = _unreachable(analysis, traffic, weight) if traffic is not None else None
    if problem:
        yield function, at + ("minRequests",), problem


def _unreachable(analysis: Analysis, traffic: float, weight: int) -> str | None:
    """Why `minRequests` defeats the analysis at `traffic` requests/s and `weight`%, or None.

    The first measurement comes one `interval` after the step began. With a `window`, each one sees the last
    `window` seconds, which may reach back before the step (at a weight no higher): `traffic` x `weight` x `window`
    is all it can ever see. Without one, it sees everything since the step began.
    """
    rate, needed, interval = traffic * weight / 100, analysis.min_requests, analysis.interval
    where, window = f"at {traffic:g} requests/s and {weight}% weight", analysis.window
    if window is not None:  # too short, every measurement is inconclusive, forever
        if _short(rate * window, needed):
            return (
                f"{where}, a {format_duration(window)} window collects about {rate * window:.0f} requests, "
                f"fewer than minRequests ({needed})"
            )
        return None
    if analysis.inconclusive is Inconclusive.FAIL:
        limit = analysis.failure_limit
        span = limit * interval
        if _short(rate * span, needed):
            return (
                f"{where}, the analysis sees about {rate * span:.0f} requests by its measurement number {limit} "
                f"(failureLimit, one every {format_duration(interval)}), fewer than minRequests ({needed}): with "
                "inconclusive: fail every rollout would abort"
            )
    if analysis.inconclusive is Inconclusive.PASS and _short(rate * interval, needed):
        return (
            f"{where}, the first measurement (after {format_duration(interval)}) sees about "
            f"{rate * interval:.0f} requests, fewer than minRequests ({needed}): with inconclusive: pass the "
            "analysis would pass without judging the new revision"
        )
    return None


def _short(collected: float, needed: int) -> bool:
    return collected < needed - 1e-9  # 20 requests/s x 10% x 25s is 50, whatever the floating point says


# ---- blue-green ----------------------------------------------------------------------------------


def _blue_green(function: Function) -> Iterator[Finding]:
    rollout = function.rollout
    if not rollout.auto_promotion_enabled and rollout.auto_promotion_seconds is not None:
        yield (
            function,
            _AT + ("autoPromotionSeconds",),
            "autoPromotionSeconds contradicts autoPromotionEnabled: false (promotion then waits for "
            "`fnctl promote`); remove one of them",
        )
    pre = rollout.pre_promotion_analysis
    if pre is not None and pre.min_requests > 0 and not pre.checks:
        # without user traffic the analysis never passes: the preview could never be promoted
        yield (
            function,
            _AT + ("prePromotionAnalysis", "minRequests"),
            "a blue-green preview receives no user traffic, so minRequests can never be reached; add checks",
        )


# ---- A/B test ------------------------------------------------------------------------------------


def _variants(function: Function) -> Iterator[Finding]:
    variants, at = function.rollout.variants, _AT + ("variants",)
    if len(variants) < 2:
        yield function, at, "an A/B test needs at least two variants"
        return
    total = sum(v.weight for v in variants)
    if total != 100:
        yield function, at, f"variant weights must sum to 100, not {total}"
    names: dict[str, int] = {}
    revisions: dict[str | int, str] = {}
    for i, variant in enumerate(variants):
        if variant.name in names:
            yield (
                function,
                at + (i, "name"),
                f"variant name {variant.name!r} is already used by variant {names[variant.name] + 1}",
            )
        if variant.revision in revisions:
            yield (
                function,
                at + (i, "revision"),
                f"variants {revisions[variant.revision]!r} and {variant.name!r} "
                f"both run revision {variant.revision}: an A/B test compares different revisions",
            )
        if variant.weight == 0:
            yield (
                function,
                at + (i, "weight"),
                f"variant {variant.name!r} has weight 0: it would get no traffic, so the test could not measure it",
            )
        names.setdefault(variant.name, i)
        revisions.setdefault(variant.revision, variant.name)
    if "new" not in revisions:
        yield function, at, "one variant must be the revision being deployed (revision: new)"
