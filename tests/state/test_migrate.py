"""`fnctl state migrate`: a SQLite state with something in every table, copied to a real PostgreSQL database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fnctl.gateway import keys
from fnctl.rollout.latency import Second
from fnctl.state import cronstate, deploylog, metricstore, rolloutstore, triggerstate
from fnctl.state.location import StateLocation
from fnctl.state.revisions import InstanceRow, InstanceState, Revision, RevisionStatus
from fnctl.state.store import Store, connect
from fnctl.state.transfer import TABLES

NOW = time.time()


def fnctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fnctl", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _fill(store: Store) -> None:
    """A row or more in every table of the deployment state, through fnctl's own writers."""
    for number in (1, 2):
        store.add_revision(
            Revision(
                "hello", number, f"h{number}", {"env": {}}, "img", "abc", "Ada", NOW, "ada", RevisionStatus.READY, None
            )
        )
    store.set_route("hello", {1: 90, 2: 10})
    store.add_instance(InstanceRow("i1", "hello", 2, "c1", "/run/i1", InstanceState.READY, NOW))
    rollout = rolloutstore.add(store, "hello", 1, 2, "canary", "running", {"step": 1}, NOW)
    rolloutstore.add_event(store, rollout, "started", 0, "canary 10%")
    for n in range(3):
        store.audit(actor="ada", command="apply", action="deploy", target="hello", outcome="ok", detail=f"r{n}")
    with store.transaction():
        store.append_chained(
            "invocations",
            [(NOW - n, f"r{n}", None, "hello", 2, None, "ok", 200, 1.5 + n, "127.0.0.1") for n in range(250)],
        )
    keys.create(store, "ci", ("service",), None, "ada")
    metricstore.add_second(store, ("hello", 2, int(NOW)), Second(10, 1, 12.5, {}))
    cronstate.last_tick(store, "nightly", NOW - 60)  # creates its row
    assert cronstate.claim(store, "nightly", NOW)
    store.set_resources("Trigger", {"nightly": {"schedule": "0 3 * * *"}})
    deploylog.add(
        store,
        at=NOW,
        actor="ada",
        command="apply",
        source="cli",
        ref=None,
        git_commit="abc",
        git_author="Ada",
        git_subject="first",
        dirty=False,
        preview=False,
        outcome="ok",
    )
    triggerstate.fault(store, "on-order", "boom", 5)


def test_a_live_state_is_copied_whole_and_verified(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "state.db"
    store = connect(source)
    try:
        _fill(store)
        identity, revisions, routes = store.id, store.revisions(), store.routes()
    finally:
        store.close()
    done = fnctl("state", "migrate", "--from", f"sqlite:{source}", "--to", pg_url, "-o", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["verified"] is True and report["problems"] == []
    counts = {t["table"]: (t["source"], t["target"]) for t in report["tables"]}
    assert set(counts) == set(TABLES) and all(s == t > 0 for s, t in counts.values()), counts
    assert counts["invocations"] == (250, 250) and counts["audit"] == (4, 4)  # 3 deploys + the key's creation
    heads = {c["target"]["table"]: c["target"] for c in report["chains"]}
    assert heads["invocations"]["headId"] == 250 and heads["invocations"]["intact"]
    assert [c["source"]["headHash"] for c in report["chains"]] == [c["target"]["headHash"] for c in report["chains"]]

    target = connect(StateLocation(tmp_path / "anchor", pg_url))
    try:
        # the same store (its identity owns the project's containers), and it goes on where the source stood
        assert target.id == identity and target.revisions() == revisions and target.routes() == routes
        assert rolloutstore.add(target, "hello", 2, 3, "canary", "running", {}, NOW) == 2
        target.audit(actor="bob", command="apply", action="route", target="hello", outcome="ok")
    finally:
        target.close()
    verify = fnctl("audit", "verify", "--state", pg_url, cwd=tmp_path)
    assert verify.returncode == 0 and "audit: 5 records, intact" in verify.stdout, verify.stdout + verify.stderr
    left = connect(source)  # the source is left as it was
    try:
        assert left.routes() == routes and left.audit_mark() == 4
    finally:
        left.close()

    again = fnctl("state", "migrate", "--from", f"sqlite:{source}", "--to", pg_url, cwd=tmp_path)
    assert again.returncode != 0 and "already holds a state" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("sqlite:{tmp}/missing.db", "postgresql:///x?host=/nonexistent", "no state store at"),
        ("sqlite:{tmp}/state.db", "{tmp}/other.db", "--to must be a postgresql:// URL"),
        ("postgresql:///a", "postgresql:///b", "--from must name a SQLite state file"),
    ],
)
def test_bad_sources_and_targets_are_bad_input(tmp_path: Path, source: str, target: str, message: str) -> None:
    connect(tmp_path / "state.db").close()
    args = (source.format(tmp=tmp_path), target.format(tmp=tmp_path))
    done = fnctl("state", "migrate", "--from", args[0], "--to", args[1], cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_an_unreachable_target_changes_nothing_and_never_shows_the_password(tmp_path: Path) -> None:
    source = tmp_path / "state.db"
    connect(source).close()
    before = source.read_bytes()
    url = f"postgresql://fn:hunter2secret@/db?host={tmp_path}&port=1"
    done = fnctl("state", "migrate", "--from", f"sqlite:{source}", "--to", url, cwd=tmp_path)
    assert done.returncode != 0 and "cannot connect to PostgreSQL" in done.stderr
    assert "hunter2secret" not in done.stderr + done.stdout and "Traceback" not in done.stderr
    assert source.read_bytes() == before and os.path.exists(source)
