"""The invocation audit written by a process of its own (issue 18, item 1): the rows reach the store's
chain in order, the access lines go straight to the gateway's stdout descriptor, a clean close loses
nothing, and a gateway killed with SIGKILL loses nothing it had already shipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from deploy_helpers import until

from fnctl.gateway.accesslog import access_line, row_fields, row_line
from fnctl.gateway.audit import AuditLog, start_access_log
from fnctl.state.auditchain import verify
from fnctl.state.auditlog import AuditFilter, audit_chain, audit_head, invocation_records
from fnctl.state.location import StateLocation
from fnctl.state.store import connect


def _record(audit: AuditLog, n: int, **extra: object) -> None:
    audit.record(
        request_id=f"r{n}",
        principal="key:abc",
        function="hello",
        revision=1,
        outcome="ok",
        status=200,
        duration_ms=n / 4,
        source="127.0.0.1",
        access={"method": "POST", "path": "/invoke/hello"} if extra.get("access") else None,
    )


def _ids(state: StateLocation) -> list[str]:
    store = connect(state)
    try:
        return [e.request_id for e in reversed(invocation_records(store, AuditFilter(), limit=10_000))]
    finally:
        store.close()


def test_rows_are_written_by_the_process_in_order_and_flush_waits_for_them(state_location: StateLocation) -> None:
    state = state_location
    connect(state).close()
    audit = AuditLog(state, process=True, interval=60)  # a long interval: flush() must wake the shipping
    try:
        assert audit._writer is not None and not audit._writer.writes_access
        for n in range(300):
            _record(audit, n)
        assert audit.flush(timeout=20)
        assert _ids(state) == [f"r{n}" for n in range(300)]
        assert audit.queued == 0
        for n in range(300, 310):
            _record(audit, n)
    finally:
        audit.close()  # a clean stop writes what is queued
    assert _ids(state) == [f"r{n}" for n in range(310)]
    store = connect(state)
    try:
        report = verify("invocations", audit_chain(store, "invocations"), audit_head(store, "invocations"))
        assert report.intact and report.records == 310
    finally:
        store.close()


def test_access_lines_go_from_the_process_straight_to_the_descriptor(
    tmp_path: Path, state_location: StateLocation
) -> None:
    state, out = state_location, tmp_path / "access.log"
    connect(state).close()
    with out.open("w", encoding="utf-8") as stream:
        stop = start_access_log(stream)
        try:
            audit = AuditLog(state, process=True, interval=0.05)
            assert audit._writer is not None and audit._writer.writes_access
            for n in range(20):
                _record(audit, n, access=True)
            audit.access(method="GET", path="/healthz", status=200)
            assert audit.flush(timeout=20)
            audit.close()
        finally:
            stop()
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line.get("requestId") for line in lines if "requestId" in line] == [f"r{n}" for n in range(20)]
    assert {"method": "POST", "path": "/invoke/hello", "status": 200} == {
        k: lines[0][k] for k in ("method", "path", "status")
    }
    assert any(line.get("path") == "/healthz" for line in lines)


KILLED = """\
import os, signal, sys, time
from pathlib import Path
from fnctl.gateway.audit import AuditLog
from fnctl.state import location

audit = AuditLog(location.parse(sys.argv[1]), process=True, interval=0.05)
for n in range(200):
    audit.record(request_id=f"k{n}", principal=None, function="f", revision=1, outcome="ok", status=200,
                 duration_ms=1.0, source=None)
while audit._shipped + audit._written < 200:  # every row with the writer process, none acknowledged maybe
    time.sleep(0.001)
print(audit._writer.process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_gateway_killed_with_sigkill_loses_nothing_it_had_shipped(state_location: StateLocation) -> None:
    state = state_location
    connect(state).close()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED), state.to_arg()],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert done.returncode == -9, done.stderr
    writer = int(done.stdout.strip())
    until(lambda: _ids(state) == [f"k{n}" for n in range(200)], "the shipped rows written by the orphan writer")
    until(lambda: not Path(f"/proc/{writer}").exists() or _zombie(writer), "the writer process to end")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_an_audit_row_line_is_the_access_line_of_its_fields() -> None:
    """`row_line` (formatted field by field, in the writer) writes what `access_line` writes of the row's fields."""
    rows = [
        (1_760_000_000.25, "r-1", None, "noop", 3, "noop", "ok", 200, 0.412, "127.0.0.1"),
        (1_760_000_001.0, 'r"2', "jwt:élodie", "f", None, None, "denied", 403, 12.0, None),
    ]
    for row in rows:
        for extra in ({}, {"method": "GET", "path": "/t/é?x=\n"}, {"n": 1, "list": [1, "a"], "none": None}):
            assert row_line(row, extra) == access_line({**row_fields(row), **extra})
