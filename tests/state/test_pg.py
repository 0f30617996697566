"""The PostgreSQL boundary (fnctl.state.pg) against a real server (tests/pgserver.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pgserver import PgServer
from polling import wait_until

from fnctl.errors import ExitCode
from fnctl.state import backends, docstore, pg, pglocks, pgsession
from fnctl.state.auditchain import verify
from fnctl.state.auditlog import AuditFilter, audit_chain, audit_head, invocation_records
from fnctl.state.location import StateLocation, StoreError
from fnctl.state.store import Store, connect


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
    assert malformed.value.exit_code == ExitCode.BAD_INPUT  # a URL libpq cannot parse is bad input, not an outage
    assert caught.value.exit_code == ExitCode.FAILED


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


def test_a_document_store_on_a_sqlite_state_never_imports_psycopg(tmp_path: Path) -> None:
    """The document store reaches PostgreSQL through the opener handed in, like the deployment state: a data
    command on a SQLite state does not pay psycopg's import either."""
    script = (
        "import sys\nfrom pathlib import Path\nfrom fnctl.cli import app, pgopener\nfrom fnctl.state import docstore\n"
        "from fnctl.state.location import StateLocation\npgopener.install_on_first_use()\n"
        f"docstore.open_at(StateLocation(Path({str(tmp_path / 'state.db')!r}))).close()\n"
        "print('psycopg' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_the_clis_stand_in_imports_psycopg_when_a_postgresql_state_is_opened(pg_url: str, tmp_path: Path) -> None:
    script = (
        "import sys\nfrom pathlib import Path\nfrom fnctl.cli import pgopener\nfrom fnctl.state import docstore\n"
        "from fnctl.state.location import StateLocation\nfrom fnctl.state.store import connect\n"
        "pgopener.install_on_first_use()\nprint('psycopg' in sys.modules)\n"
        f"location = StateLocation(Path({str(tmp_path / 'anchor')!r}), {pg_url!r})\n"
        "store = connect(location)\nprint(store.routes())\nstore.close()\n"
        "print(docstore.exists_at(location))\ndocstore.open_at(location).close()\nprint(docstore.exists_at(location))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "{}", "False", "True"]


def test_a_postgresql_state_opened_without_the_opener_is_a_clear_store_error(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "_postgres", [])  # a program that installed no PostgreSQL opener
    location = StateLocation(tmp_path / "anchor", pg_url)
    with pytest.raises(StoreError, match="no PostgreSQL support installed"):
        connect(location)
    with pytest.raises(StoreError, match="no PostgreSQL support installed"):
        docstore.open_at(location)


def _round_trips(trace: Path) -> int:
    """Requests the client sent that wait for the server's answer: simple queries, extended-protocol syncs and
    the ends of COPYs (libpq's protocol trace, one message a line: `[time] F <length> Query ...`)."""
    sent = [m[m.index("F") + 2] for m in (line.split("\t") for line in trace.read_text().splitlines()) if "F" in m[:2]]
    return sum(1 for message in sent if message.split(" ")[0] in ("Query", "Sync", "CopyDone"))


def test_an_invocation_audit_batch_is_the_heads_read_a_copy_and_the_commit(pg_url: str, tmp_path: Path) -> None:
    """BEGIN and the write lock go with the first read, the rows by COPY (half the server's CPU per row of an
    INSERT of a JSON array), the head marker with the COMMIT: 4 round trips, the COPY's two among them."""
    store = connect(StateLocation(tmp_path / "anchor", pg_url))
    trace = tmp_path / "trace"
    row = (1.0, "r1", None, "hello", 1, None, "ok", 200, 0.5, "127.0.0.1")
    try:
        with store.transaction():
            store.append_chained("invocations", [row])  # the first batch: the connection is warm afterwards
        with trace.open("w") as out:
            raw = store._db._db.pgconn  # type: ignore[attr-defined]  # the Store's own psycopg connection
            raw.trace(out.fileno())
            try:
                with store.transaction():
                    store.append_chained("invocations", [(2.0, f"r{n}", *row[2:]) for n in range(2, 80)])
            finally:
                raw.untrace()
        sent = trace.read_text()
        assert _round_trips(trace) == 4 and "\tCopyData\t" in sent, sent[:3000]
        report = verify("invocations", audit_chain(store, "invocations"), audit_head(store, "invocations"))
        assert report.intact and report.records == 79
        assert audit_head(store, "invocations") is not None
        # a held write fails at the COMMIT that carries it: nothing of its transaction lands; the store goes on
        with pytest.raises(StoreError), store.transaction():
            store.append_chained("invocations", [(3.0, "lost", *row[2:])])
            store._db.hold("INSERT INTO routes VALUES (?, ?, ?)", ("x", "{}", "not a number"))
        assert not store._db.in_transaction
        with store.transaction():
            store.append_chained("invocations", [(4.0, "kept", *row[2:])])
        assert [e.request_id for e in invocation_records(store, AuditFilter(), limit=2)] == ["kept", "r79"]
        assert store.routes() == {}
    finally:
        store.close()


# The leader's key as every fnctl version so far takes it: an older gateway in a mixed fleet leads on this.
_LEADER_KEY_OF_EVERY_VERSION = 0x666E63746D


def test_the_state_migrates_while_a_gateway_leads_and_leaders_of_every_version_exclude_each_other(
    pg_url: str, tmp_path: Path
) -> None:
    """A process opening a state that needs migrating (a newer `fnctl serve` or `fnctl state migrate` beside
    running gateways) must not wait for the leader's lock: the leader holds it for as long as it lives."""
    leader = pgsession.AdvisoryLeaderLock(pg_url)
    older = pg.connect(pg_url)  # a gateway of an older fnctl, a candidate for leadership
    opened: list[Store] = []
    migrating = threading.Thread(
        target=lambda: opened.append(connect(StateLocation(tmp_path / "anchor", pg_url))), daemon=True
    )
    try:
        assert leader.try_take()
        taken = older.execute("SELECT pg_try_advisory_lock(%s)", (_LEADER_KEY_OF_EVERY_VERSION,)).fetchone()
        assert taken == (False,)  # one leader across versions in a rolling upgrade
        migrating.start()  # a fresh database: opening it creates and migrates every table
        wait_until(lambda: not migrating.is_alive(), what="the store to open while a gateway leads", timeout=60)
        assert len(opened) == 1 and opened[0].routes() == {}
        assert leader.held()
    finally:
        leader.release()  # on a shared key this is what the migration waited for
        migrating.join(timeout=60)
        older.close()
        for store in opened:
            store.close()


def test_every_advisory_lock_key_is_a_key_of_its_own() -> None:
    assert len(set(pglocks.KEYS)) == len(pglocks.KEYS)  # a shared key makes unrelated holders wait on each other
