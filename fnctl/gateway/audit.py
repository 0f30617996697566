"""The invocation audit: one append-only row in `invocations` for every invocation and every denied
attempt, hash-chained (fnctl.state.auditchain), and the access log, one JSON line per request on the
`fnctl.access` logger (stdlib logging).
Both are written by a thread of their own, in batches, so that the event loop never waits on SQLite or
on a log destination.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, TextIO

from fnctl.state.store import Store, StoreError, connect

access_logger = logging.getLogger("fnctl.access")
log = logging.getLogger("fnctl.audit")
Row = tuple[float, str, str | None, str, int | None, str | None, str, int, float, str | None]


class AuditLog:
    """Append-only audit rows and access lines, queued by `record`/`access` (a deque append: cheap on the
    event loop) and written by a thread of its own every `interval` seconds, or sooner when `batch` wait.
    `close` writes what is left."""

    def __init__(self, store_path: Path, *, interval: float = 0.25, batch: int = 500) -> None:
        self._store_path = store_path
        self._interval = interval
        self._batch = batch
        self._rows: deque[Row] = deque()
        self._lines: deque[tuple[Row | None, dict[str, Any]]] = deque()  # access lines still to log
        self._mutex = threading.Lock()  # taken by `record` on the event loop: a bare lock is the cheapest
        self._lock = threading.Condition(self._mutex)
        self._recorded = 0  # rows handed to `record`, and rows in the store: `flush` waits for the gap
        self._written = 0
        self._closing = False
        self._wake = threading.Event()
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
            many = len(self._rows) >= self._batch
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

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row recorded so far is in the store; False if that took over `timeout`."""
        with self._lock:
            target = self._recorded
        self._wake.set()
        with self._lock:
            return (
                self._lock.wait_for(lambda: self._written >= target or not self._thread.is_alive(), timeout)
                and self._written >= target
            )

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer (blocking: call it off the event loop)."""
        with self._lock:
            self._closing = True
        self._wake.set()
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

    def _run(self) -> None:
        try:
            store = connect(self._store_path)
        except StoreError as exc:
            log.error("the audit log cannot open the store; rows stay queued: %s", exc)
            return
        try:
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
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

    def _write(self, store: Store) -> bool:
        """Write every queued row in one transaction; False (rows kept, in order) when the store refuses."""
        batch = list(self._rows)
        if not batch:
            return True
        try:
            with store.transaction():
                _insert(store, batch)
        except Exception as exc:  # the writer must outlive a busy store (BEGIN raises sqlite3's own errors)
            log.warning("%d audit rows not written yet, will retry: %s", len(batch), exc)
            return False
        with self._lock:
            for _ in batch:  # only this thread removes rows, so the first len(batch) are the ones written
                self._rows.popleft()
            self._written += len(batch)
            self._lock.notify_all()
        return True

    def _log_lines(self) -> None:
        direct = _direct_handler()
        lines: list[str] = []
        for count in range(len(self._lines)):
            try:
                row, extra = self._lines.popleft()
            except IndexError:  # close() after a writer that did not stop in time: it took the rest
                break
            if direct is not None:
                lines.append(access_line(extra) if row is None else row_line(row, extra))
            else:
                log_access(**(extra if row is None else {**_row_fields(row), **extra}))
            if count % 64 == 63:
                time.sleep(0)  # hand the GIL back to the event loop now and then: a long batch must not stall it
        if direct is not None and lines:
            direct.write_lines(lines)
        for handler in access_logger.handlers:
            handler.flush()


def _insert(store: Store, rows: list[Row]) -> None:
    """Append `rows` to the invocation audit's hash chain (inside the caller's write transaction: this thread
    is the chain's only writer in the gateway, but a late row or another gateway process may append too)."""
    store.append_chained("invocations", list(rows))


_JSON = json.JSONEncoder(separators=(",", ":"), default=str)
_stamps: dict[int, str] = {}  # ISO 8601 second → text: consecutive lines share their second


def access_line(fields: dict[str, Any]) -> str:
    """One access line: `fields` as JSON (keys in camelCase), `at` (seconds since the epoch, now when absent)
    first as `time` in ISO 8601 UTC with milliseconds."""
    return _JSON.encode({"time": _stamp(fields.pop("at", None) or time.time()), **fields})


def _stamp(at: float) -> str:
    """`at` in ISO 8601 UTC with milliseconds; lines come in bursts within one millisecond, and one second."""
    global _last_stamp
    millis = int(at * 1000)
    if _last_stamp[0] == millis:
        return _last_stamp[1]
    second = millis // 1000
    stamp = _stamps.get(second)
    if stamp is None:
        if len(_stamps) > 4:
            _stamps.clear()
        stamp = _stamps[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    _last_stamp = (millis, f"{stamp}.{millis % 1000:03d}Z")
    return _last_stamp[1]


_last_stamp = (-1, "")


def _row_fields(row: Row) -> dict[str, Any]:
    return {
        "at": row[0],
        "requestId": row[1],
        "principal": row[2],
        "function": row[3],
        "revision": row[4],
        "trigger": row[5],
        "outcome": row[6],
        "status": row[7],
        "durationMs": row[8],
        "source": row[9],
    }


_ROW_LINE = (
    '{"time":"%s","requestId":%s,"principal":%s,"function":%s,"revision":%s,"trigger":%s,"outcome":%s,'
    '"status":%d,"durationMs":%r,"source":%s'
)
_q = encode_basestring_ascii  # a str as a JSON string, as `_JSON` writes it


def row_line(row: Row, extra: dict[str, Any]) -> str:
    """`access_line` of an audit row and its `extra` fields (other names than the row's), formatted field by
    field: the same JSON in half the time of building a dict and encoding it, and this runs per request."""
    at, request_id, principal, function, revision, trigger, outcome, status, duration_ms, source = row
    line = _ROW_LINE % (
        _stamp(at),
        _q(request_id),
        "null" if principal is None else _q(principal),
        _q(function),
        "null" if revision is None else int(revision),
        "null" if trigger is None else _q(trigger),
        _q(outcome),
        status,
        duration_ms,
        "null" if source is None else _q(source),
    )
    for key, value in extra.items():
        line += f",{_q(key)}:{_q(value) if isinstance(value, str) else _JSON.encode(value)}"
    return line + "}"


def log_access(**fields: Any) -> None:
    """Log one JSON access line now. On the event loop, prefer `AuditLog.access`, which logs from the
    writer thread."""
    line = access_line(fields)
    # makeRecord + handle: the logging machinery without the caller lookup, which costs more than the rest
    access_logger.handle(access_logger.makeRecord(access_logger.name, logging.INFO, __file__, 0, line, (), None))


class _BatchStreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that leaves flushing to whoever logs a batch (a flush per line is a syscall each)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)

    def write_lines(self, lines: list[str]) -> None:
        """A batch of lines in one write, as `emit` would write them one by one (see `_direct_handler`)."""
        self.acquire()
        try:
            self.stream.write(self.terminator.join(lines) + self.terminator)
        except Exception:
            log.exception("access lines lost")
        finally:
            self.release()


def _direct_handler() -> _BatchStreamHandler | None:
    """The access log's own handler when a batch of lines may bypass the logging machinery (a LogRecord per
    line costs more than the rest of a request): it is the logger's only destination, nothing filters,
    and it formats a record as its bare message. Otherwise (handlers added by whoever embeds fnctl) None."""
    logger = access_logger
    if logger.propagate or logger.filters or logger.disabled or len(logger.handlers) != 1:
        return None
    handler = logger.handlers[0]
    if (
        not isinstance(handler, _BatchStreamHandler)
        or handler.filters
        or handler.formatter is not _PLAIN
        or not logger.isEnabledFor(logging.INFO)
        or handler.level > logging.INFO
    ):
        return None
    return handler


_PLAIN = logging.Formatter("%(message)s")


def silence_access_log() -> Callable[[], None]:
    """No access lines at all (`--no-access-log`): the logger is switched off, so `record` queues none and
    nothing reaches the root logger, which would write each one to stderr as JSON inside JSON; returns the
    function that restores it."""
    level, propagate = access_logger.level, access_logger.propagate
    access_logger.setLevel(logging.CRITICAL + 1)
    access_logger.propagate = False

    def stop() -> None:
        access_logger.setLevel(level)
        access_logger.propagate = propagate

    return stop


def start_access_log(stream: TextIO) -> Callable[[], None]:
    """Write access lines to `stream`, alone (they are JSON for machines: kept out of the root logger),
    flushed after each batch; returns the function that stops it."""
    handler = _BatchStreamHandler(stream)
    handler.setFormatter(_PLAIN)
    level, propagate = access_logger.level, access_logger.propagate
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False

    def stop() -> None:
        access_logger.removeHandler(handler)
        access_logger.setLevel(level)
        access_logger.propagate = propagate
        handler.flush()

    return stop
