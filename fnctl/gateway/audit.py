"""The invocation audit: one append-only row in `invocations` for every invocation and every denied
attempt, hash-chained (fnctl.state.auditchain), and the access log (fnctl.gateway.accesslog).
Both are written in batches off the event loop: by the gateway's writer process (`process=True`,
fnctl.gateway.auditwriter: the event loop's GIL is not shared with SQLite and formatting), or by a thread
of their own (one-shot commands, and the fallback when the process cannot run).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from typing import Any

from fnctl.gateway.accesslog import (
    Row,
    access_line,
    access_logger,
    direct_handler,
    log_access,
    row_fields,
    row_line,
    silence_access_log,
    start_access_log,
)
from fnctl.gateway.auditwriter import Lines, WriterProcess
from fnctl.state.location import StateLocation
from fnctl.state.store import Store, StoreError, connect

__all__ = ["AuditLog", "silence_access_log", "start_access_log"]
log = logging.getLogger("fnctl.audit")


class AuditLog:
    """Append-only audit rows and access lines, queued by `record`/`access` (a deque append: cheap on the
    event loop) and written `interval` seconds after the first of them, or sooner when `batch` wait: shipped
    to a writer process (`process=True`) or written by a thread of this one. While nothing is queued the
    thread sleeps (no timer: an idle gateway's writer never wakes). A row leaves the queue only once it is in
    the store. `close` writes what is left. Each batch has a fixed price: 50 rows instead of 500 cost the
    gateway 13-14 % of its throughput under load (docs/audit.md)."""

    def __init__(
        self, store_path: StateLocation, *, interval: float = 0.25, batch: int = 500, process: bool = False
    ) -> None:
        self._store_path = store_path
        self._interval = interval
        self._batch = batch
        self._rows: deque[Row] = deque()
        self._lines: deque[tuple[Row | None, dict[str, Any]]] = deque()  # access lines still to log
        self._mutex = threading.Lock()  # taken by `record` on the event loop: a bare lock is the cheapest
        self._lock = threading.Condition(self._mutex)
        self._recorded = 0  # rows handed to `record`, and rows in the store: `flush` waits for the gap
        self._written = 0
        self._lost = 0  # rows the writer process gave up on (the store refused them for ~10 s)
        self._shipped = 0  # the first rows of `_rows` that are with the writer process, not acknowledged yet
        self._closing = False
        self._wake = threading.Event()  # write or ship now: a full batch, `flush`, `close`
        # The writer waits for something to write on `_queued`; `_asleep` says so, and the first row or line
        # queued meanwhile sets it (an attribute test per row otherwise).
        self._queued = threading.Event()
        self._asleep = False
        self._writer = _writer_process(store_path) if process else None
        self._acks: threading.Thread | None = None
        if self._writer is not None:
            self._acks = threading.Thread(target=self._read_acks, name="fnctl-audit-acks", daemon=True)
            self._acks.start()
        self._thread = threading.Thread(target=self._run, name="fnctl-audit", daemon=True)
        self._thread.start()

    def record(
        self,
        *,
        request_id: str,
        principal: str | None,
        function: str,
        revision: int | None,
        outcome: str,
        status: int,
        duration_ms: float,
        source: str | None,
        trigger: str | None = None,
        access: dict[str, Any] | None = None,
    ) -> None:
        """Queue one audit row, and its access line with the `access` fields (method, path, ...)."""
        row: Row = (
            time.time(),
            request_id,
            principal,
            function,
            revision,
            trigger,
            str(outcome),
            status,
            round(duration_ms, 3),
            source,
        )
        with self._mutex:
            late = self._closing
            if not late:
                self._rows.append(row)
                self._recorded += 1
                if self._asleep:  # under the lock, as the writer's look at the queue: one of the two sees the other
                    self._asleep = False
                    self._queued.set()
            many = len(self._rows) - self._shipped >= self._batch
        if access_logger.isEnabledFor(logging.INFO):
            self._lines.append((row, access or {}))
        if late:  # after close (a request that outlived the drain): rare, so a connection of its own
            self._write_late(row)
        elif many:
            self._wake.set()

    def access(self, **fields: Any) -> None:
        """Queue an access line for a request that is no invocation (health, metrics, not found)."""
        if access_logger.isEnabledFor(logging.INFO):
            self._lines.append((None, {"at": time.time(), **fields}))
            if self._asleep:  # after the append, as the writer sets `_asleep` before it looks: one sees the other
                self._asleep = False
                self._queued.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row recorded so far is in the store; False if that took over `timeout` (or the
        writer process gave rows up)."""
        with self._lock:
            target, lost = self._recorded, self._lost
        self._wake.set()
        with self._lock:
            done = self._lock.wait_for(lambda: self._written >= target or not self._thread.is_alive(), timeout)
            return done and self._written >= target and self._lost == lost

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer (blocking: call it off the event loop)."""
        with self._lock:
            self._closing = True
        self._wake.set()
        self._queued.set()
        self._thread.join(timeout)
        self._log_lines()  # lines queued after the writer's last round

    @property
    def queued(self) -> int:
        return len(self._rows)

    def _write_late(self, row: Row) -> None:
        try:
            store = connect(self._store_path)
            try:
                with store.transaction():
                    _insert(store, [row])
            finally:
                store.close()
        except StoreError as exc:
            log.error("audit row of request %s lost: %s", row[1], exc)

    # ---- the writer thread ----

    def _await_work(self) -> None:
        """Sleep until a row is queued that is not written (nor shipped), or a line, or `close`; then let the
        batch fill for `interval` seconds (a full batch, `flush` or `close` cut that short). It used to wake
        every `interval` to look, queue empty or not: 4 wake-ups a second of an idle gateway."""
        while True:
            with self._lock:
                self._asleep = True
                if self._closing or len(self._rows) > self._shipped or self._lines:
                    self._asleep = False
                    break
            self._queued.wait()
            self._queued.clear()  # a stale set (a row seen by the look above) only makes one more look
        if not self._closing:
            self._wake.wait(self._interval)
        self._wake.clear()

    def _run(self) -> None:
        if self._writer is not None and self._ship_all():
            return
        try:
            store = connect(self._store_path)
        except StoreError as exc:
            log.error("the audit log cannot open the store; rows stay queued: %s", exc)
            return
        try:
            while True:
                self._await_work()  # (a refused batch is still queued: tried again `interval` later)
                with self._lock:
                    closing = self._closing
                self._log_lines()
                if not self._write(store) and closing:
                    log.error("%d audit rows lost: the store refused them at shutdown", len(self._rows))
                    return  # give up only when asked to stop
                if closing and not self._rows:
                    return
        finally:
            store.close()

    def _ship_all(self) -> bool:
        """Ship batches to the writer process until closing; True once it wrote everything and ended, False
        when it died (the rows it did not acknowledge are then written by this thread: the last batch may
        be written twice rather than lost)."""
        writer = self._writer
        assert writer is not None and self._acks is not None
        while True:
            self._await_work()
            with self._lock:
                closing = self._closing
                rows = [self._rows[i] for i in range(self._shipped, len(self._rows))]
                self._shipped = len(self._rows)
            lines: Lines = []
            if writer.writes_access:
                while self._lines:
                    lines.append(self._lines.popleft())
            else:
                self._log_lines()
            try:
                if rows or lines:
                    writer.send(rows, lines)
            except OSError as exc:
                log.error("the audit writer process is gone (%s); writing the audit from this process", exc)
                break
            if closing:
                writer.finish(timeout=30.0)
                self._acks.join(timeout=30.0)
                if not self._rows:
                    return True
                break
        writer.finish(timeout=1.0)
        self._acks.join(timeout=5.0)  # the acknowledgements it sent before it died are counted first
        with self._lock:
            self._shipped = 0
            self._writer = None
        return False

    def _read_acks(self) -> None:
        writer = self._writer
        assert writer is not None
        for rows, committed in writer.acks():
            with self._lock:
                for _ in range(rows):  # acknowledged in order: the first rows shipped
                    self._rows.popleft()
                self._shipped -= rows
                self._written += rows
                self._lost += rows - committed
                self._lock.notify_all()

    def _write(self, store: Store) -> bool:
        """Write every queued row in one transaction; False (rows kept, in order) when the store refuses."""
        batch = list(self._rows)
        if not batch:
            return True
        try:
            with store.transaction():
                _insert(store, batch)
        except StoreError as exc:  # the writer outlives a busy SQLite file or a PostgreSQL server that went away
            log.warning("%d audit rows not written yet, will retry: %s", len(batch), exc)
            return False
        with self._lock:
            for _ in batch:  # only this thread removes rows, so the first len(batch) are the ones written
                self._rows.popleft()
            self._written += len(batch)
            self._lock.notify_all()
        return True

    def _log_lines(self) -> None:
        direct = direct_handler()
        lines: list[str] = []
        for count in range(len(self._lines)):
            try:
                row, extra = self._lines.popleft()
            except IndexError:  # close() after a writer that did not stop in time: it took the rest
                break
            if direct is not None:
                lines.append(access_line(extra) if row is None else row_line(row, extra))
            else:
                log_access(**(extra if row is None else {**row_fields(row), **extra}))
            if count % 64 == 63:
                time.sleep(0)  # hand the GIL back to the event loop now and then: a long batch must not stall it
        if direct is not None and lines:
            direct.write_lines(lines)
        for handler in access_logger.handlers:
            handler.flush()


def _writer_process(store_path: StateLocation) -> WriterProcess | None:
    """The writer process, writing the access lines too when they go straight to a file descriptor (the
    access log's only destination, unfiltered: `fnctl serve`'s stdout); None when it cannot start."""
    direct = direct_handler()
    access_fd = None
    if direct is not None:
        try:
            direct.stream.flush()
            access_fd = direct.stream.fileno()
        except (OSError, ValueError, io.UnsupportedOperation):
            access_fd = None  # an in-memory stream: this process formats and writes the lines
    try:
        return WriterProcess(store_path, access_fd)
    except OSError as exc:
        log.error("the audit writer process did not start (%s); the audit is written by a thread", exc)
        return None


def _insert(store: Store, rows: list[Row]) -> None:
    """Append `rows` to the invocation audit's hash chain (inside the caller's write transaction: this thread
    is the chain's only writer in the gateway, but a late row or another gateway process may append too)."""
    store.append_chained("invocations", list(rows))
