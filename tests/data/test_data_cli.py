"""`fnctl data ...` as real processes on a real data store (a SQLite file, then PostgreSQL) (collections created through DataPlane.sync_collections,
what `apply` calls; no engine needed), including every bad-input case: each must say why and write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fnctl.data.plane import DataPlane
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore
from fnctl.state.docrecords import ChangeRow
from fnctl.state.location import StateLocation
from fnctl.state.store import connect

SCHEMA = {
    "type": "object",
    "required": ["customer"],
    "properties": {
        "customer": {"type": "string"},
        "total": {"type": "number", "minimum": 0},
        "status": {"type": "string"},
    },
}


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Project:
    def __init__(self, root: Path, location: StateLocation | None = None) -> None:
        self.root = root
        self.location = location or StateLocation(root / "state" / "state.db")
        self.state = self.location.path
        (root / "fnctl.toml").write_text('[project]\nname = "datacli"\n', encoding="utf-8")

    def fnctl(self, *args: str, stdin: str | None = None) -> Run:
        env = {**os.environ, "FNCTL_STATE": self.location.to_arg(), "NO_COLOR": "1"}
        done = subprocess.run(
            [sys.executable, "-m", "fnctl", *args],
            cwd=self.root,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, stdin: str | None = None) -> Run:
        run = self.fnctl(*args, stdin=stdin)
        assert run.code == 0, f"fnctl {' '.join(args)}: exit {run.code}\n{run.out}\n{run.err}"
        return run

    def count(self, collection: str = "orders") -> int:
        store = docstore.open_at(self.location)
        try:
            return store.count(collection)
        finally:
            store.close()

    def changes(self) -> list[ChangeRow]:
        store = docstore.open_at(self.location)
        try:
            return store.changes(0, "", ["orders"], 1000) + store.changes(0, "acme", ["orders"], 1000)
        finally:
            store.close()


@pytest.fixture
def project(tmp_path: Path, state_location: StateLocation) -> Iterator[Project]:
    """A project on each backend in turn (the state and its data: SQLite files, or one PostgreSQL database)."""
    proj = Project(tmp_path, state_location)
    proj.state.parent.mkdir(exist_ok=True)
    connect(proj.location).close()
    store = docstore.open_at(proj.location)
    spec = {"schema": SCHEMA, "indexes": [{"fields": ["customer"]}, {"fields": ["total"]}]}
    DataPlane(store, lambda: ()).sync_collections([parse_collection("orders", spec)], prune=False, force=False)
    store.close()
    yield proj


def test_put_get_find_patch_rm_round_trip(project: Project) -> None:
    made = project.ok("data", "put", "orders", "o-1", "-d", '{"customer": "c1", "total": 5}', "-o", "json").json()
    assert (made["id"], made["version"], made["data"]) == ("o-1", 1, {"customer": "c1", "total": 5})
    assert made["createdBy"].startswith("operator:")
    fresh = project.ok("data", "put", "orders", "-d", '{"customer": "c2", "total": 50}', "-o", "json").json()
    assert len(fresh["id"]) == 36 and fresh["id"][14] == "7"  # a UUIDv7
    assert project.ok("data", "get", "orders", "o-1", "-o", "json").json()["data"]["total"] == 5
    page = project.ok("data", "find", "orders", '{"total": {"$gt": 10}}', "-o", "json").json()
    assert [d["data"]["customer"] for d in page["documents"]] == ["c2"]
    ordered = project.ok("data", "find", "orders", "--order", "-total", "--limit", "1", "-o", "json").json()
    assert ordered["documents"][0]["data"]["total"] == 50 and ordered["cursor"]
    rest = project.ok("data", "find", "orders", "--order", "-total", "--cursor", ordered["cursor"], "-o", "json").json()
    assert [d["id"] for d in rest["documents"]] == ["o-1"] and rest["cursor"] is None
    patched = project.ok(
        "data", "patch", "orders", "o-1", "-d", '{"status": "paid", "total": null}', "--if-match", "1", "-o", "json"
    ).json()
    assert (patched["version"], patched["data"]) == (2, {"customer": "c1", "status": "paid"})
    replaced = project.ok(
        "data", "put", "orders", "o-1", "-d", '{"customer": "c9"}', "--if-match", "2", "-o", "json"
    ).json()
    assert replaced["version"] == 3
    project.ok("data", "rm", "orders", "o-1", "--if-match", "3")
    assert project.fnctl("data", "get", "orders", "o-1").code == 1
    listed = project.ok("data", "ls", "-o", "json").json()
    assert listed == [
        {
            "name": "orders",
            "documents": 1,
            "version": 1,
            "indexes": [{"fields": ["customer"], "unique": False}, {"fields": ["total"], "unique": False}],
        }
    ]
    ops = [(c.id, c.op) for c in project.changes()]
    assert ops == [
        ("o-1", "insert"),
        (fresh["id"], "insert"),
        ("o-1", "replace"),
        ("o-1", "replace"),
        ("o-1", "delete"),
    ]
    assert all(c.actor.startswith("operator:") for c in project.changes())


def test_tenants_are_separate(project: Project) -> None:
    project.ok("data", "put", "orders", "t-1", "-d", '{"customer": "acme-c"}', "--tenant", "acme")
    assert project.fnctl("data", "get", "orders", "t-1").code == 1  # not in the default tenant
    assert project.ok("data", "get", "orders", "t-1", "--tenant", "acme", "-o", "json").json()["id"] == "t-1"
    assert project.ok("data", "find", "orders", "-o", "json").json()["documents"] == []


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (("data", "put", "nope", "x", "-d", "{}"), None, "no collection 'nope' (collections: orders)"),
        (("data", "find", "nope"), None, "no collection 'nope'"),
        (("data", "put", "orders", "x", "-d", "{not json"), None, "is not valid JSON"),
        (("data", "put", "orders", "x", "-d", "[1, 2]"), None, "a document is a JSON object"),
        (("data", "put", "orders", "x"), '"text"', "a document is a JSON object"),
        (("data", "put", "orders", "x", "-d", '{"customer": 7, "total": -1}'), None, "$.customer: 7 is not of type"),
        (("data", "put", "orders", "a/b", "-d", '{"customer": "c"}'), None, "cannot contain '/'"),
        (("data", "put", "orders", "a\tb", "-d", '{"customer": "c"}'), None, "control characters"),
        (("data", "put", "orders", "x" * 129, "-d", '{"customer": "c"}'), None, "1 to 128 characters"),
        (("data", "find", "orders", '{"total": {"$near": 1}}'), None, "unknown operator '$near'"),
        (("data", "find", "orders", '{"total": {"$in": 3}}'), None, "$in"),
        (("data", "find", "orders", "{bad"), None, "the filter is not valid JSON"),
        (("data", "find", "orders", "--order", "status"), None, "cannot order by 'status': it is not indexed"),
        (("data", "patch", "orders", "x", "-d", "[1]"), None, "a merge patch is a JSON object"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    project: Project, args: tuple[str, ...], stdin: str | None, needle: str
) -> None:
    run = project.fnctl(*args, stdin=stdin)
    assert run.code == 2, (run.out, run.err)
    assert needle in run.err
    assert project.count() == 0 and project.changes() == []


def test_schema_violations_are_all_listed_with_their_paths(project: Project) -> None:
    run = project.fnctl("data", "put", "orders", "x", "-d", '{"customer": 7, "total": -1}')
    assert run.code == 2
    assert "$.customer: 7 is not of type 'string'" in run.err
    assert "$.total: -1 is less than the minimum of 0" in run.err


def test_existing_documents_need_if_match_or_force(project: Project) -> None:
    project.ok("data", "put", "orders", "o-1", "-d", '{"customer": "c1"}')
    for args in (
        ("put", "orders", "o-1", "-d", '{"customer": "c2"}'),
        ("patch", "orders", "o-1", "-d", "{}"),
        ("rm", "orders", "o-1"),
    ):
        run = project.fnctl("data", *args)
        assert run.code == 2 and "--if-match" in run.err, (args, run.err)
    stale = project.fnctl("data", "put", "orders", "o-1", "-d", '{"customer": "c2"}', "--if-match", "7")
    assert stale.code == 1 and "version 1, not 7" in stale.err
    assert project.ok("data", "get", "orders", "o-1", "-o", "json").json()["version"] == 1
    assert (
        project.ok("data", "put", "orders", "o-1", "-d", '{"customer": "c3"}', "--force", "-o", "json").json()[
            "version"
        ]
        == 2
    )
    project.ok("data", "rm", "orders", "o-1", "--force")
    assert project.count() == 0


def test_import_refuses_bad_lines_by_number_and_writes_nothing(project: Project, tmp_path: Path) -> None:
    project.ok("data", "put", "orders", "taken", "-d", '{"customer": "c"}')
    lines = [
        '{"customer": "ok"}',
        "",
        '{"customer": 1}',
        "[1]",
        "{bad",
        '{"id": "x/y", "data": {"customer": "q"}}',
        '{"id": "taken", "data": {"customer": "q"}}',
        '{"id": "twice", "data": {"customer": "q"}}',
        '{"id": "twice", "data": {"customer": "q"}}',
    ]
    path = tmp_path / "bad.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for extra in ((), ("--batch", "2")):
        run = project.fnctl("data", "import", "orders", str(path), *extra)
        assert run.code == 2, run.err
        assert "6 bad lines" in run.err and "nothing was imported" in run.err
        for number in (3, 4, 5, 6, 7, 9):
            assert f"line {number}:" in run.err
        assert "line 1:" not in run.err and "line 8:" not in run.err
        assert project.count() == 1
    path.write_bytes(b'{"customer": "\xff"}\n')
    run = project.fnctl("data", "import", "orders", str(path))
    assert run.code == 2 and "line 1: not valid JSON: not UTF-8" in run.err


def test_import_without_check_first_commits_whole_batches_only(project: Project, tmp_path: Path) -> None:
    path = tmp_path / "docs.ndjson"
    path.write_text(
        "".join(json.dumps({"customer": f"c{i}"}) + "\n" for i in range(5)) + '{"customer": 1}\n', encoding="utf-8"
    )
    run = project.fnctl("data", "import", "orders", str(path), "--batch", "3", "--no-check-first")
    assert run.code == 2 and "line 6:" in run.err and "the 3 documents of the lines before it were" in run.err
    assert project.count() == 3  # the first batch; the second (lines 4-6) not at all


def test_export_then_import_round_trips_with_ids_and_tenant(project: Project, tmp_path: Path) -> None:
    docs = "".join(json.dumps({"customer": f"c{i}", "total": i}) + "\n" for i in range(2500))
    run = project.ok("data", "import", "orders", "-", "--tenant", "acme", "-o", "json", stdin=docs)
    assert run.json() == {"collection": "orders", "imported": 2500, "batches": 3}
    assert "importing:" in run.err  # plain progress lines when stderr is no terminal
    out = tmp_path / "out.ndjson"
    exported = project.ok("data", "export", "orders", str(out), "--tenant", "acme")
    assert "exported 2500 documents" in exported.err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2500 and rows == sorted(rows, key=lambda r: r["id"])
    assert project.ok("data", "export", "orders").out == ""  # the default tenant has none
    again = project.fnctl("data", "import", "orders", str(out), "--tenant", "acme")
    assert again.code == 2 and "already exists" in again.err  # the same ids: refused, nothing written
    project.ok("data", "import", "orders", str(out))  # into the default tenant, ids kept
    assert project.ok("data", "get", "orders", rows[7]["id"], "-o", "json").json()["data"] == rows[7]["data"]
    paid = project.ok("data", "export", "orders", "--filter", '{"total": {"$lt": 3}}').out.splitlines()
    assert sorted(json.loads(line)["data"]["total"] for line in paid) == [0, 1, 2]


def test_check_lists_documents_that_no_longer_conform(project: Project) -> None:
    project.ok("data", "put", "orders", "a", "-d", '{"customer": "c", "total": 1}')
    project.ok("data", "put", "orders", "b", "-d", '{"customer": "c"}')
    assert project.ok("data", "check", "orders", "-o", "json").json() == {"collection": "orders", "nonconforming": []}
    store = docstore.open_at(project.location)
    stricter = {**SCHEMA, "required": ["customer", "total"]}
    DataPlane(store, lambda: ()).sync_collections([parse_collection("orders", {"schema": stricter})], False, False)
    store.close()
    run = project.fnctl("data", "check", "orders", "-o", "json")
    assert run.code == 1
    assert run.json()["nonconforming"] == [
        {"tenant": "", "id": "b", "violations": [{"path": "$", "message": "'total' is a required property"}]}
    ]
    text = project.fnctl("data", "check", "orders")
    assert text.code == 1 and "b: $: 'total' is a required property" in text.out


def test_reads_are_audited_and_no_data_file_is_an_error(project: Project, tmp_path: Path) -> None:
    project.ok("data", "put", "orders", "o-1", "-d", '{"customer": "c1"}')
    project.ok("data", "get", "orders", "o-1")
    audit = project.ok("audit", "-o", "json").out
    assert "data.get" in audit and "orders/o-1" in audit
    (tmp_path / "other").mkdir()
    other = Project(tmp_path / "other")
    run = other.fnctl("data", "ls")
    assert run.code == 2 and "no data store" in run.err and "fnctl apply" in run.err


def test_every_data_command_has_help_with_an_example(project: Project) -> None:
    for command in ("ls", "get", "find", "put", "patch", "rm", "import", "export", "check"):
        run = project.ok("data", command, "--help")
        assert "Example" in run.out, command
