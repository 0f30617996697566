"""`invoke --local --data-from STATE`'s `context.db` (commands.localdata.LocalData) opened on a state store of
either backend: its data file beside state.db or its PostgreSQL database's document store, its live Policies
and onCommit triggers; a missing SQLite store is bad input. No sandbox needed: the data side alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from fnctl.commands.localdata import LocalData
from fnctl.data.caller import Caller
from fnctl.data.plane import DataPlane
from fnctl.errors import BadInput
from fnctl.manifest.model import parse_collection
from fnctl.manifest.project import load_project
from fnctl.state import docstore
from fnctl.state.location import StateLocation
from fnctl.state.store import connect

ADA = Caller.operator("ada", "")


def test_data_from_opens_the_data_of_a_state_store_on_either_backend(
    tmp_path: Path, state_location: StateLocation
) -> None:
    store = connect(state_location)
    store.set_resources("Trigger", {"ship": {"function": "f", "on": {"collection": "notes", "event": "onCommit"}}})
    store.close()
    documents = docstore.open_at(state_location)
    plane = DataPlane(documents, lambda: ())
    plane.sync_collections([parse_collection("notes", {})], prune=False, force=False)
    plane.insert(ADA, "notes", {"text": "live"}, id="n-1")
    documents.close()
    with LocalData.open(load_project(tmp_path), state_location, None) as local:
        assert local.plane.get(ADA, "notes", "n-1").data == {"text": "live"}
        local.plane.insert(ADA, "notes", {"text": "from a local run"}, id="n-2")  # queues the live trigger's event
    documents = docstore.open_at(state_location)
    try:
        assert [(e.trigger, e.doc_id) for e in documents.outbox_list(None, None, 10)] == [("ship", "n-2")]
    finally:
        documents.close()


def test_data_from_a_missing_state_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no state store there"):
        with LocalData.open(load_project(tmp_path), StateLocation(tmp_path / "nope.db"), None):
            pass
