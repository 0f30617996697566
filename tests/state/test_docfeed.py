"""What another process commits reaches a document store's readers (`DocStore.data_version`, which the gateway's
view cache follows to evict entries written elsewhere: `fnctl data`, another gateway), on both backends: a
second process commits, the first sees `data_version` move and reads the change from the log. On PostgreSQL it
comes from LISTEN/NOTIFY (`docconn.ChangeFeed`): it does not move when nothing was committed, and a lost
listening connection counts as a change and is opened again."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from polling import wait_until

from fnctl.data.caller import Caller
from fnctl.data.plane import DataPlane
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore, pg

OPERATOR = Caller.operator("t", "acme")

WRITER = """
import sys
from pathlib import Path
from fnctl.data.caller import Caller
from fnctl.data.plane import DataPlane
from fnctl.state import docstore
where = sys.argv[1]
store = docstore.connect(where if where.startswith("postgresql://") else Path(where))
DataPlane(store, lambda: ()).insert(Caller.operator("other", "acme"), "notes", {"by": "other"}, id=sys.argv[2])
store.close()
"""


@pytest.fixture
def store(data_location: docstore.Location) -> Iterator[docstore.DocStore]:
    opened = docstore.connect(data_location)
    DataPlane(opened, lambda: ()).sync_collections([parse_collection("notes", {})], prune=False, force=False)
    yield opened
    opened.close()


def _commit_in_another_process(location: docstore.Location, id_: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(location), id_], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_another_process_commit_moves_data_version_and_is_read_from_the_log(
    store: docstore.DocStore, data_location: docstore.Location
) -> None:
    before, seen = store.data_version(), store.last_seq()
    assert store.data_version() == before  # nothing committed: it stays
    _commit_in_another_process(data_location, "n-1")
    wait_until(lambda: store.data_version() != before, what="data_version to move after another process's commit")
    changed = store.changes_after(seen, 10)
    assert [(c.collection, c.id, c.op, c.actor) for c in changed] == [("notes", "n-1", "insert", "operator:other")]
    settled = store.data_version()
    assert store.data_version() == settled  # and stays until the next commit
    _commit_in_another_process(data_location, "n-2")
    wait_until(lambda: store.data_version() != settled, what="data_version to move again")


def test_postgresql_data_version_survives_a_lost_listening_connection(pg_url: str) -> None:
    store = docstore.connect(pg_url)
    try:
        DataPlane(store, lambda: ()).sync_collections([parse_collection("notes", {})], prune=False, force=False)
        before = store.data_version()
        admin = pg.connect(pg_url)
        try:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query = 'LISTEN fnctl_changes'"
            ).fetchall()
        finally:
            admin.close()
        assert killed == [(True,)]
        # What it missed is unknown: the loss itself counts as a change (readers go back to the change log)
        lost = wait_until(lambda: store.data_version() != before and store.data_version(), what="the loss seen")
        settled = wait_until(
            lambda: store.data_version() == store.data_version() and store.data_version(), what="a new listener"
        )
        assert settled >= lost
        _commit_in_another_process(pg_url, "n-1")
        wait_until(lambda: store.data_version() != settled, what="a commit seen by the new listener")
    finally:
        store.close()


def test_a_write_transaction_announces_its_last_seq_on_commit_only(pg_url: str) -> None:
    """The NOTIFY is part of the write transaction: a listener hears the new last seq once it committed,
    and nothing from a transaction that was refused."""
    store = docstore.connect(pg_url)
    listener = pg.connect(pg_url)
    try:
        plane = DataPlane(store, lambda: ())
        plane.sync_collections([parse_collection("notes", {})], prune=False, force=False)
        listener.execute("LISTEN fnctl_changes")
        plane.insert(OPERATOR, "notes", {"n": 1}, id="a")
        heard = wait_until(lambda: pg.drain_notifies(listener), what="the commit's notification")
        assert heard == [str(store.last_seq())]
        with pytest.raises(Exception, match="exists|conflict|version"):
            plane.insert(OPERATOR, "notes", {"n": 2}, id="a")  # refused: nothing committed, nothing announced
        plane.insert(OPERATOR, "notes", {"n": 3}, id="b")
        assert wait_until(lambda: pg.drain_notifies(listener), what="the second commit") == [str(store.last_seq())]
    finally:
        listener.close()
        store.close()
