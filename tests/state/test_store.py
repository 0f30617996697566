"""The state store (real SQLite in a temporary folder) and the store's lock (real processes)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pgserver import INTEGRITY, raw_execute

from fnctl.deploy.lock import LockTimeout, held
from fnctl.errors import FnctlError
from fnctl.manifest.project import load_project
from fnctl.state.auditlog import AuditFilter, audit_records
from fnctl.state.location import StateLocation, default_path, locate, parse
from fnctl.state.migrations import MIGRATIONS
from fnctl.state.revisions import InstanceRow, InstanceState, Revision, RevisionStatus
from fnctl.state.store import Store, StoreError, connect


def _revision(number: int = 1, status: RevisionStatus = RevisionStatus.PENDING, image: str = "") -> Revision:
    return Revision(
        "hello",
        number,
        f"hash{number}",
        {"env": {"A": "1"}},
        image,
        "abc123",
        "Ada <ada@example.org>",
        1_700_000_000.0 + number,
        "ada",
        status,
        None,
    )


def _raw(store: Store) -> sqlite3.Connection:
    return sqlite3.connect(store.path, isolation_level=None)


# ---- the database ----


def test_a_new_store_is_wal_and_fully_migrated(tmp_path: Path) -> None:
    store = connect(tmp_path / "state" / "state.db")
    raw = _raw(store)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"revisions", "routes", "instances", "rollouts", "audit", "settings"} <= tables
    assert oct(store.path.parent.stat().st_mode & 0o777) == "0o700"
    store.close()


def test_a_new_store_opened_by_several_processes_at_once_opens_in_each(tmp_path: Path) -> None:
    # The switch to WAL is not covered by the busy timeout: before it retried, about one fresh file in 25 opened
    # by three at once refused one of them with "database is locked" (a gateway beating while its test opened
    # the store failed CI that way). 150 fresh files make a miss near certain on the old code.
    refused: list[str] = []

    def open_and_close(path: Path) -> None:
        try:
            connect(path).close()
        except StoreError as exc:
            refused.append(str(exc))

    for number in range(150):
        path = tmp_path / str(number) / "state.db"
        openers = [threading.Thread(target=open_and_close, args=(path,)) for _ in range(3)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
    assert refused == []


def test_a_new_postgresql_store_is_fully_migrated_to_the_same_version(pg_url: str, tmp_path: Path) -> None:
    store = connect(StateLocation(tmp_path / "anchor", pg_url))
    try:
        assert store.raw().query("SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
        tables = {r[0] for r in store.raw().query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"revisions", "routes", "instances", "rollouts", "audit", "settings", "invocations"} <= tables
    finally:
        store.close()
    connect(StateLocation(tmp_path / "anchor", pg_url)).close()  # migrating again is a no-op
    raw_execute(
        StateLocation(tmp_path / "anchor", pg_url), f"UPDATE schema_version SET version = {len(MIGRATIONS) + 5}"
    )
    with pytest.raises(StoreError, match="newer than this fnctl knows.*upgrade fnctl"):
        connect(StateLocation(tmp_path / "anchor", pg_url))


def test_migrations_apply_in_order_to_an_older_store(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path, isolation_level=None)
    first = MIGRATIONS[0]
    assert isinstance(first, str)  # the first migrations are SQL scripts; later ones may be functions
    raw.executescript(first)
    raw.execute("PRAGMA user_version = 1")
    raw.execute("INSERT INTO revisions VALUES ('hello', 1, 'h', '{}', 'img', NULL, NULL, 1.0, 'ada', 'ready', NULL)")
    raw.close()
    upgraded = connect(path)
    try:
        assert upgraded.revision("hello", 1) is not None  # data kept
        assert _raw(upgraded).execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            _raw(upgraded).execute("UPDATE revisions SET spec = '{\"x\": 1}'")
    finally:
        upgraded.close()
    connect(path).close()  # migrating again is a no-op


def test_a_store_newer_than_this_fnctl_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    raw.close()
    with pytest.raises(StoreError, match="newer than this fnctl knows.*upgrade fnctl"):
        connect(path)


def test_an_unusable_location_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot create the state store"):
        connect(tmp_path / "file" / "state.db")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="cannot open the state store"):
        connect(tmp_path / "dir.db")


def test_revisions_keep_everything_they_were_created_with(store: Store) -> None:
    store.add_revision(_revision())
    store.set_revision_image("hello", 1, "fnctl/p-hello:1")
    store.set_revision_image("hello", 1, "fnctl/p-hello:other")  # set once: ignored afterwards
    store.set_revision_status("hello", 1, RevisionStatus.FAILED, "healthCheck[0] failed")
    revision = store.revision("hello", 1)
    assert revision == Revision(
        "hello",
        1,
        "hash1",
        {"env": {"A": "1"}},
        "fnctl/p-hello:1",
        "abc123",
        "Ada <ada@example.org>",
        1_700_000_001.0,
        "ada",
        RevisionStatus.FAILED,
        "healthCheck[0] failed",
    )
    assert store.next_revision_number("hello") == 2 and store.next_revision_number("other") == 1
    for statement in (
        "UPDATE revisions SET spec_hash = 'x'",
        "UPDATE revisions SET git_commit = 'x'",
        "UPDATE revisions SET image = 'x'",
        "DELETE FROM revisions",
    ):
        with pytest.raises(INTEGRITY):
            raw_execute(store.location, statement)
    with pytest.raises(StoreError, match="UNIQUE|duplicate key"):  # (function, number) names one revision forever
        store.add_revision(_revision())


def test_the_audit_log_is_append_only(store: Store) -> None:
    store.audit(
        actor="ada", command="apply", action="route", target="hello", outcome="ok", git_commit="abc", detail="r1=100%"
    )
    store.audit(actor="bob", command="rollback", action="quarantine", target="hello", outcome="ok")
    entries = audit_records(store, AuditFilter(target="hello"))
    assert [(e.actor, e.command, e.action, e.outcome, e.git_commit) for e in entries] == [
        ("bob", "rollback", "quarantine", "ok", None),
        ("ada", "apply", "route", "ok", "abc"),
    ]
    assert entries[0].at >= entries[1].at > 0
    for statement in ("UPDATE audit SET outcome = 'failed'", "DELETE FROM audit"):
        with pytest.raises(INTEGRITY, match="append-only"):
            raw_execute(store.location, statement)
    assert len(audit_records(store, AuditFilter())) == 2


def test_routes_change_atomically_and_must_sum_to_100(store: Store) -> None:
    store.set_route("hello", {1: 100})
    store.set_route("hello", {1: 90, 2: 10})
    assert store.routes() == {"hello": {1: 90, 2: 10}}
    with pytest.raises(StoreError, match="must sum to 100"):
        store.set_route("hello", {2: 50})
    store.delete_route("hello")
    assert store.routes() == {}


def test_instances(store: Store) -> None:
    store.add_instance(InstanceRow("i1", "hello", 1, None, "/run/fnctl/i1", InstanceState.STARTING, 1.0))
    store.update_instance("i1", state=InstanceState.READY, container_id="c1")
    store.update_instance("i1", state=InstanceState.STOPPING)  # keeps the container ID
    assert store.instances("hello") == [
        InstanceRow("i1", "hello", 1, "c1", "/run/fnctl/i1", InstanceState.STOPPING, 1.0)
    ]
    store.remove_instance("i1")
    assert store.instances() == []


def test_a_transaction_lands_whole_or_not_at_all(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.add_revision(_revision())
        store.set_route("hello", {1: 100})
        raise RuntimeError("killed half-way")
    assert store.revisions() == [] and store.routes() == {}
    with store.transaction():
        store.add_revision(_revision())
        store.set_route("hello", {1: 100})
    assert len(store.revisions()) == 1 and store.routes() == {"hello": {1: 100}}


def test_settings_and_identity_are_created_once(store: Store, tmp_path: Path) -> None:
    assert store.setting("salt", "first") == "first"
    assert store.setting("salt", "second") == "first"
    other = connect(store.location)
    try:
        assert other.id == store.id and len(store.id) == 16
    finally:
        other.close()
    fresh = connect(tmp_path / "another.db")
    try:
        assert fresh.id != store.id
    finally:
        fresh.close()


# ---- where the store lives ----


def test_state_location_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "fnctl.toml").write_text('[project]\nname = "proj"\n[state]\npath = "var/state.db"\n')
    monkeypatch.delenv("FNCTL_STATE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    project = load_project(root)
    assert locate(project, None) == StateLocation(root / "var" / "state.db")  # fnctl.toml
    monkeypatch.setenv("FNCTL_STATE", str(tmp_path / "env.db"))
    assert locate(project, None) == StateLocation(tmp_path / "env.db")  # $FNCTL_STATE beats fnctl.toml
    flag = StateLocation(tmp_path / "flag.db")
    assert locate(project, flag) == flag  # --state beats both
    monkeypatch.delenv("FNCTL_STATE")
    (root / "fnctl.toml").write_text('[project]\nname = "proj"\n')
    assert locate(load_project(root), None) == StateLocation(tmp_path / "xdg" / "fnctl" / "proj" / "state.db")
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_path("proj") == Path.home() / ".local" / "state" / "fnctl" / "proj" / "state.db"


def test_a_postgresql_url_selects_postgresql_wherever_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql://fn:s3cret@db.example/state"
    root = tmp_path / "proj"
    root.mkdir()
    (root / "fnctl.toml").write_text(f'[project]\nname = "proj"\n[state]\nurl = "{url}"\n')
    monkeypatch.delenv("FNCTL_STATE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    from_toml = locate(load_project(root), None)
    assert from_toml.url == url and from_toml.is_postgres
    # its host-local files (lock, key stamp) live under the state home, named without the password
    assert from_toml.path.is_relative_to(tmp_path / "xdg" / "fnctl" / "postgresql")
    assert "s3cret" not in str(from_toml) and "s3cret" not in str(from_toml.path)
    assert str(from_toml) == "postgresql://fn:***@db.example/state"
    monkeypatch.setenv("FNCTL_STATE", "postgres:///other?host=/run/pg")
    assert locate(load_project(root), None).url == "postgres:///other?host=/run/pg"  # the environment first
    flag = parse(url + "#" + str(tmp_path / "anchor"))  # what a child process is handed (to_arg)
    assert flag == StateLocation(tmp_path / "anchor", url) and parse(flag.to_arg()) == flag
    assert locate(load_project(root), flag) == flag
    assert not parse(str(tmp_path / "a.db")).is_postgres  # a path keeps meaning SQLite
    (root / "fnctl.toml").write_text('[project]\nname = "proj"\n[state]\nurl = "mysql://x"\n')
    with pytest.raises(FnctlError, match="state.url"):
        load_project(root)


# ---- the lock ----

_HOLDER = """
import os, sys, time
from pathlib import Path
from fnctl.deploy.lock import held
from fnctl.state.location import StateLocation
with held(StateLocation(Path(sys.argv[1])), 5, "fnctl apply (test holder)"):
    print("held", flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.02)
    Path(sys.argv[3]).touch()
"""


def _holder(store_path: Path, release: Path, releasing: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(store_path), str(release), str(releasing)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_second_holder_times_out_naming_the_first(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    holder = _holder(path, tmp_path / "release", tmp_path / "releasing")
    try:
        with pytest.raises(LockTimeout) as caught, held(StateLocation(path), 0.2, "fnctl apply"):
            pass
        message = caught.value.message
        assert f"pid {holder.pid} on {socket.gethostname()}" in message
        assert "'fnctl apply (test holder)'" in message and "since " in message and "--lock-timeout" in message
    finally:
        (tmp_path / "release").touch()
        holder.wait(timeout=30)


def test_a_waiter_gets_the_lock_when_the_holder_releases_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    holder = _holder(path, tmp_path / "release", tmp_path / "releasing")
    acquired = threading.Event()
    saw_release: list[bool] = []

    def wait_for_lock() -> None:
        with held(StateLocation(path), 60, "fnctl apply (waiter)"):
            saw_release.append((tmp_path / "releasing").exists())
            acquired.set()

    waiter = threading.Thread(target=wait_for_lock)
    waiter.start()
    (tmp_path / "release").touch()
    assert acquired.wait(timeout=60), "the waiter never got the lock"
    waiter.join(timeout=30)
    holder.wait(timeout=30)
    assert saw_release == [True], "the waiter got the lock while the holder still had it"


def test_a_holder_killed_with_sigkill_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    holder = _holder(path, tmp_path / "never", tmp_path / "releasing")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert "test holder" in (tmp_path / "state.db.lock").read_text()  # its description is left behind...
    with held(StateLocation(path), 5, "fnctl apply (next)"):  # ...but nothing holds the lock
        assert "fnctl apply (next)" in (tmp_path / "state.db.lock").read_text()
    assert (tmp_path / "state.db.lock").read_text() == ""
