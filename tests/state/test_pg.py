"""The PostgreSQL boundary (fnctl.state.pg) against a real server (tests/pgserver.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pgserver import PgServer

from fnctl.state import pg
from fnctl.state.location import StateLocation, StoreError
from fnctl.state.store import connect


def test_each_test_gets_a_fresh_database_of_a_real_server(pg_url: str, pg_server: PgServer) -> None:
    connection = pg.connect(pg_url)
    try:
        assert connection.autocommit  # transactions are explicit BEGIN ... COMMIT, as on SQLite
        connection.execute("CREATE TABLE t (x INTEGER)")
        connection.execute("INSERT INTO t VALUES (%s)", (1,))
        assert connection.execute("SELECT x FROM t").fetchall() == [(1,)]
        assert connection.execute("SELECT current_database()").fetchone() != ("postgres",)
    finally:
        connection.close()
    with pytest.raises(pg.DatabaseError):  # another test's database is not this one
        pg.connect(pg_server.url).execute("SELECT x FROM t")


def test_a_failed_connection_names_where_but_never_the_password(tmp_path: object) -> None:
    url = f"postgresql://fn:hunter2secret@/nodb?host={tmp_path}&port=1"
    with pytest.raises(StoreError) as caught:
        pg.connect(url)
    message = str(caught.value)
    assert "hunter2secret" not in message
    assert f"database nodb on socket {tmp_path}" in message
    with pytest.raises(StoreError) as malformed:
        pg.connect("postgresql://fn:hunter2secret@/nodb?host=/x&nosuchoption=1")
    assert "hunter2secret" not in str(malformed.value)


def test_a_store_whose_connection_the_server_dropped_reconnects_at_the_next_call(
    pg_url: str, pg_server: PgServer, tmp_path: Path
) -> None:
    store = connect(StateLocation(tmp_path / "anchor", pg_url))
    try:
        store.set_route("hello", {1: 100})
        (pid,) = store.raw().query("SELECT pg_backend_pid()")[0]
        admin = pg.connect(pg_server.url)
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))  # as a server restart or failover would
        admin.close()
        with pytest.raises(StoreError, match="state store query failed"):  # the call that met the loss
            store.routes()
        assert store.routes() == {"hello": {1: 100}}  # the next one has a new connection
        assert store.raw().query("SELECT pg_backend_pid()")[0][0] != pid
    finally:
        store.close()


def test_a_command_on_a_sqlite_state_never_imports_psycopg(tmp_path: Path) -> None:
    """psycopg's import costs ~0.18 s of CPU: only a state on PostgreSQL pays it."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom fnctl.cli import app\nfrom fnctl.state.store import connect\n"
        f"connect(Path({str(tmp_path / 'state.db')!r})).close()\nprint('psycopg' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
