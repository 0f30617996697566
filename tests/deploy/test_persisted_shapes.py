"""Golden tests of what fnctl persists: canonical specs (and their hashes, the identity of every revision),
the plan file, and the store's JSON records. No Docker.

The goldens in tests/golden/ were recorded with the code as it was before these shapes had explicit
serializers, from the frozen project tests/golden/project/. A failure here means a change would redeploy
every function on upgrade, or break plan files and stores written by an older fnctl: change the format's
version on purpose instead. `FNCTL_RECORD_GOLDENS=1` rewrites the goldens from the current code (only for a
deliberate format change, reviewed in the diff).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from fnctl.commands.publish import publish_resources
from fnctl.deploy import executor
from fnctl.deploy.desired import DeploySpec, spec_hash
from fnctl.deploy.diff import ChangeKind, Desired, LiveFunction, LiveInstance, LiveState, diff
from fnctl.deploy.live import live_from_store
from fnctl.deploy.plan import is_plan_file, live_summary, make_plan, plan_to_json
from fnctl.deploy.revisionspec import SpecFormatError, function_from_spec, spec_version
from fnctl.deploy.session import desired_state
from fnctl.manifest.model import DesiredState, Strategy
from fnctl.manifest.project import load_project
from fnctl.rollout.record import Record, State, record_from
from fnctl.state.revisions import Revision, RevisionStatus
from fnctl.state.store import Store, connect

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
PROJECT = GOLDEN / "project"
RECORDING = os.environ.get("FNCTL_RECORD_GOLDENS") == "1"
FINGERPRINT_KEY = "6f1d2c3b4a5968778695a4b3c2d1e0f0112233445566778899aabbccddeeff00"  # a fixed host-local key
NONE_HASH = "5e7b0c9a1d2f3e4a"  # the store's secrets-none-hash, as a fresh store draws it (8 random bytes)
FUNCTIONS = ("abtest", "bluegreen", "full", "plain", "secret")
STORE_TABLES = ("settings", "revisions", "routes", "resources")


@pytest.fixture(autouse=True)
def _golden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FNCTL_FINGERPRINT_KEY", FINGERPRINT_KEY)
    monkeypatch.setenv("GOLDEN_API_TOKEN", "golden-token")
    monkeypatch.delenv("FNCTL_BASE_IMAGE", raising=False)  # fnctl.toml names the base image anyway


def _desired(store: Store) -> tuple[list[DeploySpec], DesiredState]:
    store.setting("secrets-none-hash", NONE_HASH)  # kept when the store already has one (the upgrade's)
    specs, _, state = desired_state(load_project(PROJECT), store, None)
    return specs, state


def _compare_text(path: Path, text: str) -> None:
    if RECORDING:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{path.relative_to(GOLDEN)} changed"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# ---- canonical specs -------------------------------------------------------------------------------


@pytest.fixture
def specs(tmp_path: Path) -> list[DeploySpec]:
    store = connect(tmp_path / "state.db")
    try:
        found, _ = _desired(store)
    finally:
        store.close()
    assert sorted(s.name for s in found) == list(FUNCTIONS)
    return found


def test_canonical_specs_and_their_hashes_are_the_golden_ones(specs: list[DeploySpec]) -> None:
    for spec in specs:
        path = GOLDEN / "spec" / f"{spec.name}.json"
        # The text compares types too (1 and 1.0 are equal in Python but not in the hash).
        _compare_text(path, _pretty({"spec": spec.spec, "specHash": spec.spec_hash}))
        golden = json.loads(path.read_text(encoding="utf-8"))
        assert spec_hash(spec.spec) == spec.spec_hash == golden["specHash"]
        exact = json.dumps(golden["spec"], sort_keys=True, separators=(",", ":")).encode()
        assert hashlib.sha256(exact).hexdigest() == golden["specHash"]  # the golden is what gets hashed


def test_a_function_read_back_from_its_stored_spec_is_the_one_deployed(specs: list[DeploySpec]) -> None:
    defaults = load_project(PROJECT).default_limits
    for spec in specs:
        stored = json.loads(json.dumps(spec.spec, sort_keys=True))  # as the store gives it back
        assert function_from_spec(spec.name, stored, defaults) == spec.function, spec.name


def test_format_1_has_no_version_key_and_a_newer_format_is_refused(specs: list[DeploySpec]) -> None:
    # Version 1 is marked by the key's absence: adding it would change every existing spec hash.
    assert all(spec_version(s.spec) == 1 and "specVersion" not in s.spec for s in specs)
    newer = dict(specs[0].spec, specVersion=2)
    with pytest.raises(SpecFormatError, match="spec format 2"):
        function_from_spec(specs[0].name, newer, load_project(PROJECT).default_limits)


# ---- the plan file ---------------------------------------------------------------------------------


def _live_function(
    name: str, spec: DeploySpec, *, spec_hash_: str, instances: tuple[LiveInstance, ...]
) -> LiveFunction:
    return LiveFunction(
        name=name,
        weights={1: 100},
        specs={1: spec.spec},
        spec_hashes={1: spec_hash_},
        images={1: f"fnctl/golden-{name}:1"},
        images_present={1: True},
        instances=instances,
        min_instances=1,
    )


def test_the_plan_file_is_the_golden_one(specs: list[DeploySpec]) -> None:
    by_name = {s.name: s for s in specs}
    running = (LiveInstance("i-full", 1, "c-full", "running", "fnctl/golden-full:1", "c-full"),)
    older_full = dict(by_name["full"].spec, env={"GREETING": "hello"})
    live = LiveState(
        {
            "plain": _live_function(
                "plain",
                by_name["plain"],
                spec_hash_=by_name["plain"].spec_hash,
                instances=(LiveInstance("i-plain", 1, "c-plain", "missing", "", ""),),
            ),
            "full": LiveFunction(
                "full", {1: 100}, {1: older_full}, {1: "f" * 64}, {1: "fnctl/golden-full:1"}, {1: True}, running, 2
            ),
            "gone": _live_function("gone", by_name["plain"], spec_hash_="0" * 64, instances=()),
        },
        orphans=("c0ffee",),
        quarantined={"q" * 64: "gone revision 0: rolled back"},
    )
    wanted = [s for s in specs if s.name in ("plain", "full", "secret")]
    changes = diff([Desired(s.name, s.spec, s.spec_hash) for s in wanted], live)
    plan = make_plan("golden", changes, live, prune=True, rollouts={s.name: s.function.rollout for s in wanted})
    document = plan_to_json(plan, live_summary(live))
    assert {c.function: c.kind for c in changes} == {
        "full": ChangeKind.UPDATE,
        "gone": ChangeKind.DELETE,
        "plain": ChangeKind.UNCHANGED,
        "secret": ChangeKind.CREATE,
    }
    _compare_text(GOLDEN / "plan" / "plan.json", _pretty(document))
    assert is_plan_file(json.loads((GOLDEN / "plan" / "plan.json").read_text(encoding="utf-8")))
    assert not is_plan_file(dict(document, format=2)) and not is_plan_file([document])


# ---- store records ---------------------------------------------------------------------------------

RECORD = Record(
    7,
    "full",
    1,
    2,
    Strategy.CANARY,
    State.PAUSED,
    4,
    1700000000.5,
    1700000030.25,
    {1: 50, 2: 50},
    {"control": 1, "candidate": 2},
    failures=1,
    next_measure=1700000040.0,
    handled=12,
    winner=2,
    scale_down_at=1700000330.0,
    scaled_down=False,
    reason="at a gate",
)


def test_a_rollout_record_is_stored_in_the_golden_shape_and_read_back() -> None:
    path = GOLDEN / "store" / "rollout-detail.json"
    _compare_text(path, _pretty(RECORD.detail()))
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert (
        record_from(
            RECORD.id,
            RECORD.function,
            RECORD.stable,
            RECORD.canary,
            RECORD.strategy.value,
            RECORD.step,
            RECORD.state.value,
            stored,
            0.0,
        )
        == RECORD
    )


def _record_store_rows(tmp_path: Path) -> None:
    """The rows today's `fnctl apply` leaves for the golden project (every function live at revision 1, the
    gateway's resources published), written through the same store calls as executor.prepare / go_live."""
    store = connect(tmp_path / "recorded.db")
    try:
        specs, state = _desired(store)
        ctx = executor.Context(
            store, "golden", "fnctl-base:golden", "Ada <ada@example.org>", "apply", None, lambda _: None
        )
        for spec in specs:
            with store.transaction():
                store.add_revision(
                    Revision(
                        spec.name,
                        1,
                        spec.spec_hash,
                        spec.spec,
                        "",
                        None,
                        None,
                        1700000000.0,
                        ctx.actor,
                        RevisionStatus.PENDING,
                        None,
                        None,
                    )
                )
            store.set_revision_image(spec.name, 1, f"fnctl/golden-{spec.name}:1")
            with store.transaction():
                store.set_route(spec.name, {1: 100})
                store.set_revision_status(spec.name, 1, RevisionStatus.READY, None)
        publish_resources(ctx, state)
    finally:
        store.close()
    lines = [
        "-- Rows of a store left by `fnctl apply` of tests/golden/project before the persisted shapes had",
        "-- explicit serializers (recorded by tests/deploy/test_persisted_shapes.py; do not edit by hand).",
    ]
    with sqlite3.connect(tmp_path / "recorded.db") as connection:
        for line in connection.iterdump():
            table = line.split('"')[1] if line.startswith('INSERT INTO "') else None
            if table in STORE_TABLES and (table != "settings" or "'secrets-none-hash'" in line):
                lines.append(line)
    connection.close()
    (GOLDEN / "store" / "rows.sql").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_an_upgrade_redeploys_nothing(tmp_path: Path) -> None:
    """A store written by the old code, the same manifests, the new code: every function is unchanged and
    the gateway's resources are not republished."""
    if RECORDING:
        _record_store_rows(tmp_path)
    rows = (GOLDEN / "store" / "rows.sql").read_text(encoding="utf-8")
    store = connect(tmp_path / "state.db")
    try:
        with sqlite3.connect(tmp_path / "state.db") as raw:
            raw.executescript(rows)
        raw.close()
        specs, state = _desired(store)
        stored = {r[0]: r[1] for r in store.raw().query("SELECT function, spec FROM revisions")}
        assert set(stored) == set(FUNCTIONS)
        for spec in specs:  # a revision written now would be byte for byte the stored one
            assert json.dumps(spec.spec, sort_keys=True) == stored[spec.name], spec.name
        live = live_from_store(store, listed=[], images_present=lambda images: set(images))
        changes = diff([Desired(s.name, s.spec, s.spec_hash) for s in specs], live)
        assert {c.function: c.kind for c in changes} == dict.fromkeys(FUNCTIONS, ChangeKind.UNCHANGED)
        ctx = executor.Context(store, "golden", "fnctl-base:golden", "test", "apply", None, lambda _: None)
        assert publish_resources(ctx, state) == []  # nothing to republish: the gateway's records are the same
    finally:
        store.close()
