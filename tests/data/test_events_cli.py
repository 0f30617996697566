"""`fnctl events ls|replay|purge` and `fnctl data` writes queueing onCommit events, as real processes on a real
data file (no engine, no gateway): listing by status and trigger, replaying dead letters, purging, the audit
records, and every bad-input case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fnctl.data.plane import DataPlane
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore
from fnctl.state.location import StateLocation
from fnctl.state.store import connect


class Project:
    def __init__(self, root: Path, location: StateLocation | None = None) -> None:
        self.root = root
        self.location = location or StateLocation(root / "state" / "state.db")
        self.state = self.location.path
        (root / "fnctl.toml").write_text('[project]\nname = "eventscli"\n', encoding="utf-8")

    def fnctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FNCTL_STATE": self.location.to_arg(), "NO_COLOR": "1"}
        return subprocess.run(
            [sys.executable, "-m", "fnctl", *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def project(tmp_path: Path, state_location: StateLocation) -> Project:
    """A project on each backend in turn (the state and its data: SQLite files, or one PostgreSQL database)."""
    project = Project(tmp_path, state_location)
    store = connect(project.location)
    store.set_resources(
        "Trigger",
        {
            "ship": {"function": "f", "on": {"collection": "orders", "event": "onCommit"}},
            # not onCommit; a before-hook, which `fnctl data` writes past only with --no-hooks
            "hook": {"function": "f", "on": {"collection": "orders", "event": "beforeCreate"}},
        },
    )
    store.close()
    docs = docstore.open_at(project.location)
    DataPlane(docs, lambda: ()).sync_collections([parse_collection("orders", {})], prune=False, force=False)
    docs.close()
    return project


def test_fnctl_data_writes_queue_on_commit_events_listed_by_events_ls(project: Project) -> None:
    put = project.fnctl("data", "put", "orders", "o1", "-d", '{"n": 1}', "--no-hooks")
    assert put.returncode == 0, put.stderr
    listed = project.fnctl("events", "ls", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    events = json.loads(listed.stdout)
    assert [(e["trigger"], e["id"], e["op"], e["state"], e["attempts"]) for e in events] == [
        ("ship", "o1", "insert", "pending", 0)
    ]
    assert events[0]["eventId"] == f"ship:{events[0]['seq']}"
    text = project.fnctl("events", "ls")
    assert "ship  orders/o1  insert  pending  attempts 0" in text.stdout
    assert project.fnctl("events", "ls", "--status", "dead").stdout == "no events\n"


def test_replay_and_purge_dead_letters_audited(project: Project) -> None:
    assert project.fnctl("data", "put", "orders", "o1", "-d", "{}", "--no-hooks").returncode == 0
    assert project.fnctl("data", "put", "orders", "o2", "-d", "{}", "--no-hooks").returncode == 0
    docs = docstore.open_at(project.location)
    seqs = [e.seq for e in docs.outbox_list(None, None, 10)]
    docs.outbox_settle([], [("ship", s, 5, None, "boom") for s in seqs])  # both dead letters
    docs.close()
    dead = json.loads(project.fnctl("events", "ls", "--status", "dead", "-o", "json").stdout)
    assert [(e["id"], e["lastError"]) for e in dead] == [("o1", "boom"), ("o2", "boom")]
    replayed = project.fnctl("events", "replay", str(seqs[0]))
    assert replayed.returncode == 0 and replayed.stdout == "1 event(s) pending again\n", replayed.stderr
    pending = json.loads(project.fnctl("events", "ls", "--status", "pending", "-o", "json").stdout)
    assert [(e["id"], e["attempts"]) for e in pending] == [("o1", 0)]
    assert pending[0]["nextAttempt"] <= time.time()
    purged = project.fnctl("events", "purge", "--trigger", "ship")
    assert purged.stdout == "1 event(s) purged\n"  # the dead one; the pending one stays
    assert [e["id"] for e in json.loads(project.fnctl("events", "ls", "-o", "json").stdout)] == ["o1"]
    audit = project.fnctl("audit", "-o", "json")
    actions = [r["action"] for r in json.loads(audit.stdout)]
    assert "events-replay" in actions and "events-purge" in actions


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("events", "ls", "--status", "lost"), "--status 'lost': one of pending, delivered, dead"),
        (("events", "purge", "--status", "gone"), "--status 'gone'"),
        (("events", "ls", "--limit", "0"), "--limit must be at least 1"),
        (("events", "replay", "abc"), "abc"),
    ],
)
def test_bad_input_exits_2_and_changes_nothing(project: Project, args: tuple[str, ...], message: str) -> None:
    assert project.fnctl("data", "put", "orders", "o1", "-d", "{}", "--no-hooks").returncode == 0
    done = project.fnctl(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert len(json.loads(project.fnctl("events", "ls", "-o", "json").stdout)) == 1


def test_without_a_data_file_events_say_what_to_do(tmp_path: Path, state_location: StateLocation) -> None:
    done = Project(tmp_path, state_location).fnctl("events", "ls")
    assert done.returncode == 2 and "no data store" in done.stderr
    assert not docstore.exists_at(state_location)  # and asking made none
