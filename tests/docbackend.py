"""The document store's two backends for the tests (a pytest plugin, see tests/conftest.py): `backend` is
"sqlite" or "postgresql" (every test that asks for it runs on both), `data_location` what
`docstore.connect` opens for it (a data file in tmp_path, or a fresh database of the session's PostgreSQL
server, `tests/pgserver.py`), and `raw` a plain connection to a store, beside it, for the tests that look
under the API (plans, tampering)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fnctl.state.docconn import DocConn, PgConn, SqliteConn
from fnctl.state.docsql import SQLITE
from fnctl.state.docsqlpg import POSTGRES
from fnctl.state.docstore import DocStore, Location

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def data_location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Location:
    if backend == "sqlite":
        return tmp_path / "state.data.db"
    return str(request.getfixturevalue("pg_url"))


def raw(store: DocStore) -> DocConn:
    """A new autocommit connection to `store`'s database (its schema, on PostgreSQL); close it after."""
    if store.url is not None:
        return PgConn(store.url, POSTGRES)
    db = sqlite3.connect(store.path, isolation_level=None, factory=SqliteConn)
    db.dialect = SQLITE
    return db
