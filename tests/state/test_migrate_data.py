"""`fnctl state migrate` copies the data plane too: a SQLite data file with collections (an indexed one with a
unique index, a plain one), documents in two tenants (inserted, patched, deleted, one by Idempotency-Key) and
an onCommit event, copied into a real PostgreSQL database, verified, then used there as it stood."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fnctl.data.caller import Caller
from fnctl.data.errors import Conflict
from fnctl.data.plane import DataPlane
from fnctl.manifest.filterlang import Always
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore
from fnctl.state.docrecords import DataStoreError, Query
from fnctl.state.doctransfer import copy_documents
from fnctl.state.location import StateLocation
from fnctl.state.store import connect

ACME, GLOBEX = Caller.operator("ada", "acme"), Caller.operator("bob", "globex")
ORDERS = parse_collection(
    "orders", {"indexes": [{"fields": ["number"], "unique": True}, {"fields": ["customer", "total"]}]}
)
NOTES = parse_collection("notes", {})


def fnctl(*args: str, cwd: Path, state: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"FNCTL_STATE": state} if state else {})}
    return subprocess.run(
        [sys.executable, "-m", "fnctl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _fill(location: StateLocation) -> None:
    connect(location).close()
    store = docstore.open_at(location)
    try:
        plane = DataPlane(store, lambda: (), outbox=lambda: {"orders": ("ship",)})
        plane.sync_collections([ORDERS, NOTES], prune=False, force=False)
        for n in range(30):
            caller = ACME if n % 3 else GLOBEX
            plane.insert(caller, "orders", {"number": n, "customer": f"c{n % 4}", "total": n * 1.5}, id=f"o{n}")
        plane.patch(ACME, "orders", "o1", {"total": 99}, if_match=1)
        plane.delete(ACME, "orders", "o2", if_match=1)
        plane.insert(ACME, "notes", {"text": "é ünïcode ✓", "nested": {"a": [1, True, None]}}, idempotency_key="k-1")
    finally:
        store.close()


def _everything(location: StateLocation) -> dict[str, object]:
    store = docstore.open_at(location)
    try:
        by_total = Query("orders", "acme", Always(), (("customer", False), ("total", True), ("id", False)), 100)
        return {
            "docs": {name: list(store.scan(name)) for name in ("orders", "notes")},
            "find": store.find(by_total),
            "changes": list(store.change_chain()),
            "outbox": store.outbox_list(None, None, 1000),
            "idempotent": store.idempotent("acme", "notes", "k-1"),
        }
    finally:
        store.close()


def test_the_data_file_is_copied_with_the_state_and_verified(tmp_path: Path, pg_url: str) -> None:
    source = StateLocation(tmp_path / "state" / "state.db")
    _fill(source)
    before = _everything(source)
    done = fnctl("state", "migrate", "--from", f"sqlite:{source.path}", "--to", pg_url, "-o", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["verified"] is True and report["data"]["verified"] is True, report["problems"]
    counts = {t["table"]: (t["source"], t["target"]) for t in report["data"]["tables"]}
    assert counts["docs_orders"] == (29, 29) and counts["docs_notes"] == (1, 1)
    assert counts["changes"] == (33, 33) and counts["outbox"] == (32, 32) and counts["idempotency"] == (1, 1)
    chain = report["data"]["chain"]
    assert chain["target"]["intact"] and chain["target"]["headHash"] == chain["source"]["headHash"]

    target = StateLocation(tmp_path / "anchor" / "state", pg_url)
    assert _everything(target) == before  # byte for byte: documents, a keyset-ordered find, the change log
    store = docstore.open_at(target)
    try:  # and it goes on where the source stood: the unique index holds, new changes chain on
        plane = DataPlane(store, lambda: ())
        with pytest.raises(Conflict):
            plane.insert(ACME, "orders", {"number": 5}, id="dup")
        plane.insert(ACME, "orders", {"number": 500}, id="o500")
        assert store.last_seq() == 34
    finally:
        store.close()
    verify = fnctl("audit", "verify", "--state", target.to_arg(), cwd=tmp_path)
    assert verify.returncode == 0 and "changes: 34 records, intact" in verify.stdout, verify.stdout + verify.stderr
    (tmp_path / "fnctl.toml").write_text('[project]\nname = "migrated"\n', encoding="utf-8")
    got = fnctl("data", "get", "orders", "o1", "--tenant", "acme", "-o", "json", cwd=tmp_path, state=target.to_arg())
    assert got.returncode == 0 and json.loads(got.stdout)["data"]["total"] == 99, got.stderr


def test_a_state_without_a_data_file_copies_no_data(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "state.db"
    connect(source).close()
    done = fnctl("state", "migrate", "--from", f"sqlite:{source}", "--to", pg_url, "-o", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["data"] is None
    assert not docstore.exists_at(StateLocation(tmp_path / "anchor", pg_url))  # and made no data store there


def test_a_target_that_holds_documents_is_refused_and_left_as_it_was(tmp_path: Path, pg_url: str) -> None:
    source = StateLocation(tmp_path / "state" / "state.db")
    _fill(source)
    target = StateLocation(tmp_path / "anchor" / "state", pg_url)
    occupied = docstore.open_at(target)
    try:
        plane = DataPlane(occupied, lambda: ())
        plane.sync_collections([NOTES], prune=False, force=False)
        plane.insert(ACME, "notes", {"mine": True}, id="kept")
        documents = docstore.open_at(source)
        try:
            with pytest.raises(DataStoreError, match="already holds documents"):
                copy_documents(documents, occupied)
        finally:
            documents.close()
        assert [d.id for d in occupied.scan("notes")] == ["kept"] and occupied.last_seq() == 1
        assert sorted(occupied.collections()) == ["notes"]  # no collection of the source made there
    finally:
        occupied.close()
