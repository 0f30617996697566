"""The invocation audit's writer process: the gateway ships batches of audit rows (and access lines) over a
pipe; this process appends them to the store's hash chain and writes the lines, and acknowledges each batch
once it is committed.

Why a process: in a thread of the gateway, hashing the chain, the SQLite calls' Python side and formatting
access lines took the GIL from the event loop (switching them off saved 21 µs per request at c8 and 78 µs at
c32). The gateway's side is now one `marshal.dumps` and one `write` per batch.

Guarantees: a batch is acknowledged only once committed, and the gateway keeps every row until its batch is
acknowledged, so a clean stop loses nothing (`AuditLog.close` waits for the last acknowledgement). This
process ignores SIGINT and SIGTERM and stops at the end of its input: when the gateway is killed (`kill -9`)
the pipe closes and every batch already shipped is still written. What such a kill can lose is what the
gateway had not shipped yet: at most one shipping interval of rows (0.25 s by default, or `batch` rows).

    python -m fnctl.gateway.auditwriter STORE_PATH [ACCESS_FD]
"""

from __future__ import annotations

import json
import marshal
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import IO, Any, BinaryIO

from fnctl.gateway.accesslog import Row, access_line, row_line
from fnctl.state import location
from fnctl.state.location import StateLocation
from fnctl.state.store import Store, StoreError, connect

_LENGTH = struct.Struct("<I")  # each batch: its length, then marshal.dumps((rows, lines))
_STATE_ENV = "FNCTL_AUDITWRITER_STATE"  # the store, as StateLocation.to_arg wrote it
_ACK = struct.Struct("<QQ")  # each acknowledgement: the rows of one batch, and how many of them are committed
Lines = list[tuple[Row | None, dict[str, Any]]]  # access lines: (audit row or None, extra fields)
RETRIES = 100  # attempts at a batch the store refuses (busy), 0.1 s apart, before it is given up


class WriterProcess:
    """The gateway's handle on its writer process."""

    def __init__(self, store_path: StateLocation, access_fd: int | None) -> None:
        # the store in the environment, not argv: a PostgreSQL URL may carry a password, and argv is public
        args = [sys.executable, "-m", "fnctl.gateway.auditwriter"]
        # A copy of the access log's descriptor above 2: the process's stdin and stdout are its pipes, so
        # the gateway's stdout (1) would otherwise be replaced by the acknowledgements' pipe.
        passed = None if access_fd is None else os.dup(access_fd)
        if passed is not None:
            args.append(str(passed))
        self.writes_access = passed is not None
        try:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=() if passed is None else (passed,),
                start_new_session=True,  # a Ctrl-C meant for the gateway must not cut the writer short
                env={**os.environ, _STATE_ENV: store_path.to_arg()},
            )
        finally:
            if passed is not None:
                os.close(passed)
        assert self.process.stdin is not None and self.process.stdout is not None
        self._pipe: IO[bytes] = self.process.stdin
        self._acks: IO[bytes] = self.process.stdout

    def send(self, rows: list[Row], lines: Lines) -> None:
        """Ship one batch (OSError when the process is gone)."""
        payload = marshal.dumps((rows, lines))
        self._pipe.write(_LENGTH.pack(len(payload)) + payload)
        self._pipe.flush()

    def acks(self) -> Iterator[tuple[int, int]]:
        """(rows, rows committed) of each batch, in order, until the process ends (blocking)."""
        while len(data := self._acks.read(_ACK.size)) == _ACK.size:
            rows, committed = _ACK.unpack(data)
            yield int(rows), int(committed)

    def finish(self, timeout: float) -> None:
        """No more batches: the process writes what it has and ends."""
        try:
            self._pipe.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---- the process -------------------------------------------------------------------------------------


def _read(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def _commit(store: Store, rows: list[Row]) -> bool:
    for _ in range(RETRIES):
        try:
            with store.transaction():
                store.append_chained("invocations", list(rows))
            return True
        except StoreError as exc:  # a busy SQLite file, a PostgreSQL server restarting: try again
            error = exc
            time.sleep(0.1)
    _error(f"{len(rows)} audit rows lost: the store refused them: {error}")
    return False


def _error(message: str) -> None:
    """One JSON line on stderr, the gateway's, like its own log lines."""
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "level": "error", "logger": "fnctl.auditwriter"}
    print(json.dumps(line | {"message": message}), file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    store = connect(location.parse(os.environ[_STATE_ENV]))
    access = os.fdopen(int(argv[0]), "w", encoding="utf-8", closefd=False) if argv else None
    batches = sys.stdin.buffer
    acks: BinaryIO | None = sys.stdout.buffer
    try:
        while (head := _read(batches, _LENGTH.size)) is not None:
            body = _read(batches, _LENGTH.unpack(head)[0])
            if body is None:
                break  # the gateway died mid-write: that batch was never whole
            rows, lines = marshal.loads(body)
            if access is not None and lines:
                try:
                    access.write("".join((access_line(e) if r is None else row_line(r, e)) + "\n" for r, e in lines))
                    access.flush()
                except OSError as exc:  # the log's reader went away: the audit rows matter more
                    _error(f"access lines lost: {exc}")
            committed = _commit(store, rows) if rows else True
            if acks is not None:
                try:
                    acks.write(_ACK.pack(len(rows), len(rows) if committed else 0))
                    acks.flush()
                except BrokenPipeError:
                    acks = None  # the gateway is gone: write what it shipped, acknowledge nothing more
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
