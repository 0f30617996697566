"""`diff` and `plan` on plain values: no Docker, no SQLite, no git."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fnctl.deploy.diff import (
    ChangeKind,
    Desired,
    DriftKind,
    LiveFunction,
    LiveInstance,
    LiveState,
    diff,
    field_changes,
    has_changes,
)
from fnctl.deploy.plan import PlanStepKind, live_fingerprint, live_summary, make_plan, plan_to_json, stale_reasons
from fnctl.manifest.model import Rollout, RolloutStep, RolloutStepKind, Strategy
from fnctl.rollout.timeline import timeline, timeline_from_json

SPEC: dict[str, Any] = {
    "handler": "main.handler",
    "env": {"GREETING": "hi"},
    "limits": {"memory": 128},
    "source": {"hash": "aaa"},
    "scaling": {"min_instances": 1},
}


def _spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(json.dumps(SPEC))
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = spec
        for key in parents:
            target = target[key]
        target[leaf] = value
    return spec


def _hash(spec: dict[str, Any]) -> str:
    return "h:" + json.dumps(spec, sort_keys=True)


def _desired(name: str, spec: dict[str, Any] | None = None) -> Desired:
    spec = spec if spec is not None else SPEC
    return Desired(name, spec, _hash(spec))


def _instance(
    instance: str = "i1",
    revision: int = 1,
    status: str = "running",
    image: str = "img:1",
    container: str = "c1",
    engine: str | None = None,
) -> LiveInstance:
    return LiveInstance(
        instance,
        revision,
        container,
        status,
        image if status != "missing" else "",
        engine if engine is not None else (container if status != "missing" else ""),
    )


def _live(
    name: str = "fn",
    spec: dict[str, Any] | None = None,
    *,
    instances: tuple[LiveInstance, ...] | None = None,
    weights: dict[int, int] | None = None,
    image_present: bool = True,
    min_instances: int = 1,
) -> LiveFunction:
    spec = spec if spec is not None else SPEC
    weights = weights if weights is not None else {1: 100}
    return LiveFunction(
        name=name,
        weights=weights,
        specs={r: spec for r in weights},
        spec_hashes={r: _hash(spec) for r in weights},
        images={r: f"img:{r}" for r in weights},
        images_present={r: image_present for r in weights},
        instances=instances if instances is not None else (_instance(),),
        min_instances=min_instances,
    )


def _state(
    *functions: LiveFunction, orphans: tuple[str, ...] = (), quarantined: dict[str, str] | None = None
) -> LiveState:
    return LiveState({f.name: f for f in functions}, orphans, quarantined or {})


# ---- diff ----


def test_each_kind_of_change_sorted_by_name() -> None:
    live = _state(_live("same"), _live("changed"), _live("removed"))
    changes = diff([_desired("same"), _desired("changed", _spec(env={"GREETING": "yo"})), _desired("added")], live)
    assert [(c.function, c.kind) for c in changes] == [
        ("added", ChangeKind.CREATE),
        ("changed", ChangeKind.UPDATE),
        ("removed", ChangeKind.DELETE),
        ("same", ChangeKind.UNCHANGED),
    ]
    by_name = {c.function: c for c in changes}
    assert by_name["changed"].live_revision == 1 and by_name["removed"].live_revision == 1
    assert by_name["added"].live_revision is None and by_name["removed"].spec_hash is None
    assert by_name["same"].fields == () and by_name["same"].drift == ()


def test_update_lists_the_changed_leaves_only() -> None:
    wanted = _spec(env={"GREETING": "yo", "NEW": "1"}, limits__memory=256)
    (change,) = diff([_desired("fn", wanted)], _state(_live()))
    assert [(f.path, f.old, f.new) for f in change.fields] == [
        ("env.GREETING", "hi", "yo"),
        ("env.NEW", None, "1"),
        ("limits.memory", 128, 256),
    ]


def test_a_create_lists_every_field_as_new() -> None:
    (change,) = diff([_desired("fn")], _state())
    assert {f.path: f.new for f in change.fields} == SPEC
    assert all(f.old is None for f in change.fields)


def test_field_changes_compare_lists_whole_and_see_removed_keys() -> None:
    changes = list(field_changes({"a": [1, 2], "b": {"c": 1}, "gone": 1}, {"a": [1, 3], "b": {"c": 1}}))
    assert [(c.path, c.old, c.new) for c in changes] == [("a", [1, 2], [1, 3]), ("gone", 1, None)]
    assert list(field_changes({"a": [1]}, {"a": [1]})) == []


def test_a_code_change_alone_is_an_update() -> None:
    (change,) = diff([_desired("fn", _spec(source={"hash": "bbb"}))], _state(_live()))
    assert change.kind is ChangeKind.UPDATE
    assert [(f.path, f.old, f.new) for f in change.fields] == [("source.hash", "aaa", "bbb")]


def test_the_stable_revision_is_the_one_with_most_traffic() -> None:
    old, new = _spec(source={"hash": "old"}), SPEC
    function = LiveFunction(
        "fn",
        {1: 90, 2: 10},
        {1: old, 2: new},
        {1: _hash(old), 2: _hash(new)},
        {1: "img:1", 2: "img:2"},
        {1: True, 2: True},
        (_instance("i1", 1, image="img:1"), _instance("i2", 2, image="img:2", container="c2")),
    )
    assert function.stable == 1
    (change,) = diff([_desired("fn", new)], _state(function))
    assert change.kind is ChangeKind.UPDATE and change.live_revision == 1


def test_a_routed_function_without_weights_is_created_or_deleted_not_crashed() -> None:
    empty = _live(weights={}, instances=())
    assert [c.kind for c in diff([_desired("fn")], _state(empty))] == [ChangeKind.CREATE]
    (gone,) = diff([], _state(empty))
    assert gone.kind is ChangeKind.DELETE and gone.live_revision is None


@pytest.mark.parametrize(
    ("instance", "kind"),
    [
        (_instance(status="missing"), DriftKind.INSTANCE_MISSING),
        (_instance(status="exited"), DriftKind.INSTANCE_EXITED),
        (_instance(image="sha256:somethingelse"), DriftKind.INSTANCE_CHANGED),
        (_instance(engine="c-recreated"), DriftKind.INSTANCE_CHANGED),
    ],
)
def test_instance_drift(instance: LiveInstance, kind: DriftKind) -> None:
    (change,) = diff([_desired("fn")], _state(_live(instances=(instance,))))
    assert change.kind is ChangeKind.UNCHANGED
    assert [d.kind for d in change.drift] == [kind, DriftKind.TOO_FEW_INSTANCES]
    assert change.drift[0].instance == "i1" and change.drift[0].revision == 1
    assert "0 of 1 instances running" in change.drift[1].detail


def test_removed_image_and_missing_instances_are_drift() -> None:
    (change,) = diff([_desired("fn")], _state(_live(image_present=False, instances=())))
    assert [d.kind for d in change.drift] == [DriftKind.IMAGE_REMOVED, DriftKind.TOO_FEW_INSTANCES]
    assert "img:1" in change.drift[0].detail
    two = _live(instances=(_instance(),), min_instances=2)
    assert [d.kind for d in diff([_desired("fn")], _state(two))[0].drift] == [DriftKind.TOO_FEW_INSTANCES]
    none_wanted = _live(instances=(), min_instances=0)
    assert diff([_desired("fn")], _state(none_wanted))[0].drift == ()


def test_has_changes() -> None:
    live = _state(_live("fn"), _live("old"))
    changes = diff([_desired("fn")], live)
    assert not has_changes(changes, live, prune=False)  # `old` is kept unless pruning
    assert has_changes(changes, live, prune=True)
    clean = _state(_live("fn"))
    assert not has_changes(diff([_desired("fn")], clean), clean)
    with_orphan = _state(_live("fn"), orphans=("c9",))
    assert has_changes(diff([_desired("fn")], with_orphan), with_orphan)
    drifted = _state(_live("fn", instances=(_instance(status="exited"),)))
    assert has_changes(diff([_desired("fn")], drifted), drifted)


# ---- plan ----


def test_plan_orders_the_steps_of_each_change() -> None:
    live = _state(_live("changed"), _live("removed"), _live("drifted", instances=()), orphans=("c9",))
    desired = [_desired("added"), _desired("changed", _spec(env={})), _desired("drifted")]
    plan = make_plan("proj", diff(desired, live), live, prune=True)
    steps = [(s.kind, s.function) for s in plan.steps]
    deploy = [
        PlanStepKind.BUILD,
        PlanStepKind.CREATE_REVISION,
        PlanStepKind.START,
        PlanStepKind.HEALTH_CHECK,
        PlanStepKind.SWITCH,
    ]
    assert steps == [(PlanStepKind.REMOVE_ORPHANS, "")] + [(k, "added") for k in deploy] + [
        (k, "changed") for k in deploy + [PlanStepKind.STOP_OLD]
    ] + [(PlanStepKind.HEAL, "drifted"), (PlanStepKind.DELETE, "removed")]
    assert plan.desired_hashes == {"added": _hash(SPEC), "changed": _hash(_spec(env={})), "drifted": _hash(SPEC)}
    assert "replaces revision 1" in next(
        s.detail for s in plan.steps if s.kind is PlanStepKind.CREATE_REVISION and s.function == "changed"
    )


def test_without_prune_a_removed_function_has_no_step() -> None:
    live = _state(_live("removed"))
    plan = make_plan("proj", diff([], live), live, prune=False)
    assert plan.empty and not plan.prune


def test_heal_step_says_when_the_image_is_rebuilt() -> None:
    live = _state(_live(image_present=False))
    (step,) = make_plan("proj", diff([_desired("fn")], live), live, prune=False).steps
    assert step.kind is PlanStepKind.HEAL and "image removed" in step.detail and "rebuild image" in step.detail


def test_a_no_op_plan_is_empty() -> None:
    live = _state(_live("fn"))
    assert make_plan("proj", diff([_desired("fn")], live), live, prune=True).empty


def test_the_fingerprint_follows_everything_a_plan_depends_on() -> None:
    base = _state(_live())
    same = _state(_live())
    assert live_fingerprint(base) == live_fingerprint(same)
    variants = [
        _state(_live(instances=(_instance(status="exited"),))),
        _state(_live(instances=(_instance("i2"),))),
        _state(_live(weights={1: 90, 2: 10})),
        _state(_live(spec=_spec(env={}))),
        _state(_live(), orphans=("c9",)),
        _state(_live(), quarantined={"h": "fn revision 2: rolled back"}),
        _state(_live(), _live("other")),
    ]
    prints = {live_fingerprint(v) for v in variants}
    assert live_fingerprint(base) not in prints and len(prints) == len(variants)


def test_stale_reasons_say_what_changed() -> None:
    before = live_summary(_state(_live("fn"), _live("gone")))
    after = live_summary(
        _state(
            _live("fn", instances=(_instance(status="exited"),)), _live("new"), orphans=("c9",), quarantined={"h": "x"}
        )
    )
    reasons = stale_reasons(before, after)
    assert reasons[0].startswith("fn: instances changed (['i1:1:running'] → ['i1:1:exited'])")
    assert "gone was deleted since" in reasons and "new was deployed since" in reasons
    assert "orphan containers changed" in reasons and "quarantined revisions changed" in reasons
    assert stale_reasons(before, before) == []


def test_the_plan_file_round_trips_through_json() -> None:
    live = _state(_live("fn"))
    plan = make_plan("proj", diff([_desired("fn", _spec(env={}))], live), live, prune=False)
    document = json.loads(json.dumps(plan_to_json(plan, live_summary(live))))
    assert document["format"] == 1 and document["project"] == "proj" and document["prune"] is False
    assert document["liveFingerprint"] == live_fingerprint(live)
    assert document["desired"] == {"fn": _hash(_spec(env={}))}
    assert document["changes"][0]["fields"] == [{"path": "env.GREETING", "old": "hi", "new": None}]
    assert [s["kind"] for s in document["steps"]] == [
        k.value
        for k in (
            PlanStepKind.BUILD,
            PlanStepKind.CREATE_REVISION,
            PlanStepKind.START,
            PlanStepKind.HEALTH_CHECK,
            PlanStepKind.SWITCH,
            PlanStepKind.STOP_OLD,
        )
    ]
    assert stale_reasons(document["live"], live_summary(live)) == []


# ---- rollout timelines in the plan ----

CANARY = Rollout(
    Strategy.CANARY,
    steps=(
        RolloutStep(RolloutStepKind.SET_WEIGHT, weight=10),
        RolloutStep(RolloutStepKind.PAUSE, pause=30.0),
        RolloutStep(RolloutStepKind.SET_WEIGHT, weight=50),
        RolloutStep(RolloutStepKind.PAUSE, pause=60.0),
    ),
)


def test_an_update_with_a_progressive_rollout_carries_its_timeline() -> None:
    live = _state(_live("canary"), _live("plain"), _live("instant"))
    desired = [_desired(n, _spec(env={})) for n in ("added", "canary", "instant", "plain")]
    rollouts = {"added": CANARY, "canary": CANARY, "instant": Rollout()}  # "plain": none given
    plan = make_plan("proj", diff(desired, live), live, prune=False, rollouts=rollouts)
    assert plan.timelines == {"canary": timeline(CANARY)}  # a first deploy is immediate, whatever the strategy
    switch = {s.function: s.detail for s in plan.steps if s.kind is PlanStepKind.SWITCH}
    assert switch == {
        "added": "100% to the new revision",
        "canary": "canary: 10% → 50% → 100% over 2m",
        "instant": "100% to the new revision",
        "plain": "100% to the new revision",
    }


def test_without_rollouts_nothing_changes() -> None:
    live = _state(_live("fn"))
    plan = make_plan("proj", diff([_desired("fn", _spec(env={}))], live), live, prune=False)
    assert plan.timelines == {}
    assert plan_to_json(plan, live_summary(live))["timelines"] == {}


def test_the_plan_file_carries_the_timelines() -> None:
    live = _state(_live("fn"))
    plan = make_plan("proj", diff([_desired("fn", _spec(env={}))], live), live, prune=False, rollouts={"fn": CANARY})
    document = json.loads(json.dumps(plan_to_json(plan, live_summary(live))))
    assert list(document["timelines"]) == ["fn"]
    assert document["timelines"]["fn"]["longestExposure"] == {
        "weight": 50,
        "duration": 90,
        "firstStep": 1,
        "lastStep": 4,
    }
    assert timeline_from_json(document["timelines"]["fn"]) == timeline(CANARY)


def test_render_plan_prints_each_timeline_under_the_steps(capsys: pytest.CaptureFixture[str]) -> None:
    from fnctl.cli.render_deploy import render_plan

    live = _state(_live("fn"))
    plan = make_plan("proj", diff([_desired("fn", _spec(env={}))], live), live, prune=False, rollouts={"fn": CANARY})
    render_plan(json.loads(json.dumps(plan_to_json(plan, live_summary(live)))), None)
    out = capsys.readouterr().out.splitlines()
    assert "  5. fn: switch traffic (canary: 10% → 50% → 100% over 2m)" in out
    assert out[-3:] == [
        "fn: canary timeline",
        "    0s 10% (setWeight) · 0s-30s pause · 30s 50% (setWeight) · 30s-1m30s pause · 1m30s 100% (promote) · "
        "1m30s-2m old revision warm (scaleDownDelay)",
        "    total 2m if all goes well; longest exposure: 50% for 1m30s (steps 1-4)",
    ]
