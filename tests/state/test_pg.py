"""The PostgreSQL boundary (fnctl.state.pg) against a real server (tests/pgserver.py)."""

from __future__ import annotations

import pytest
from pgserver import PgServer

from fnctl.state import pg
from fnctl.state.location import StoreError


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
