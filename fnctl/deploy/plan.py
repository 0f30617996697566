"""From changes to an ordered plan of steps, and the plan file `fnctl plan -o plan.json` writes.

Pure: the plan names what will happen, in order, each progressive rollout's timeline, and the fingerprint of
the live state it was made against, so that `fnctl apply plan.json` can refuse a plan whose world has moved on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeGuard

from fnctl.deploy.diff import Change, ChangeKind, CollectionChange, DriftKind, LiveState
from fnctl.manifest.model import Rollout, Strategy
from fnctl.rollout.timeline import Timeline, timeline, timeline_summary, timeline_to_json

# The plan file's format (its "format" key). Its keys are frozen for a version: `fnctl apply plan.json` may
# run with a newer fnctl than `fnctl plan` did; tests/golden/plan/ holds an exact example.
PLAN_FORMAT = 1


class PlanStepKind(StrEnum):
    BUILD = "build image"
    CREATE_REVISION = "create revision"
    START = "start instances"
    HEALTH_CHECK = "health check"
    SWITCH = "switch traffic"
    STOP_OLD = "stop old instances"
    HEAL = "heal"
    REMOVE_ORPHANS = "remove orphan containers"
    DELETE = "delete function"
    CREATE_COLLECTION = "create collection"
    UPDATE_COLLECTION = "update collection"
    DROP_COLLECTION = "drop collection"


@dataclass(frozen=True)
class PlanStep:
    kind: PlanStepKind
    function: str
    detail: str = ""
    collection: str = ""  # the collection a collection step acts on (function is then "")


@dataclass(frozen=True)
class Plan:
    project: str
    changes: tuple[Change, ...]
    steps: tuple[PlanStep, ...]
    live_fingerprint: str
    desired_hashes: dict[str, str] = field(default_factory=dict)  # function → spec hash it was planned with
    prune: bool = False
    timelines: dict[str, Timeline] = field(default_factory=dict)  # function → its progressive rollout (updates)
    collections: tuple[CollectionChange, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.steps


def make_plan(
    project: str,
    changes: list[Change],
    live: LiveState,
    *,
    prune: bool,
    rollouts: Mapping[str, Rollout] | None = None,
    collections: Sequence[CollectionChange] = (),
) -> Plan:
    """`rollouts`: each desired function's rollout; without one, a function switches all its traffic at once.
    Collections are created and updated before any function deploys (a health check may read them) and
    dropped (with --prune) after."""
    steps: list[PlanStep] = []
    if live.orphans:
        steps.append(
            PlanStep(PlanStepKind.REMOVE_ORPHANS, "", f"{len(live.orphans)} container(s) unknown to the store")
        )
    steps += [s for c in collections if c.kind is not ChangeKind.DELETE for s in _collection_steps(c, prune)]
    timelines = _timelines(changes, rollouts or {})
    for change in changes:
        steps += _steps_for(change, prune, timelines.get(change.function))
    steps += [s for c in collections if c.kind is ChangeKind.DELETE for s in _collection_steps(c, prune)]
    desired = {c.function: c.spec_hash for c in changes if c.spec_hash is not None}
    return Plan(
        project, tuple(changes), tuple(steps), live_fingerprint(live), desired, prune, timelines, tuple(collections)
    )


def _collection_steps(change: CollectionChange, prune: bool) -> list[PlanStep]:
    name = change.name
    if change.kind is ChangeKind.CREATE:
        return [PlanStep(PlanStepKind.CREATE_COLLECTION, "", "table and indexes", name)]
    if change.kind is ChangeKind.UPDATE:
        what = sorted({f.path.split(".")[0] for f in change.fields})
        return [
            PlanStep(
                PlanStepKind.UPDATE_COLLECTION,
                "",
                ", ".join(what) + " (a schema change applies to new writes)" if "schema" in what else ", ".join(what),
                name,
            )
        ]
    if change.kind is ChangeKind.DELETE and prune:
        held = f"{change.documents} document{'s' if change.documents != 1 else ''}"
        return [
            PlanStep(PlanStepKind.DROP_COLLECTION, "", f"{held}; needs --force" if change.documents else "empty", name)
        ]
    return []


def _timelines(changes: list[Change], rollouts: Mapping[str, Rollout]) -> dict[str, Timeline]:
    # Only updates roll out progressively: a first deploy has nothing live to share the traffic with.
    return {
        c.function: timeline(rollouts[c.function])
        for c in changes
        if c.kind is ChangeKind.UPDATE
        and c.function in rollouts
        and rollouts[c.function].strategy is not Strategy.IMMEDIATE
    }


def _steps_for(change: Change, prune: bool, rollout: Timeline | None) -> list[PlanStep]:
    name = change.function
    if change.kind in (ChangeKind.CREATE, ChangeKind.UPDATE):
        what = "new function" if change.kind is ChangeKind.CREATE else f"replaces revision {change.live_revision}"
        switch = timeline_summary(rollout) if rollout is not None else "100% to the new revision"
        steps = [
            PlanStep(PlanStepKind.BUILD, name),
            PlanStep(PlanStepKind.CREATE_REVISION, name, what),
            PlanStep(PlanStepKind.START, name),
            PlanStep(PlanStepKind.HEALTH_CHECK, name),
            PlanStep(PlanStepKind.SWITCH, name, switch),
        ]
        if change.kind is ChangeKind.UPDATE:
            steps.append(PlanStep(PlanStepKind.STOP_OLD, name, f"drain revision {change.live_revision}"))
        return steps
    if change.kind is ChangeKind.DELETE:
        return [PlanStep(PlanStepKind.DELETE, name, "stop instances, remove routes")] if prune else []
    if change.drift:
        kinds = sorted({d.kind.value for d in change.drift})
        rebuild = any(d.kind is DriftKind.IMAGE_REMOVED for d in change.drift)
        return [PlanStep(PlanStepKind.HEAL, name, ", ".join(kinds) + ("; rebuild image" if rebuild else ""))]
    return []


def live_fingerprint(live: LiveState) -> str:
    """Changes whenever anything a plan depends on changes: revisions, weights, instances, quarantines."""
    return hashlib.sha256(json.dumps(live_summary(live), sort_keys=True).encode()).hexdigest()


def live_summary(live: LiveState) -> dict[str, Any]:
    return {
        "functions": {
            name: {
                "weights": {str(r): w for r, w in f.weights.items()},
                "specs": {str(r): h for r, h in f.spec_hashes.items()},
                "instances": sorted(f"{i.id}:{i.revision}:{i.status}" for i in f.instances),
            }
            for name, f in sorted(live.functions.items())
        },
        "orphans": sorted(live.orphans),
        "quarantined": sorted(live.quarantined),
        # Only when there are collections: the plan file of a project without any keeps its format-1 shape.
        **(
            {
                "collections": {
                    name: hashlib.sha256(json.dumps(c.spec, sort_keys=True).encode()).hexdigest()[:16]
                    for name, c in sorted(live.collections.items())
                }
            }
            if live.collections
            else {}
        ),
    }


def plan_to_json(plan: Plan, summary: dict[str, Any]) -> dict[str, Any]:
    """The plan file, format `PLAN_FORMAT`: `summary` is `live_summary` of the live state it was made against."""
    return {
        "format": PLAN_FORMAT,
        "project": plan.project,
        "prune": plan.prune,
        "liveFingerprint": plan.live_fingerprint,
        "live": summary,
        "desired": plan.desired_hashes,
        "changes": [change_to_json(c) for c in plan.changes],
        "steps": [
            {
                "kind": s.kind.value,
                "function": s.function,
                "detail": s.detail,
                **({"collection": s.collection} if s.collection else {}),
            }
            for s in plan.steps
        ],
        "timelines": {name: timeline_to_json(t) for name, t in plan.timelines.items()},
        **({"collections": [collection_change_to_json(c) for c in plan.collections]} if plan.collections else {}),
    }


def is_plan_file(document: object) -> TypeGuard[dict[str, Any]]:
    """Whether `document` is a plan file in the format this fnctl reads."""
    return isinstance(document, dict) and document.get("format") == PLAN_FORMAT


def collection_change_to_json(change: CollectionChange) -> dict[str, Any]:
    return {
        "collection": change.name,
        "change": change.kind.value,
        "documents": change.documents,
        "fields": [{"path": f.path, "old": f.old, "new": f.new} for f in change.fields],
    }


def change_to_json(change: Change) -> dict[str, Any]:
    return {
        "function": change.function,
        "change": change.kind.value,
        "liveRevision": change.live_revision,
        "specHash": change.spec_hash,
        "fields": [{"path": f.path, "old": f.old, "new": f.new} for f in change.fields],
        "drift": [{"kind": d.kind.value, "detail": d.detail} for d in change.drift],
    }


def stale_reasons(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What changed in the live state between a plan's recording and now, in words."""
    reasons: list[str] = []
    old_fns, new_fns = recorded.get("functions", {}), current.get("functions", {})
    for name in sorted(set(old_fns) | set(new_fns)):
        before, after = old_fns.get(name), new_fns.get(name)
        if before is None:
            reasons.append(f"{name} was deployed since")
        elif after is None:
            reasons.append(f"{name} was deleted since")
        else:
            for key in ("weights", "specs", "instances"):
                if before.get(key) != after.get(key):
                    reasons.append(f"{name}: {key} changed ({before.get(key)} → {after.get(key)})")
    if recorded.get("orphans") != current.get("orphans"):
        reasons.append("orphan containers changed")
    if recorded.get("quarantined") != current.get("quarantined"):
        reasons.append("quarantined revisions changed")
    if recorded.get("collections", {}) != current.get("collections", {}):
        reasons.append("collections changed in the data store")
    return reasons
