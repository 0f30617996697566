"""The data file's checkpoints taken apart from the writes (`DocStore.checkpoint_apart`, run by the gateway's
broker on a thread of its own): a commit never copies the WAL into the database file itself (so a busy
disk's fsyncs never stall it), the checkpointer does, and stops with the broker."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from polling import wait_until

from fnctl.data.caller import Caller
from fnctl.data.documents import WriteOp
from fnctl.data.plane import DataPlane
from fnctl.gateway.broker import Broker
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore

OP = Caller.operator("t", "")
BIG = {"text": "x" * 8000}  # two pages and more each: 600 of them overflow SQLite's 1,000-page checkpoint


def _plane(path: Path) -> DataPlane:
    plane = DataPlane(docstore.connect(path), lambda: ())
    plane.sync_collections([parse_collection("notes", {})], False, False)
    return plane


def _fill(plane: DataPlane, count: int = 600) -> None:
    for _ in range(count):
        plane.insert(OP, "notes", dict(BIG))


def test_by_default_a_commit_checkpoints_itself(tmp_path: Path) -> None:
    """The baseline the next test departs from: SQLite's automatic checkpoint copies the WAL into the file."""
    path = tmp_path / "state.data.db"
    plane = _plane(path)
    before = path.stat().st_size
    _fill(plane)
    assert path.stat().st_size > before + 2_000_000
    plane.store.close()


def test_checkpoints_apart_leave_the_commits_and_run_on_their_own(tmp_path: Path) -> None:
    path = tmp_path / "state.data.db"
    plane = _plane(path)
    plane.store.checkpoint_apart()
    before = path.stat().st_size
    _fill(plane)
    assert path.stat().st_size == before  # no commit copied the WAL into the file
    assert (tmp_path / "state.data.db-wal").stat().st_size > 4_000_000
    plane.store.checkpoint()
    assert path.stat().st_size > before + 2_000_000
    assert plane.find(OP, "notes", {}, limit=1).documents[0].data == BIG
    plane.store.close()


def test_the_broker_checkpoints_on_a_thread_of_its_own_and_stops_it(tmp_path: Path) -> None:
    path = tmp_path / "state.data.db"
    plane = _plane(path)
    broker = Broker(plane)
    before = path.stat().st_size

    async def writes() -> None:
        for _ in range(600):
            await broker.write(lambda: plane.stage(OP, WriteOp("insert", "notes", None, dict(BIG))))

    asyncio.run(writes())
    wait_until(lambda: path.stat().st_size > before + 2_000_000, what="the checkpointer to copy the WAL")
    assert any(t.name == "fnctl-checkpoint" for t in threading.enumerate())
    broker.close_all()
    assert not any(t.name == "fnctl-checkpoint" and t.is_alive() for t in threading.enumerate())
