"""`fnctl audit verify` checks the data plane's change log (the audit of every data write, hash-chained in the
data file beside the state store): intact → exit 0 and its head shown; a change edited, removed or reordered,
or the tail cut → exit 1 naming the record; an anchor from the change log is found. On both backends (real
SQLite files in tmp_path, a real PostgreSQL database), the CLI as a real `python -m fnctl` process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from docbackend import raw as raw_connection
from test_audit import _findings, _verify, fnctl

from fnctl.data.caller import Caller
from fnctl.data.plane import DataPlane
from fnctl.manifest.model import parse_collection
from fnctl.state import auditchain, docstore
from fnctl.state.docconn import DocConn
from fnctl.state.location import StateLocation
from fnctl.state.store import connect

OPERATOR = Caller.operator("alice")


@pytest.fixture
def state(state_location: StateLocation) -> Iterator[StateLocation]:
    connect(state_location).close()
    yield state_location


def _write_changes(state: StateLocation) -> None:
    """Five changes: four inserts and a patch."""
    documents = docstore.open_at(state)
    try:
        plane = DataPlane(documents, lambda: ())
        plane.sync_collections([parse_collection("notes", {"schema": {"type": "object"}})], prune=False, force=False)
        for i in range(4):
            plane.insert(OPERATOR, "notes", {"n": i}, id=f"n{i}")
        plane.patch(OPERATOR, "notes", "n0", {"n": 10}, if_match=1)
    finally:
        documents.close()


def _raw(state: StateLocation) -> DocConn:
    documents = docstore.open_at(state)
    raw = raw_connection(documents)
    documents.close()
    if state.url is None:
        for (name,) in raw.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'changes'"
        ).fetchall():
            raw.execute(f"DROP TRIGGER {name}")  # what someone who can write the file can do
    else:  # what someone with the database's login can do
        for (name,) in raw.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'changes'::regclass AND NOT tgisinternal"
        ).fetchall():
            raw.execute(f"DROP TRIGGER {name} ON changes")
    return raw


def _changes(report: dict[str, object]) -> dict[str, object]:
    chains = report["chains"]
    assert isinstance(chains, list)
    return next(c for c in chains if c["table"] == "changes")


def test_without_a_data_file_only_the_audit_chains_are_checked(state: StateLocation, tmp_path: Path) -> None:
    code, report = _verify(state, tmp_path)
    assert code == 0 and [c["table"] for c in report["chains"]] == ["audit", "invocations"]  # type: ignore[attr-defined]
    assert not docstore.exists_at(state)  # verify never creates the data store


def test_an_intact_change_log_verifies_with_its_head(state: StateLocation, tmp_path: Path) -> None:
    _write_changes(state)
    code, report = _verify(state, tmp_path)
    changes = _changes(report)
    assert code == 0 and report["intact"] is True and changes["records"] == 5 and changes["headId"] == 5, report
    text = fnctl("audit", "verify", "--state", state.to_arg(), cwd=tmp_path)
    assert text.returncode == 0 and "changes: 5 records, intact; head 5 " in text.stdout, text.stdout
    assert f"--anchor {changes['headHash']}" in text.stderr
    assert _verify(state, tmp_path, "--anchor", str(changes["headHash"]))[0] == 0  # an anchor of the change log


def test_a_changed_change_is_detected_and_named(state: StateLocation, tmp_path: Path) -> None:
    _write_changes(state)
    raw = _raw(state)
    after = json.loads(raw.execute("SELECT after FROM changes WHERE seq = 3").fetchone()[0])
    raw.execute("UPDATE changes SET after = ? WHERE seq = 3", (json.dumps({**after, "data": {"n": 999}}),))
    raw.execute("UPDATE changes SET actor = 'operator:mallory' WHERE seq = 4")
    code, report = _verify(state, tmp_path)
    assert code == 1 and report["intact"] is False
    assert _findings(report) == [("changes", "changed", 3), ("changes", "changed", 4)]
    text = fnctl("audit", "verify", "--state", state.to_arg(), cwd=tmp_path)
    assert text.returncode == 1 and "changes record 3: changed" in text.stdout and "TAMPERED" in text.stdout


def test_a_removed_change_is_detected_in_the_middle_and_at_the_end(state: StateLocation, tmp_path: Path) -> None:
    _write_changes(state)
    raw = _raw(state)
    raw.execute("DELETE FROM changes WHERE seq = 2")
    code, report = _verify(state, tmp_path)
    assert code == 1 and _findings(report) == [("changes", "removed", 3)]
    raw.execute("DELETE FROM changes WHERE seq = 5")  # the tail: the head marker still names change 5
    code, report = _verify(state, tmp_path)
    assert code == 1 and ("changes", "truncated", 5) in _findings(report)


def test_reordered_changes_are_detected(state: StateLocation, tmp_path: Path) -> None:
    _write_changes(state)
    raw = _raw(state)
    # changes 2 and 3 exchange places, each with its own links: their content moves to the other's seq
    raw.execute("UPDATE changes SET seq = -2 WHERE seq = 2")
    raw.execute("UPDATE changes SET seq = 2 WHERE seq = 3")
    raw.execute("UPDATE changes SET seq = 3 WHERE seq = -2")
    code, report = _verify(state, tmp_path)
    assert code == 1
    assert {(t, r) for t, _, r in _findings(report)} >= {("changes", 2), ("changes", 3)}


def test_normalise_converts_whatever_is_not_of_its_column_type_after_rows_that_were() -> None:
    """`normalise` returns a record whose fields are each of their column's type as it is (a fast path, keyed
    by the fields' types and the chain): a record of the same fields in other types is still converted."""
    exact = (7, 1.5, "r1", None, "fn", 2, None, "ok", 200, 0.25, None)
    for _ in range(2):  # the second time by the fast path
        assert auditchain.normalise("invocations", exact) == exact
    loose = (7, 1, "r1", None, "fn", True, None, "ok", 200, 1, None)  # an int `at` and `duration_ms`, a bool
    normal = auditchain.normalise("invocations", loose)
    assert normal == (7, 1.0, "r1", None, "fn", 1, None, "ok", 200, 1.0, None)
    assert [type(v) for v in normal] == [int, float, str, type(None), str, int, type(None), str, int, float, type(None)]
    # the same types are no fast path in a chain whose columns differ (the deploy audit's are text)
    assert auditchain.normalise("audit", exact) == (7, 1.5, "r1", None, "fn", "2", None, "ok", "200", "0.25", None)
    with pytest.raises(ValueError):
        auditchain.normalise("invocations", exact[:-1])
