"""Collections in diff / plan (pure) and `fnctl apply` (a real process on a real store and data file; apply
lists the engine's containers, so it is docker-marked, though no container is started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fnctl.deploy.diff import ChangeKind, LiveCollection, LiveState, diff_collections, has_changes, refused_drops
from fnctl.deploy.plan import PlanStepKind, live_summary, make_plan, plan_to_json, stale_reasons
from fnctl.state import docstore
from fnctl.state.location import StateLocation

SPEC: dict[str, Any] = {
    "schema": {"type": "object"},
    "indexes": [{"fields": ["customer"], "unique": False}],
    "limits": {"documentSize": 262144},
}


def _live(**collections: tuple[dict[str, Any], int]) -> LiveState:
    return LiveState({}, collections={n: LiveCollection(n, s, d) for n, (s, d) in collections.items()})


def test_diff_collections_create_update_delete_unchanged() -> None:
    changed = {
        **SPEC,
        "indexes": [{"fields": ["customer"], "unique": True}],
        "schema": {"type": "object", "required": ["customer"]},
    }
    live = _live(same=(SPEC, 3), moved=(SPEC, 2), gone=(SPEC, 5))
    changes = {c.name: c for c in diff_collections({"same": SPEC, "moved": changed, "new": SPEC}, live)}
    assert {n: c.kind for n, c in changes.items()} == {
        "same": ChangeKind.UNCHANGED,
        "moved": ChangeKind.UPDATE,
        "new": ChangeKind.CREATE,
        "gone": ChangeKind.DELETE,
    }
    assert [f.path for f in changes["moved"].fields] == ["indexes", "schema.required"]
    assert changes["gone"].documents == 5
    listed = list(changes.values())
    assert [c.name for c in refused_drops(listed, prune=True, force=False)] == ["gone"]
    assert refused_drops(listed, prune=False, force=False) == []  # not pruning: kept, nothing refused
    assert refused_drops(listed, prune=True, force=True) == []
    assert refused_drops(diff_collections({}, _live(empty=(SPEC, 0))), prune=True, force=False) == []


def test_collection_changes_count_in_has_changes() -> None:
    live = _live(gone=(SPEC, 1))
    only_delete = diff_collections({}, live)
    assert not has_changes([], live, prune=False, collections=only_delete)
    assert has_changes([], live, prune=True, collections=only_delete)
    assert has_changes([], live, prune=False, collections=diff_collections({"new": SPEC}, live))
    assert not has_changes([], live, collections=diff_collections({"gone": SPEC}, live))


def test_plan_creates_collections_first_and_drops_them_last() -> None:
    live = _live(old=(SPEC, 4), changed=(SPEC, 0))
    changed = {**SPEC, "limits": {"documentSize": 1024}}
    collections = diff_collections({"new": SPEC, "changed": changed}, live)
    plan = make_plan("proj", [], live, prune=True, collections=collections)
    assert [(s.kind, s.collection) for s in plan.steps] == [
        (PlanStepKind.UPDATE_COLLECTION, "changed"),
        (PlanStepKind.CREATE_COLLECTION, "new"),
        (PlanStepKind.DROP_COLLECTION, "old"),
    ]
    assert plan.steps[-1].detail == "4 documents; needs --force"
    document = json.loads(json.dumps(plan_to_json(plan, live_summary(live))))
    assert document["collections"][0] == {
        "collection": "changed",
        "change": "update",
        "documents": 0,
        "fields": [{"path": "limits.documentSize", "old": 262144, "new": 1024}],
    }
    assert document["steps"][0] == {
        "kind": "update collection",
        "function": "",
        "detail": "limits",
        "collection": "changed",
    }
    assert not make_plan(
        "proj", [], live, prune=False, collections=diff_collections({"old": SPEC, "changed": SPEC}, live)
    ).steps
    moved = live_summary(_live(old=(changed, 4), changed=(SPEC, 0)))
    assert stale_reasons(live_summary(live), moved) == ["collections changed in the data store"]
    assert stale_reasons(live_summary(live), live_summary(_live(old=(SPEC, 99), changed=(SPEC, 0)))) == []


COLLECTION = """apiVersion: fnctl/v1
kind: Collection
metadata: {name: %s}
spec:
  schema: {type: object, required: [customer], properties: {customer: {type: string}}}
  indexes: [{fields: [customer]}]
"""


@pytest.mark.docker
def test_apply_creates_updates_and_refuses_to_drop_a_collection_with_documents(
    tmp_path: Path, state_location: StateLocation
) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "fnctl.toml").write_text('[project]\nname = "dataapply"\nmanifests = ["manifests"]\n')
    env = {**os.environ, "FNCTL_STATE": state_location.to_arg(), "NO_COLOR": "1"}

    def fnctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fnctl", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    orders, notes = tmp_path / "manifests" / "orders.yaml", tmp_path / "manifests" / "notes.yaml"
    orders.write_text(COLLECTION % "orders")
    notes.write_text(COLLECTION % "notes")
    (tmp_path / "manifests" / "keep.yaml").write_text(COLLECTION % "keep")
    diff = fnctl("diff", "-o", "json")
    assert diff.returncode == 1
    assert [(c["collection"], c["change"]) for c in json.loads(diff.stdout)["collections"]] == [
        ("keep", "create"),
        ("notes", "create"),
        ("orders", "create"),
    ]
    assert not docstore.exists_at(state_location)  # diff reads, never creates
    applied = fnctl("apply", "-o", "json")
    assert applied.returncode == 0, applied.stderr
    results = json.loads(applied.stdout)["results"]
    assert {(r["function"], r["action"]) for r in results if r["kind"] == "collection"} == {
        ("keep", "create collection"),
        ("notes", "create collection"),
        ("orders", "create collection"),
    }
    assert fnctl("diff").returncode == 0
    assert fnctl("apply", "-o", "json").stdout.count("collection") == 0  # nothing to do: nothing written
    assert fnctl("data", "put", "orders", "o-1", "-d", '{"customer": "c"}').returncode == 0

    orders.write_text(
        (COLLECTION % "orders").replace(
            "indexes: [{fields: [customer]}]", "indexes: [{fields: [customer], unique: true}]"
        )
    )
    plan = fnctl("plan")
    assert "orders: update collection (indexes)" in plan.stdout
    assert fnctl("apply").returncode == 0
    duplicate = fnctl("data", "put", "orders", "o-2", "-d", '{"customer": "c"}')
    assert duplicate.returncode == 1 and "unique index" in duplicate.stderr  # the new index is a real one

    orders.unlink()
    notes.unlink()
    kept = fnctl("apply")  # without --prune: kept
    assert kept.returncode == 0 and fnctl("data", "get", "orders", "o-1").returncode == 0
    refused = fnctl("apply", "--prune")
    assert refused.returncode == 2
    assert "refusing to drop collections that still hold documents: orders (1 document)" in refused.stderr
    listed = json.loads(fnctl("data", "ls", "-o", "json").stdout)
    assert sorted(c["name"] for c in listed) == ["keep", "notes", "orders"]  # nothing changed, not even the empty one
    forced = fnctl("apply", "--prune", "--force", "-o", "json")
    assert forced.returncode == 0, forced.stderr
    dropped = {r["function"]: r["message"] for r in json.loads(forced.stdout)["results"] if r["kind"] == "collection"}
    assert dropped == {"notes": "dropped (empty)", "orders": "dropped with its 1 document"}
    assert [c["name"] for c in json.loads(fnctl("data", "ls", "-o", "json").stdout)] == ["keep"]
    audit = fnctl("audit", "-o", "json").stdout
    for action in ("collection-create", "collection-update", "collection-drop"):
        assert action in audit
