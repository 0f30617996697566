"""A real PostgreSQL server for the tests: one per test session, a fresh database per test.

`pg_server` starts a throwaway server (scripts/pg-server.sh: initdb into a temporary directory, Unix socket
only) the first time a test asks for it and stops it, removing its directory, when the session ends.
`pg_url` gives each test a database of its own (CREATE DATABASE, dropped afterwards); `state_location` runs
a test once on SQLite and once on PostgreSQL; `project_states` does the same for a test module's deployed
projects (tests/deploy_helpers.py `make_project`): every project of the module on one backend, then the other.
Not docker tests:
under CI=true a server that cannot start fails them, elsewhere it skips them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from fnctl.state import pg
from fnctl.state.location import StateLocation
from fnctl.state.store import Store, connect

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "pg-server.sh"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)", pytrace=False)
    pytest.skip(reason)


class PgServer:
    """A running server in `directory`; `url` reaches its `postgres` database as the superuser."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._numbers = itertools.count(1)
        done = subprocess.run(["bash", str(SCRIPT), "start", str(directory)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pg-server.sh start failed: {done.stderr.strip()}")
        self.url = done.stdout.strip()
        self._admin = pg.connect(self.url)

    def url_of(self, database: str) -> str:
        return self.url.replace("postgresql:///postgres?", f"postgresql:///{database}?", 1)

    def create_database(self) -> str:
        """A new empty database's URL (a copy of template1: a few milliseconds)."""
        name = f"test_{os.getpid()}_{next(self._numbers)}"
        self._admin.execute(f"CREATE DATABASE {name}")
        return self.url_of(name)

    def drop_database(self, url: str) -> None:
        name = url.split("postgresql:///", 1)[1].split("?", 1)[0]
        self._admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        self._admin.close()
        subprocess.run(["bash", str(SCRIPT), "stop", str(self.directory)], check=False, capture_output=True)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    # Not under pytest's tmp_path: that is private to root, and the server runs as the postgres user.
    directory = Path(tempfile.mkdtemp(prefix="fnctl-pg-"))
    try:
        server = PgServer(directory)
    except (RuntimeError, OSError, pg.DatabaseError) as exc:
        shutil.rmtree(directory, ignore_errors=True)
        _unavailable(f"no PostgreSQL server could be started: {exc}; run scripts/setup.sh")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database of the session's server, dropped after the test."""
    url = pg_server.create_database()
    try:
        yield url
    finally:
        pg_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_location(request: pytest.FixtureRequest, tmp_path: Path) -> StateLocation:
    """The deployment state on each backend in turn: a SQLite file in tmp_path, then a fresh PostgreSQL
    database (its host-local anchor, for the lock and key-stamp files, in tmp_path too)."""
    if request.param == "sqlite":
        return StateLocation(tmp_path / "state" / "state.db")
    url: str = request.getfixturevalue("pg_url")
    return StateLocation(tmp_path / "state" / "state", url)


@pytest.fixture
def store(state_location: StateLocation) -> Iterator[Store]:
    """The deployment state at `state_location` (each backend in turn), open for the test."""
    opened = connect(state_location)
    try:
        yield opened
    finally:
        opened.close()


class StateFactory:
    """New deployment states on one backend for a module's projects: a SQLite file in the directory given,
    or a fresh database of the session's server each (its anchor in that directory), dropped at the end."""

    def __init__(self, server: PgServer | None) -> None:
        self._server = server
        self._urls: list[str] = []

    @property
    def backend(self) -> str:
        return "sqlite" if self._server is None else "postgresql"

    def new(self, directory: Path) -> StateLocation:
        if self._server is None:
            return StateLocation(directory / "state.db")
        self._urls.append(self._server.create_database())
        return StateLocation(directory / "state", self._urls[-1])

    def close(self) -> None:
        if self._server is not None:
            for url in self._urls:
                self._server.drop_database(url)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def project_states(request: pytest.FixtureRequest) -> Iterator[StateFactory]:
    """The deployed projects' states, each backend in turn for the whole module (a module-scoped project
    fixture asks for it too, so its project is set up once per backend, not once per test)."""
    server: PgServer | None = request.getfixturevalue("pg_server") if request.param == "postgresql" else None
    factory = StateFactory(server)
    try:
        yield factory
    finally:
        factory.close()


INTEGRITY = (sqlite3.IntegrityError, pg.IntegrityError)  # a guard or a key refused a write, on either backend


def raw_execute(location: StateLocation, sql: str) -> None:
    """One statement straight onto the database, around fnctl (as someone with the file or a database login
    could): what the store's guards must refuse. The driver's own errors come through."""
    if location.url is not None:
        connection = pg.connect(location.url)
        try:
            connection.execute(sql)
        finally:
            connection.close()
        return
    db = sqlite3.connect(location.path, isolation_level=None)
    try:
        db.execute(sql)
    finally:
        db.close()


class RawDb:
    """A connection of its own straight to a state's database, around fnctl, in fnctl's portable SQL (`?`
    placeholders on both): tests tamper with tables and read what no method returns. Driver errors come
    through as they are (INTEGRITY on a guard's refusal)."""

    def __init__(self, location: StateLocation) -> None:
        self.location = location
        self._pg = pg.connect(location.url) if location.url is not None else None
        self._sqlite = None if self._pg is not None else sqlite3.connect(location.path, isolation_level=None)

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        if self._pg is not None:
            cursor = self._pg.execute(sql.replace("%", "%%").replace("?", "%s"), params)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
        assert self._sqlite is not None
        return [tuple(r) for r in self._sqlite.execute(sql, params).fetchall()]

    def drop_trigger(self, table: str, name: str) -> None:
        self.execute(f"DROP TRIGGER {name}" + (f" ON {table}" if self._pg is not None else ""))

    def dump(self) -> str:
        """Every row of every table, as text (SQLite's iterdump; PostgreSQL's rows cast to text)."""
        if self._sqlite is not None:
            return "\n".join(self._sqlite.iterdump())
        tables = [r[0] for r in self.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return "\n".join(str(r[0]) for t in tables for r in self.execute(f"SELECT t::text FROM {t} t"))

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        if self._sqlite is not None:
            self._sqlite.close()
