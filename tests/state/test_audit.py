"""The tamper-evident audit logs (hash chains), `fnctl audit` and `fnctl audit verify`, and the audit of
state-changing commands that were not audited before (API keys, promote/abort requests).

Real SQLite in tmp_path; the CLI runs as a real `python -m fnctl` process (exit codes through main()).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pgserver import INTEGRITY, RawDb

from fnctl.gateway.audit import AuditLog
from fnctl.state import auditchain, rolloutstore
from fnctl.state.auditlog import AuditFilter, audit_records
from fnctl.state.location import StateLocation
from fnctl.state.migrations import MIGRATIONS
from fnctl.state.migrations import statements as _statements
from fnctl.state.store import Store, connect

NOW = time.time()


def fnctl(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fnctl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )


@pytest.fixture
def state(state_location: StateLocation) -> StateLocation:
    return state_location


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _db(state: StateLocation) -> RawDb:
    return RawDb(state)


def _fill(store: Store) -> None:
    """Five deploy records: two from two hours ago (alice, hello), three now (bob and ci, hello and other)."""
    with store.transaction():
        store.append_chained(
            "audit",
            [
                (NOW - 7200, "alice", "apply", "deploy", "hello", "aaa111", "ok", "revision 1", None, None),
                (NOW - 7100, "alice", "apply", "route", "hello", "aaa111", "ok", "revision 1: 100%", None, None),
            ],
        )
    store.audit(actor="bob", command="rollback", action="quarantine", target="hello", outcome="ok", detail="r2")
    store.audit(actor="ci:bot", command="apply", action="deploy", target="other", outcome="failed")
    store.audit(actor="bob", command="delete", action="delete", target="other", outcome="ok")


def _verify(state: StateLocation | Path, tmp_path: Path, *extra: str) -> tuple[int, dict[str, object]]:
    where = state.to_arg() if isinstance(state, StateLocation) else str(state)
    done = fnctl("audit", "verify", "--state", where, "-o", "json", *extra, cwd=tmp_path)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def _findings(report: dict[str, object]) -> list[tuple[str, str, int | None]]:
    chains = report["chains"]
    assert isinstance(chains, list)
    return [(f["table"], f["problem"], f["record"]) for c in chains for f in c["findings"]]


# ---- the chain ----


def test_an_intact_log_verifies_with_exit_0_and_shows_the_heads(
    store: Store, state: StateLocation, tmp_path: Path
) -> None:
    _fill(store)
    code, report = _verify(state, tmp_path)
    assert code == 0 and report["intact"] is True, report
    audit = next(c for c in report["chains"] if c["table"] == "audit")  # type: ignore[attr-defined]
    assert audit["records"] == 5 and audit["headId"] == 5
    assert audit["headHash"] == audit_records(store, AuditFilter(), limit=1)[0].hash
    text = fnctl("audit", "verify", "--state", state.to_arg(), cwd=tmp_path)
    assert text.returncode == 0 and "audit: 5 records, intact; head 5 " in text.stdout
    assert f"--anchor {audit['headHash']}" in text.stderr  # how to keep an anchor outside the store


def test_insert_or_replace_is_refused_and_after_drop_trigger_is_detected(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    store = connect(state)
    _fill(store)
    store.close()
    raw = _raw(state)
    replace = (
        "INSERT OR REPLACE INTO audit SELECT id, at, 'mallory', command, action, target, git_commit, outcome, "
        "detail, git_author, git_subject, prev_hash, hash FROM audit WHERE id = 3"
    )
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute(replace)
    raw.execute("DROP TRIGGER audit_next_id")
    raw.execute(replace)
    assert raw.execute("SELECT actor FROM audit WHERE id = 3").fetchone() == ("mallory",)
    code, report = _verify(state, tmp_path)
    assert code == 1 and report["intact"] is False
    assert _findings(report) == [("audit", "changed", 3)]


def test_an_upsert_over_a_record_is_refused_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL's INSERT OR REPLACE: `ON CONFLICT DO UPDATE` over an existing record."""
    state = StateLocation(tmp_path / "anchor", pg_url)
    store = connect(state)
    _fill(store)
    store.close()
    raw = _db(state)
    with pytest.raises(INTEGRITY, match="append-only"):
        raw.execute(
            "INSERT INTO audit SELECT id, at, 'mallory', command, action, target, git_commit, outcome, detail, "
            "git_author, git_subject, prev_hash, hash FROM audit WHERE id = 3 "
            "ON CONFLICT (id) DO UPDATE SET actor = excluded.actor"
        )
    with pytest.raises(INTEGRITY, match="append-only"):
        raw.execute("TRUNCATE audit")
    assert raw.execute("SELECT actor FROM audit WHERE id = 3") == [("bob",)]
    raw.close()


def test_a_record_that_does_not_take_an_id_above_the_head_or_has_no_hash_is_refused(
    store: Store, state: StateLocation
) -> None:
    """The chains' insert guard (on PostgreSQL one check per statement since schema step 9): a record slipped
    in below the head, or appended without its hash, is refused -- alone or among good rows."""
    _fill(store)
    columns = "id, at, actor, command, action, target, git_commit, outcome, detail, prev_hash, hash"
    raw = _db(state)
    try:
        for values in ("(0, 1.0, 'm', 'c', 'a', 't', NULL, 'ok', NULL, 'x', 'y')",
                       "(6, 1.0, 'm', 'c', 'a', 't', NULL, 'ok', NULL, 'x', NULL)",
                       "(7, 1.0, 'm', 'c', 'a', 't', NULL, 'ok', NULL, 'x', 'y'), "
                       "(-1, 1.0, 'm', 'c', 'a', 't', NULL, 'ok', NULL, 'x', 'y')"):  # fmt: skip
            with pytest.raises(INTEGRITY, match="append-only"):
                raw.execute(f"INSERT INTO audit ({columns}) VALUES {values}")
        assert raw.execute("SELECT COUNT(*), MAX(id) FROM audit") == [(5, 5)]
        raw.execute(f"INSERT INTO audit ({columns}) VALUES (9, 1.0, 'm', 'c', 'a', 't', NULL, 'ok', NULL, 'x', 'y')")
    finally:
        raw.close()


def test_an_update_after_drop_trigger_is_detected_and_named(store: Store, state: StateLocation, tmp_path: Path) -> None:
    _fill(store)
    raw = _db(state)
    raw.drop_trigger("audit", "audit_no_update")
    raw.execute("UPDATE audit SET outcome = 'ok' WHERE id = 4")
    code, report = _verify(state, tmp_path)
    assert code == 1 and _findings(report) == [("audit", "changed", 4)]
    text = fnctl("audit", "verify", "--state", state.to_arg(), cwd=tmp_path)
    assert text.returncode == 1 and "audit record 4: changed" in text.stdout


def test_a_removed_record_is_detected_in_the_middle_and_at_the_end(
    store: Store, state: StateLocation, tmp_path: Path
) -> None:
    _fill(store)
    raw = _db(state)
    raw.drop_trigger("audit", "audit_no_delete")
    raw.execute("DELETE FROM audit WHERE id = 2")
    code, report = _verify(state, tmp_path)
    assert code == 1 and _findings(report) == [("audit", "removed", 3)]
    raw.execute("DELETE FROM audit WHERE id = 5")  # the tail: the head marker still names record 5
    code, report = _verify(state, tmp_path)
    assert code == 1 and ("audit", "truncated", 5) in _findings(report)


def test_two_swapped_records_are_detected(store: Store, state: StateLocation, tmp_path: Path) -> None:
    _fill(store)
    raw = _db(state)
    for trigger in ("audit_no_update", "audit_no_delete", "audit_next_id"):
        raw.drop_trigger("audit", trigger)
    # records 2 and 3 exchange places, each with its own links: their content moves to the other's id
    raw.execute("UPDATE audit SET id = -2 WHERE id = 2")
    raw.execute("UPDATE audit SET id = 2 WHERE id = 3")
    raw.execute("UPDATE audit SET id = 3 WHERE id = -2")
    code, report = _verify(state, tmp_path)
    assert code == 1
    assert {(t, r) for t, _, r in _findings(report)} >= {("audit", 2), ("audit", 3)}


def test_a_rewritten_chain_passes_alone_but_fails_against_an_anchor(tmp_path: Path) -> None:
    """What an attacker who can write the store can hide: a chain recomputed whole (head marker too) is
    consistent; only a head hash recorded outside the store shows it (documented in docs/audit.md)."""
    state = tmp_path / "state.db"
    store = connect(state)
    _fill(store)
    anchor = audit_records(store, AuditFilter(), limit=1)[0].hash
    assert anchor is not None
    raw = _raw(state)
    for trigger in ("audit_no_update", "audit_no_delete", "audit_next_id"):
        raw.execute(f"DROP TRIGGER {trigger}")
    raw.execute("DELETE FROM audit WHERE id = 3")
    rows = raw.execute(
        "SELECT id, at, actor, command, action, target, git_commit, outcome, detail, git_author, "
        "git_subject FROM audit ORDER BY id"
    ).fetchall()
    raw.execute("DELETE FROM audit")
    renumbered = [auditchain.normalise("audit", (n, *row[1:])) for n, row in enumerate(rows, 1)]
    linked = auditchain.link("audit", renumbered, auditchain.GENESIS)
    raw.executemany(
        "INSERT INTO audit (id, at, actor, command, action, target, git_commit, outcome, detail, "
        "git_author, git_subject, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        linked,
    )
    raw.execute("UPDATE settings SET value = ? WHERE key = 'audit-head:audit'", (f"{len(linked)} {linked[-1][-1]}",))
    assert _verify(state, tmp_path)[0] == 0  # the limit of a chain kept beside what it protects
    code, report = _verify(state, tmp_path, "--anchor", anchor)
    assert code == 1 and report["anchors"][0]["problem"] == "anchor"  # type: ignore[index]
    assert _verify(state, tmp_path, "--anchor", str(linked[1][-1]))[0] == 0  # an anchor still in the chain


def test_a_bad_anchor_or_a_missing_store_is_bad_input(tmp_path: Path) -> None:
    state = tmp_path / "state" / "state.db"
    missing = fnctl("audit", "verify", "--state", str(state), cwd=tmp_path)
    assert missing.returncode == 2 and "no state store" in missing.stderr and "Traceback" not in missing.stderr
    connect(state).close()
    bad = fnctl("audit", "verify", "--state", str(state), "--anchor", "nothex", cwd=tmp_path)
    assert bad.returncode == 2 and "64 hex digits" in bad.stderr


def test_the_invocation_audit_is_a_chain_of_its_own(store: Store, state: StateLocation, tmp_path: Path) -> None:
    log = AuditLog(state, interval=0.01)
    try:
        for n in range(120):  # several INSERT chunks in one batch
            log.record(
                request_id=f"r{n}",
                principal="key:abc" if n % 2 else None,
                function="hello",
                revision=1,
                outcome="ok",
                status=200,
                duration_ms=n / 3,
                source="127.0.0.1",
            )
        assert log.flush()
    finally:
        log.close()
    code, report = _verify(state, tmp_path)
    invocations = next(c for c in report["chains"] if c["table"] == "invocations")  # type: ignore[attr-defined]
    assert code == 0 and invocations["records"] == 120 and invocations["intact"]
    raw = _db(state)
    raw.drop_trigger("invocations", "invocations_no_update")
    raw.execute("UPDATE invocations SET principal = 'key:admin' WHERE id = 57")
    code, report = _verify(state, tmp_path)
    assert code == 1 and _findings(report) == [("invocations", "changed", 57)]


def test_existing_records_are_chained_by_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    raw = _raw(path)
    for number in range(5):  # a store as fnctl left it before the chains (schema 5)
        for statement in _statements(str(MIGRATIONS[number])):
            raw.execute(statement)
    raw.execute("PRAGMA user_version = 5")
    raw.execute(
        "INSERT INTO audit (at, actor, command, action, target, outcome) VALUES (1.0, 'ada', 'apply', "
        "'deploy', 'hello', 'ok'), (2, 'ada', 'apply', 'route', 'hello', 'ok')"
    )
    raw.execute(
        "INSERT INTO invocations (at, request_id, function, outcome, status, duration_ms) "
        "VALUES (3.0, 'r1', 'hello', 'ok', 200, 4)"
    )
    raw.close()
    upgraded = connect(path)
    try:
        upgraded.audit(actor="bob", command="keys create", action="create key", target="k", outcome="ok")
        entries = audit_records(upgraded, AuditFilter())
        assert [e.id for e in entries] == [3, 2, 1] and all(e.hash for e in entries)
    finally:
        upgraded.close()
    code, report = _verify(path, tmp_path)
    assert code == 0 and report["intact"], report
    assert [c["records"] for c in report["chains"]] == [3, 1]  # type: ignore[attr-defined]


# ---- fnctl audit ----


def _listed(state: StateLocation, tmp_path: Path, *args: str) -> list[dict[str, object]]:
    done = fnctl("audit", "--state", state.to_arg(), "-o", "json", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert isinstance(listed, list)
    return listed


def test_fnctl_audit_lists_and_filters(store: Store, state: StateLocation, tmp_path: Path) -> None:
    _fill(store)
    assert [r["id"] for r in _listed(state, tmp_path)] == [5, 4, 3, 2, 1]  # newest first
    assert [r["id"] for r in _listed(state, tmp_path, "--since", "1h")] == [5, 4, 3]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - 7150))
    assert [r["id"] for r in _listed(state, tmp_path, "--since", iso)] == [5, 4, 3, 2]
    assert [r["id"] for r in _listed(state, tmp_path, "--function", "other")] == [5, 4]
    assert [r["id"] for r in _listed(state, tmp_path, "--actor", "bob", "--function", "hello")] == [3]
    assert [r["id"] for r in _listed(state, tmp_path, "--limit", "2")] == [5, 4]
    first = _listed(state, tmp_path, "--actor", "alice")[-1]
    assert {k: first[k] for k in ("actor", "command", "action", "target", "outcome", "gitCommit")} == {
        "actor": "alice",
        "command": "apply",
        "action": "deploy",
        "target": "hello",
        "outcome": "ok",
        "gitCommit": "aaa111",
    }
    plain = fnctl("audit", "--state", state.to_arg(), "--actor", "ci:bot", cwd=tmp_path)
    assert (
        plain.returncode == 0
        and plain.stdout.count("\n") == 1
        and "\tci:bot\tapply\tdeploy\tother\tfailed" in plain.stdout
    )
    bad = fnctl("audit", "--state", state.to_arg(), "--since", "yesterday", cwd=tmp_path)
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr


def test_fnctl_audit_lists_invocations_by_principal(store: Store, state: StateLocation, tmp_path: Path) -> None:
    with store.transaction():
        store.append_chained(
            "invocations",
            [
                (NOW - 10, "r1", "key:abc", "hello", 1, None, "ok", 200, 1.5, "127.0.0.1"),
                (NOW - 5, "r2", None, "hello", None, None, "unauthenticated", 401, 0.1, "127.0.0.1"),
            ],
        )
    listed = _listed(state, tmp_path, "--invocations", "--actor", "key:abc")
    assert [(r["requestId"], r["status"], r["principal"]) for r in listed] == [("r1", 200, "key:abc")]
    assert [r["requestId"] for r in _listed(state, tmp_path, "--invocations", "--function", "hello")] == ["r2", "r1"]


def test_fnctl_audit_help_has_examples(tmp_path: Path) -> None:
    done = fnctl("audit", "--help", cwd=tmp_path)
    assert done.returncode == 0 and "fnctl audit --since 1h" in done.stdout and "verify" in done.stdout


# ---- commands that change state are audited with their actor ----


def test_keys_create_and_revoke_are_audited_with_their_actor_and_never_the_key(
    state: StateLocation, tmp_path: Path
) -> None:
    created = fnctl(
        "keys",
        "create",
        "billing",
        "--role",
        "service",
        "--state",
        state.to_arg(),
        "-o",
        "json",
        cwd=tmp_path,
        FNCTL_ACTOR="alice",
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    revoked = fnctl("keys", "revoke", key["id"], "--state", state.to_arg(), cwd=tmp_path, FNCTL_ACTOR="bob")
    assert revoked.returncode == 0, revoked.stderr
    again = fnctl("keys", "revoke", key["id"], "--state", state.to_arg(), cwd=tmp_path, FNCTL_ACTOR="carol")
    assert again.returncode == 0, again.stderr
    listed = _listed(state, tmp_path, "--function", key["id"])
    assert [(r["actor"], r["command"], r["action"], r["outcome"]) for r in reversed(listed)] == [
        ("alice", "keys create", "create key", "ok"),
        ("bob", "keys revoke", "revoke key", "ok"),
        ("carol", "keys revoke", "revoke key", "unchanged"),
    ]
    raw = _db(state)
    dump = raw.dump()
    raw.close()
    secret = key["key"].split("_", 2)[2]
    assert secret not in dump and "billing" in dump  # the name is audited, the secret nowhere in the store
    assert fnctl("audit", "verify", "--state", state.to_arg(), cwd=tmp_path).returncode == 0


def test_a_promote_or_abort_request_is_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fnctl promote` / `abort` record their request with the requester (rollouts.request), before the
    driver acts on it (its routing changes are audited by the controller)."""
    import fnctl.commands.rollouts as rollouts
    from fnctl.deploy.session import Options
    from fnctl.manifest.project import load_project
    from fnctl.rollout.machine import EventKind

    state = tmp_path / "state.db"
    store = connect(state)
    try:
        rollout = rolloutstore.add(store, "hello", 1, 2, "canary", "paused", {}, NOW)
    finally:
        store.close()
    monkeypatch.setenv("FNCTL_ACTOR", "dave")
    # nothing drives the rollout here (no instances): only the request and its record matter
    rollouts.request(
        load_project(tmp_path),
        Options(state=StateLocation(state)),
        "hello",
        EventKind.ABORT_REQUESTED,
        {},
        wait=False,
        timeout=0.01,
        on_event=lambda *_: None,
        on_tick=lambda *_: None,
    )
    store = connect(state)
    try:
        entries = audit_records(store, AuditFilter(target="hello"))
    finally:
        store.close()
    (entry,) = [e for e in entries if e.action == "abort requested"]  # the driver may have acted and audited too
    assert (entry.actor, entry.command) == ("dave", "abort")
    assert f"rollout {rollout}" in (entry.detail or "")
