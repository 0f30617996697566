"""A real PostgreSQL server for the tests: one per test session, a fresh database per test.

`pg_server` starts a throwaway server (scripts/pg-server.sh: initdb into a temporary directory, Unix socket
only) the first time a test asks for it and stops it, removing its directory, when the session ends.
`pg_url` gives each test a database of its own (CREATE DATABASE, dropped afterwards). Not docker tests:
under CI=true a server that cannot start fails them, elsewhere it skips them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from fnctl.state import pg

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
