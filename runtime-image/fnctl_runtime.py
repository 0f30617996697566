#!/usr/bin/env python3
"""fnctl's in-container runtime: loads the function's handler and serves invocations over Unix sockets.

Standard library only: it runs inside the sandbox image, which holds nothing but python3; never imports fnctl.

The runtime connects OUT to the host; it never creates a file. Its socket directory (/run/fnctl) is made by
the host and mounted read-only: each host process that wants to talk to this instance puts up its own
listening socket there, named `h-<pid>-<random>.sock`. The runtime looks at the directory every SCAN_INTERVAL
(a scandir: cheap, and it sees the host's changes under gVisor too, where an inotify watch does not), connects
once to each such name that is a socket file (never a symlink), and serves every connection at once. A name
that refuses (a host process that died) is not tried again while it stays there.

Protocol 1, documented in docs/protocol.md. This file is the runtime side, its own standard-library copy;
the host's codec is fnctl/invocation/protocol.py, and tests/test_protocol.py holds both to the same golden
frames. On every connection the runtime speaks first, `ready`; when the handler fails to load it sends
`startup_failed` with the error's type, message and the user's traceback instead, waits for the host to hang
up (the host checks who connected while this process still runs), and exits with code 3; the same report
goes to the container's log.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import functools
import importlib
import importlib.util
import inspect
import io
import itertools
import json
import logging
import os
import queue
import signal
import socket
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PROTOCOL = 1
MIB = 1 << 20
FRAME_SLACK = 64 * 1024  # room for the envelope around a payload at the limit
LISTENER_PREFIX, LISTENER_SUFFIX = "h-", ".sock"  # the host's listeners; every other name is ignored
SCAN_INTERVAL = 0.02  # seconds between looks for new host listeners: what a new host connection may wait
STARTUP_REPORT_WAIT = 10.0  # how long a failed start waits for a host to listen, then to read the report
_THIS_FILE = os.path.abspath(__file__)
_IMPORTLIB_DIR = os.path.dirname(os.path.abspath(importlib.__file__ or ""))
_REAL_STDERR = sys.stderr


class CallbackError(Exception):
    """The host answered a `context.call` / `context.acall` with an error."""

    def __init__(self, type: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message
        self.details: dict[str, Any] = details or {}  # the reply's whole error object (status, problem...)


# ---- context.db: the data plane, over `call` frames --------------------------------------------


class DataError(CallbackError):
    """A data-plane call failed; `status` is the HTTP status the REST API would answer, `problem` the RFC 9457
    problem details (`violations`: each schema violation with its JSON path)."""

    def __init__(self, type: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(type, message, details)
        status = self.details.get("status")
        self.status = status if isinstance(status, int) else 500
        problem = self.details.get("problem")
        self.problem: dict[str, Any] = problem if isinstance(problem, dict) else {}
        violations = self.problem.get("violations")
        self.violations: list[Any] = violations if isinstance(violations, list) else []


class NotFound(DataError):
    """No such document, or one the caller may not read (the two are never told apart)."""


class Conflict(DataError):
    """A version changed under us: a stale `if_version`, a unique index, or a procedure's conflict."""


class LimitExceeded(DataError):
    """Over the invocation's limits (`limits.dbOperations`, documents scanned, bytes)."""


class Forbidden(DataError):
    """The caller may not write this collection at all."""


class Invalid(DataError):
    """Bad input: a schema violation, a bad filter or id, an unknown collection, a document too large."""


_DATA_ERRORS: dict[str, type[DataError]] = {
    "NotFound": NotFound, "Conflict": Conflict, "PreconditionFailed": Conflict, "LimitExceeded": LimitExceeded,
    "Forbidden": Forbidden, "Invalid": Invalid,
}
_DATA_STATUS: dict[int, type[DataError]] = {404: NotFound, 409: Conflict, 412: Conflict, 429: LimitExceeded,
                                             403: Forbidden}


def _data_error(exc: CallbackError) -> CallbackError:
    """The typed error of a failed `db.*` call (a connection lost or a timeout stays a CallbackError)."""
    status = exc.details.get("status")
    if not isinstance(status, int):
        return exc
    cls = _DATA_ERRORS.get(exc.type) or _DATA_STATUS.get(status) or (Invalid if 400 <= status < 500 else DataError)
    return cls(exc.type, exc.message, exc.details)


def _version(if_version: Any) -> dict[str, Any]:
    return {} if if_version is None else {"if_version": if_version}


class Collection:
    """`context.db["orders"]`: one collection, read and written with the caller's rights. Each method has an
    async form, prefixed with `a` (`await context.db["orders"].aget(id)`). Documents come back as
    `{"id", "version", "createdAt", "createdBy", "updatedAt", "updatedBy", "data"}`."""

    def __init__(self, db: Database, name: str) -> None:
        self._db, self.name = db, name

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        return self._db._call(method, {"collection": self.name, **params})

    async def _acall(self, method: str, params: dict[str, Any]) -> Any:
        return await self._db._acall(method, {"collection": self.name, **params})

    def get(self, id: str) -> dict[str, Any]:
        return self._call("db.get", {"id": id})  # type: ignore[no-any-return]

    async def aget(self, id: str) -> dict[str, Any]:
        return await self._acall("db.get", {"id": id})  # type: ignore[no-any-return]

    @staticmethod
    def _query(filter: Any, order: Any, limit: Any, cursor: Any) -> dict[str, Any]:
        query: dict[str, Any] = {"filter": filter if filter is not None else {}}
        if order is not None:
            query["order"] = order
        if limit is not None:
            query["limit"] = limit
        if cursor is not None:
            query["cursor"] = cursor
        return query

    def find(self, filter: Any = None, *, order: Any = None, limit: int | None = None,
             cursor: str | None = None) -> dict[str, Any]:
        """`{"documents": [documents], "cursor": "..." | None}`: pass the cursor back for the next page."""
        return self._call("db.find", self._query(filter, order, limit, cursor))  # type: ignore[no-any-return]

    async def afind(self, filter: Any = None, *, order: Any = None, limit: int | None = None,
                    cursor: str | None = None) -> dict[str, Any]:
        return await self._acall("db.find", self._query(filter, order, limit, cursor))  # type: ignore[no-any-return]

    def insert(self, doc: Any, *, id: str | None = None) -> dict[str, Any]:
        return self._call("db.insert", {"document": doc, **({} if id is None else {"id": id})})  # type: ignore[no-any-return]

    async def ainsert(self, doc: Any, *, id: str | None = None) -> dict[str, Any]:
        return await self._acall("db.insert", {"document": doc, **({} if id is None else {"id": id})})  # type: ignore[no-any-return]

    def update(self, id: str, patch: Any, *, if_version: int | None = None) -> dict[str, Any]:
        """A JSON merge patch (RFC 7396): `null` removes a field."""
        return self._call("db.update", {"id": id, "patch": patch, **_version(if_version)})  # type: ignore[no-any-return]

    async def aupdate(self, id: str, patch: Any, *, if_version: int | None = None) -> dict[str, Any]:
        return await self._acall("db.update", {"id": id, "patch": patch, **_version(if_version)})  # type: ignore[no-any-return]

    def replace(self, id: str, doc: Any, *, if_version: int | None = None) -> dict[str, Any]:
        return self._call("db.replace", {"id": id, "document": doc, **_version(if_version)})  # type: ignore[no-any-return]

    async def areplace(self, id: str, doc: Any, *, if_version: int | None = None) -> dict[str, Any]:
        return await self._acall("db.replace", {"id": id, "document": doc, **_version(if_version)})  # type: ignore[no-any-return]

    def delete(self, id: str, *, if_version: int | None = None) -> None:
        self._call("db.delete", {"id": id, **_version(if_version)})

    async def adelete(self, id: str, *, if_version: int | None = None) -> None:
        await self._acall("db.delete", {"id": id, **_version(if_version)})


class Database:
    """`context.db`: `context.db["orders"]` is a Collection; the error types are its attributes too
    (`except context.db.NotFound:`)."""

    DataError, NotFound, Conflict, LimitExceeded, Forbidden, Invalid = (
        DataError, NotFound, Conflict, LimitExceeded, Forbidden, Invalid)

    def __init__(self, context: Context) -> None:
        self._context = context

    def __getitem__(self, name: str) -> Collection:
        if not isinstance(name, str) or not name:
            raise TypeError("a collection name is a non-empty string")
        return Collection(self, name)

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        try:
            return self._context.call(method, params)
        except CallbackError as exc:
            raise _data_error(exc) from None

    async def _acall(self, method: str, params: dict[str, Any]) -> Any:
        try:
            return await self._context.acall(method, params)
        except CallbackError as exc:
            raise _data_error(exc) from None


@dataclass(frozen=True)
class Config:
    handler: str
    code_dir: str
    deps_dir: str
    socket_dir: str
    function: str
    revision: str
    concurrency: int
    payload_limit: int
    output_limit: int
    log_limit: int

    @classmethod
    def from_env(cls) -> Config:
        env = os.environ
        if not env.get("FNCTL_HANDLER"):
            raise ValueError("FNCTL_HANDLER is not set (expected module.attr or path/file.py:attr)")
        return cls(
            handler=env["FNCTL_HANDLER"],
            code_dir=os.path.abspath(env.get("FNCTL_CODE_DIR", "/var/task")),
            deps_dir=os.path.abspath(env.get("FNCTL_DEPS_DIR", "/opt/fnctl/deps")),
            socket_dir=_socket_dir(),
            function=env.get("FNCTL_FUNCTION", ""),
            revision=env.get("FNCTL_REVISION", ""),
            concurrency=max(1, int(env.get("FNCTL_CONCURRENCY", "8"))),
            payload_limit=int(env.get("FNCTL_PAYLOAD_LIMIT", str(6 * MIB))),
            output_limit=int(env.get("FNCTL_OUTPUT_LIMIT", str(6 * MIB))),
            log_limit=int(env.get("FNCTL_LOG_LIMIT", str(64 * 1024))),
        )


def _socket_dir() -> str:
    # FNCTL_SOCKET (the socket path of older images) names a file in the same directory.
    env = os.environ
    return os.path.abspath(env.get("FNCTL_SOCKET_DIR") or os.path.dirname(env.get("FNCTL_SOCKET", "/run/fnctl/sock")))


# Built once: json.dumps with any option builds a new encoder per call, a measurable cost per invocation.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_RESULT_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_DECODER = json.JSONDecoder()  # frames are UTF-8: decoded directly, without json.loads' encoding detection


def encode(message: dict[str, Any]) -> bytes:
    # "replace": a lone surrogate in a message or log must not make the reply unsendable
    body = _ENCODER.encode(message).encode("utf-8", "replace")
    return len(body).to_bytes(4, "big") + body


# ---- per-invocation output capture -------------------------------------------------------------


class _Capture:
    """One invocation's output, capped in bytes; later writes are dropped and flagged."""

    __slots__ = ("parts", "size", "limit", "truncated")

    def __init__(self, limit: int) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.truncated = False

    def write(self, text: str) -> None:
        if self.truncated or not text:
            return
        data = text.encode("utf-8", "replace")
        room = self.limit - self.size
        if len(data) > room:
            data, self.truncated = data[:room], True
        self.parts.append(data)
        self.size += len(data)

    def text(self) -> str:
        # "ignore" only ever drops the half character the cap may have cut
        return b"".join(self.parts).decode("utf-8", "ignore")


_capture: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar("fnctl_capture", default=None)


class _Stream(io.TextIOBase):
    """Installed as sys.stdout/sys.stderr: writes go to the current invocation's capture, else to stderr."""

    def __init__(self, fallback: Any) -> None:
        self._fallback = fallback

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        capture = _capture.get()
        if capture is None:
            return int(self._fallback.write(text))
        capture.write(text)
        return len(text)

    def flush(self) -> None:
        if _capture.get() is None:
            self._fallback.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self._fallback.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


# ---- handler loading ---------------------------------------------------------------------------


class Handler:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        call = getattr(fn, "__call__", None)
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
        self.takes_context = _takes_context(fn)

    def call(self, event: Any, context: Context) -> Any:
        return self.fn(event, context) if self.takes_context else self.fn(event)


def _takes_context(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True  # builtins without a signature: assume the full form
    kinds = [p.kind for p in params]
    positional = [k for k in kinds if k in (inspect.Parameter.POSITIONAL_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if inspect.Parameter.VAR_POSITIONAL in kinds or len(positional) >= 2:
        return True
    if len(positional) == 1:
        return False
    raise TypeError("the handler must accept (event) or (event, context)")


def load_handler(config: Config) -> Handler:
    for path in (config.deps_dir, config.code_dir):  # inserted in turn: the code dir ends up first
        if os.path.isdir(path) and path not in sys.path:
            sys.path.insert(0, path)
    spec = config.handler
    if ":" in spec:
        file_part, _, attr = spec.rpartition(":")
        module = _import_file(os.path.join(config.code_dir, file_part))
    else:
        module_name, _, attr = spec.rpartition(".")
        if not module_name or not attr:
            raise ValueError(f"invalid handler {spec!r}: expected module.attr or path/file.py:attr")
        module = importlib.import_module(module_name)
    try:
        fn = getattr(module, attr)
    except AttributeError:
        message = f"handler {spec!r} not found: module {module.__name__!r} has no attribute {attr!r}"
        raise AttributeError(message) from None
    if not callable(fn):
        raise TypeError(f"handler {spec!r} is not callable")
    return Handler(fn)


def _import_file(path: str) -> Any:
    # Like running a script: its directory is importable, so sibling modules resolve.
    directory, name = os.path.split(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    spec = importlib.util.spec_from_file_location(os.path.splitext(name)[0], path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load handler file {path!r} (expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def user_traceback(exc: BaseException) -> str:
    """The traceback with this runtime's and importlib's frames removed: what the user's code did."""
    te = traceback.TracebackException.from_exception(exc)
    pending: list[traceback.TracebackException | None] = [te]
    seen: set[int] = set()
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        node.stack = traceback.StackSummary.from_list([f for f in node.stack if _is_user_frame(f.filename)])
        pending += [node.__cause__, node.__context__]
    return "".join(te.format())


def _is_user_frame(filename: str) -> bool:
    if filename.startswith("<frozen importlib"):
        return False
    path = os.path.abspath(filename)
    return path != _THIS_FILE and os.path.dirname(path) != _IMPORTLIB_DIR


def _startup_failed(directory: str, exc: BaseException) -> int:
    tb = user_traceback(exc)
    report = {"type": type(exc).__name__, "message": _message(exc), "traceback": tb}
    _REAL_STDERR.write(f"fnctl-runtime: cannot load the handler\n{tb}")
    _REAL_STDERR.flush()
    _report_to_hosts(directory, encode({"type": "startup_failed", "protocol": PROTOCOL, "error": report}))
    return 3


def _report_to_hosts(directory: str, frame: bytes) -> None:
    """Send `frame` to the host processes listening in `directory` (waiting a while for a first one), then
    wait until each has hung up: a host checks who connected while that process still runs. Bounded: with no
    listener at all, the exit code and the container's log carry the error."""
    give_up = time.monotonic() + STARTUP_REPORT_WAIT
    tried: set[str] = set()
    told: list[socket.socket] = []
    while not told and time.monotonic() < give_up:
        for path in host_listeners(directory, tried):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(1.0)
                sock.connect(path)
                sock.sendall(frame)
                sock.shutdown(socket.SHUT_WR)
                told.append(sock)
            except OSError:
                sock.close()
        if not told:
            time.sleep(SCAN_INTERVAL)
    for sock in told:
        with contextlib.suppress(OSError):
            sock.settimeout(max(give_up - time.monotonic(), 0.1))
            while sock.recv(4096):
                pass
        sock.close()


def host_listeners(directory: str, tried: set[str]) -> list[str]:
    """Paths of the host listeners in `directory` not in `tried` (which this adds them to, and from which it
    drops the names that are gone): socket files named h-*.sock, never a symlink or anything else."""
    try:
        with os.scandir(directory) as entries:
            names = {e.name for e in entries if e.name.startswith(LISTENER_PREFIX) and e.name.endswith(LISTENER_SUFFIX)}
    except OSError:
        return []
    tried.intersection_update(names)  # forgotten once gone: the set never grows past what is there
    found = []
    for name in names - tried:
        tried.add(name)  # tried once, whatever happens: a stale listener is not retried every scan
        path = os.path.join(directory, name)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                found.append(path)
        except OSError:
            pass  # gone meanwhile
    return found


# ---- invocation context -----------------------------------------------------------------------


class Abort(Exception):
    """`raise context.Abort("reason")` in a data hook (beforeCreate, ...): the write is refused (422) with the
    reason. Reported in the error frame as type `fnctl.Abort`, so that no exception of the user's own that
    happens to share the name is taken for a verdict."""

    def __init__(self, reason: str) -> None:
        if not isinstance(reason, str):
            raise TypeError(f"context.Abort(reason): the reason must be a string, not {type(reason).__name__}")
        super().__init__(reason)
        self.reason = reason


class Context:
    """The handler's second argument."""

    Abort = Abort

    def __init__(self, conn: _Connection, invocation_id: str, deadline: float, caller: Any) -> None:
        server = conn.server
        self.function_name = server.config.function
        self.revision = server.config.revision
        self.invocation_id = invocation_id
        self.deadline = deadline
        self.caller: dict[str, Any] | None = caller if isinstance(caller, dict) else None
        self.logger = server.logger
        self.db = Database(self)
        self._conn = conn

    def remaining_time(self) -> float:
        return max(0.0, self.deadline - time.time())

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Ask the host to run `method`; blocks this (worker) thread until the reply comes."""
        loop = self._conn.server.loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("context.call() would block the event loop: use `await context.acall(...)`")
        try:
            return self._conn.call_from_thread(self.invocation_id, method, params or {}, self.deadline)
        except CallbackError as exc:
            raise CallbackError(exc.type, exc.message, exc.details) from None  # a fresh traceback: no runtime frames

    async def acall(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self._conn.call(self.invocation_id, method, params or {}, self.deadline)


# ---- connections and the server ---------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One host connection: parses frames and multiplexes requests and callbacks by id."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        # Calls awaiting their reply: asyncio futures (acall, on the loop) or concurrent ones (call, from a worker
        # thread, which waits on it directly); both are resolved on the loop by `resolve`.
        self.calls: dict[str, Any] = {}
        self.next_call = 0
        self.thread_calls = itertools.count(1)  # ids of calls from worker threads ("t1", ...): next() is atomic
        self.closed: asyncio.Future[None] = server.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)
        self.send(self.server.ready_message())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            size = int.from_bytes(buf[:4], "big")
            if size > self.server.max_frame:
                self.abort(f"frame of {size} bytes is over the limit of {self.server.max_frame}")
                return
            if len(buf) < 4 + size:
                return
            body = bytes(buf[4 : 4 + size])
            del buf[: 4 + size]
            try:
                message = _DECODER.decode(body.decode())
            except ValueError:  # UnicodeDecodeError included
                message = None
            if not isinstance(message, dict):
                self.abort("frame is not a JSON object")
                return
            self.server.dispatch(self, message, size)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for future in list(self.calls.values()):  # a copy: worker threads add and remove calls
            if not future.done():
                future.set_exception(CallbackError("ConnectionLost", "the host connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self, reason: str) -> None:
        _REAL_STDERR.write(f"fnctl-runtime: closing a connection: {reason}\n")
        if self.transport is not None:
            self.transport.close()

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send(self, message: dict[str, Any]) -> None:
        self.write(encode(message))

    async def call(self, invocation_id: str, method: str, params: dict[str, Any], deadline: float) -> Any:
        if self.transport is None or self.transport.is_closing():
            raise CallbackError("ConnectionLost", "the host connection is closed")
        self.next_call += 1
        call_id = f"c{self.next_call}"
        future: asyncio.Future[Any] = self.server.loop.create_future()
        self.calls[call_id] = future
        try:
            self.send({"type": "call", "id": call_id, "invocation_id": invocation_id, "method": method,
                       "params": params})
            timeout = max(0.0, deadline - time.time()) if deadline else None
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise CallbackError("Timeout", f"no reply to {method!r} before the deadline") from None
        finally:
            self.calls.pop(call_id, None)

    def call_from_thread(self, invocation_id: str, method: str, params: dict[str, Any], deadline: float) -> Any:
        """`call` for a worker thread: the frame is sent by one callback on the loop and the thread waits on a
        concurrent future that `resolve` completes (no task, no timer on the loop: a context.db call's round
        trip is two thread wake-ups, not five)."""
        reply: concurrent.futures.Future[Any] = concurrent.futures.Future()
        call_id = f"t{next(self.thread_calls)}"
        self.calls[call_id] = reply
        frame = {"type": "call", "id": call_id, "invocation_id": invocation_id, "method": method, "params": params}

        def send() -> None:
            if self.transport is None or self.transport.is_closing():
                if not reply.done():
                    reply.set_exception(CallbackError("ConnectionLost", "the host connection is closed"))
                return
            try:
                self.send(frame)
            except Exception as exc:  # noqa: BLE001 -- e.g. params that are not JSON: the caller's error
                if not reply.done():
                    reply.set_exception(exc)

        try:
            self.server.loop.call_soon_threadsafe(send)
            timeout = max(0.0, deadline - time.time()) if deadline else None
            return reply.result(timeout)
        except concurrent.futures.TimeoutError:
            raise CallbackError("Timeout", f"no reply to {method!r} before the deadline") from None
        finally:
            self.calls.pop(call_id, None)

    def resolve(self, message: dict[str, Any]) -> None:
        future = self.calls.get(str(message.get("id")))
        if future is None or future.done():
            return  # the call timed out already
        if message.get("ok"):
            future.set_result(message.get("result"))
        else:
            error = message.get("error")
            error = error if isinstance(error, dict) else {}
            future.set_exception(CallbackError(str(error.get("type", "Error")), str(error.get("message", "")), error))


class Server:
    def __init__(self, config: Config, handler: Handler, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.handler = handler
        self.loop = loop
        self.max_frame = config.payload_limit + FRAME_SLACK
        self.connections: set[_Connection] = set()
        self.pool = _Workers(config.concurrency)
        self.running = 0  # invocations holding one of the `concurrency` slots
        self.waiting: collections.deque[tuple[_Connection, dict[str, Any]]] = collections.deque()
        self.logger = _function_logger(config.function or "handler")
        self.inflight = 0  # running + waiting: what drain waits for and ping reports
        self.idle = asyncio.Event()
        self.idle.set()
        self.draining = False
        self.stopped = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        # Replies built by worker threads, handed to the loop with one wake-up for all that are ready.
        self.replies: collections.deque[tuple[_Connection, bytes]] = collections.deque()
        self.wake_pending = False

    def ready_message(self) -> dict[str, Any]:
        c = self.config
        return {"type": "ready", "protocol": PROTOCOL, "function": c.function, "revision": c.revision,
                "pid": os.getpid(), "concurrency": c.concurrency}

    def dispatch(self, conn: _Connection, message: dict[str, Any], size: int) -> None:
        kind, request_id = message.get("type"), message.get("id")
        if kind == "invoke":
            self.start_invocation(conn, message, size)
        elif kind == "reply":
            conn.resolve(message)
        elif kind == "ping":
            conn.send({"type": "pong", "id": request_id, "inflight": self.inflight})
        elif kind == "configure":
            self.configure(conn, request_id, message.get("secrets"))
        elif kind == "drain":
            self.spawn(self.drain(conn, request_id))
        else:
            conn.send({"type": "error", "id": request_id, "message": f"unknown message type {kind!r}"})

    def configure(self, conn: _Connection, request_id: Any, secrets: Any) -> None:
        if not isinstance(secrets, dict) or not all(isinstance(v, str) for v in secrets.values()):
            conn.send({"type": "error", "id": request_id, "message": "secrets must map names to strings"})
            return
        os.environ.update({str(k): v for k, v in secrets.items()})  # never echoed: values stay in the env
        conn.send({"type": "configured", "id": request_id})

    def start_invocation(self, conn: _Connection, message: dict[str, Any], size: int) -> None:
        request_id = message.get("id")
        if self.draining:
            conn.write(_failure_frame(request_id, "draining", "Draining", "the instance is draining"))
            return
        if size > self.config.payload_limit:
            text = f"the request is {size} bytes, over the payload limit of {self.config.payload_limit}"
            conn.write(_failure_frame(request_id, "payload_too_large", "PayloadTooLarge", text))
            return
        self.inflight += 1
        self.idle.clear()
        if self.running < self.config.concurrency:
            self.begin(conn, message)
        else:
            self.waiting.append((conn, message))  # admitted in arrival order as slots free up

    def begin(self, conn: _Connection, message: dict[str, Any]) -> None:
        self.running += 1
        raw = message.get("context")
        info = raw if isinstance(raw, dict) else {}
        context = Context(conn, str(info.get("invocation_id", "")), float(info.get("deadline") or 0),
                          info.get("caller"))
        capture = _Capture(self.config.log_limit)
        ctx = contextvars.copy_context()
        ctx.run(_capture.set, capture)  # output within ctx, and any context copied from it, is captured
        job = (conn, message.get("id"), message.get("event"), context, capture)
        if self.handler.is_async:
            self.spawn(self.run_async(*job), ctx)
        else:
            # No task and no asyncio future per call: the worker builds the reply and hands back bytes.
            self.pool.submit(functools.partial(ctx.run, self.run_sync, *job))

    def run_sync(
        self, conn: _Connection, request_id: Any, event: Any, context: Context, capture: _Capture
    ) -> None:
        start = time.perf_counter()
        try:
            result = self.handler.call(event, context)
        except BaseException as exc:  # SystemExit in a handler is the handler's failure, not ours
            outcome = _Outcome.failed("handler_error", exc, start)
        else:
            outcome = _serialise(result, self.config.output_limit, start)
        _echo_logs(context.invocation_id, capture)
        self.replies.append((conn, _result_frame(request_id, outcome, capture)))
        # Appended before the flag is read, and the loop clears the flag before it takes the replies: a
        # reply is never left behind, and a wake-up (a write to the loop's self-pipe, a syscall and a loop
        # round each) is saved whenever one is already on its way.
        if not self.wake_pending:
            self.wake_pending = True
            self.loop.call_soon_threadsafe(self.finish_replies)

    async def run_async(
        self, conn: _Connection, request_id: Any, event: Any, context: Context, capture: _Capture
    ) -> None:
        start = time.perf_counter()
        try:
            result = await self.handler.call(event, context)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            outcome = _Outcome.failed("handler_error", exc, start)
        else:
            outcome = _serialise(result, self.config.output_limit, start)
        _echo_logs(context.invocation_id, capture)
        self.finish(conn, _result_frame(request_id, outcome, capture))

    def finish_replies(self) -> None:
        self.wake_pending = False
        replies = self.replies
        while replies:
            self.finish(*replies.popleft())

    def finish(self, conn: _Connection, frame: bytes) -> None:
        conn.write(frame)
        self.running -= 1
        self.inflight -= 1
        if self.waiting:
            self.begin(*self.waiting.popleft())
        elif self.inflight == 0:
            self.idle.set()

    async def watch(self) -> None:
        """Connect out to each host listener as it appears in the socket directory, until draining."""
        tried: set[str] = set()
        directory = self.config.socket_dir
        while not self.draining:  # a draining instance takes no new connections either
            for path in host_listeners(directory, tried):
                self.spawn(self.connect_out(path))
            await asyncio.sleep(SCAN_INTERVAL)

    async def connect_out(self, path: str) -> None:
        try:
            await self.loop.create_unix_connection(lambda: _Connection(self), path)
        except OSError:
            pass  # the listener of a host process that died or gave up: not tried again

    async def drain(self, conn: _Connection | None, request_id: Any) -> None:
        self.draining = True
        await self.idle.wait()
        if conn is not None:
            conn.send({"type": "drained", "id": request_id})
        self.stopped.set()

    def spawn(self, coro: Any, context: contextvars.Context | None = None) -> None:
        task = self.loop.create_task(coro, context=context)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            traceback.print_exception(exc, file=_REAL_STDERR)


class _Workers:
    """The handler threads, all started up front so a pids limit fails the start, not the traffic.

    A plain queue of callables: ThreadPoolExecutor's futures and locks cost measurably per invocation.
    """

    def __init__(self, count: int) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._work, name=f"fnctl-handler-{n}", daemon=True)
                        for n in range(count)]
        for thread in self.threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self.jobs.put(job)

    def stop(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job()
            except BaseException:  # a runtime bug: keep the thread, and say so
                traceback.print_exc(file=_REAL_STDERR)


def _function_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(f"fnctl.function.{name}")
    handler = logging.StreamHandler(sys.stderr)  # the proxy stream: routes to the invocation's capture
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    duration_ms: float
    result_json: bytes = b""
    error: dict[str, str] | None = None

    @classmethod
    def failed(cls, kind: str, exc: BaseException, start: float) -> _Outcome:
        error = {"kind": kind, "type": "fnctl.Abort" if isinstance(exc, Abort) else type(exc).__name__,
                 "message": _message(exc),
                 "traceback": user_traceback(exc)}
        return cls(False, (time.perf_counter() - start) * 1000, error=error)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a user exception whose __str__ fails must still produce a reply
        return f"<{type(exc).__name__}: str() failed>"


def _serialise(result: Any, limit: int, start: float) -> _Outcome:
    duration = (time.perf_counter() - start) * 1000
    floor = _json_size_floor(result, limit)
    if floor > limit:  # refused unserialised: the encoded copy of a huge result could exhaust memory
        return _too_large(floor, limit, duration)
    try:
        text = _RESULT_ENCODER.encode(result)
        # Every character is at least one byte: a string that long is rejected before it is encoded.
        data = text.encode() if len(text) <= limit else None
    except (TypeError, ValueError, RecursionError) as exc:  # ValueError covers NaN and lone surrogates
        error = {"kind": "not_serialisable", "type": type(exc).__name__, "message": str(exc), "traceback": ""}
        return _Outcome(False, duration, error=error)
    if data is None or len(data) > limit:
        return _too_large(len(text) if data is None else len(data), limit, duration)
    return _Outcome(True, duration, result_json=data)


def _too_large(size: int, limit: int, duration: float) -> _Outcome:
    message = f"the result is at least {size} bytes, over the output limit of {limit} bytes"
    error = {"kind": "output_too_large", "type": "OutputTooLarge", "message": message, "traceback": ""}
    return _Outcome(False, duration, error=error)


_FLOOR_BUDGET = 10_000  # values looked at before giving up on the estimate (and cycles end there too)


def _json_size_floor(value: Any, limit: int) -> int:
    """A lower bound of `value`'s size as JSON, counted only until it passes `limit` or the budget runs out.

    Every character of a string is at least one byte, every other value at least one: cheap to add up, and
    enough to refuse a result of many megabytes without building its encoded copy first.
    """
    total, budget, pending = 0, _FLOOR_BUDGET, [value]
    while pending and total <= limit and budget > 0:
        item = pending.pop()
        budget -= 1
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, dict):
            total += 2
            for key, inner in itertools.islice(item.items(), budget):
                total += len(key) + 3 if isinstance(key, str) else 4  # quotes and a colon at least
                pending.append(inner)
        elif isinstance(item, (list, tuple)):
            total += 2
            pending.extend(itertools.islice(item, budget))  # never copies more references than it can look at
        else:
            total += 1
    return total


def _echo_logs(invocation_id: str, capture: _Capture) -> None:
    """Copy an invocation's (already capped) output to the container's log, each line tagged with the
    invocation, so that `fnctl logs` shows it; the engine caps the log file itself."""
    text = capture.text()
    if text:
        tag = f"[{invocation_id[:12]}] "
        _REAL_STDERR.write("".join(tag + line + "\n" for line in text.splitlines()))
        _REAL_STDERR.flush()


def _result_frame(request_id: Any, outcome: _Outcome, capture: _Capture) -> bytes:
    envelope: dict[str, Any] = {"type": "result", "id": request_id, "ok": outcome.ok, "logs": capture.text(),
                                "logs_truncated": capture.truncated, "duration_ms": outcome.duration_ms}
    if not outcome.ok:
        envelope["error"] = outcome.error
        return encode(envelope)
    # Splice the already-serialised result in rather than serialising it a second time.
    head = _ENCODER.encode(envelope).encode("utf-8", "replace")
    body = b"".join((head[:-1], b',"result":', outcome.result_json, b"}"))
    return len(body).to_bytes(4, "big") + body


def _failure_frame(request_id: Any, kind: str, type_: str, message: str) -> bytes:
    error = {"kind": kind, "type": type_, "message": message, "traceback": ""}
    return encode({"type": "result", "id": request_id, "ok": False, "error": error, "logs": "",
                   "logs_truncated": False, "duration_ms": 0.0})


# ---- entry point ------------------------------------------------------------------------------


async def serve(config: Config, handler: Handler) -> int:
    loop = asyncio.get_running_loop()
    server = Server(config, handler, loop)
    server.spawn(server.watch())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: server.spawn(server.drain(None, None)))
    await server.stopped.wait()
    conns = list(server.connections)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()  # flushes pending replies (the `drained` one) first
    if conns:
        await asyncio.wait([c.closed for c in conns], timeout=5)
    server.pool.stop()
    return 0


def main() -> int:
    if __name__ == "__main__":
        # `from fnctl_runtime import CallbackError` in a handler must see this module, not a second copy.
        sys.modules.setdefault("fnctl_runtime", sys.modules[__name__])
    sys.stdout, sys.stderr = _Stream(_REAL_STDERR), _Stream(_REAL_STDERR)
    try:
        config = Config.from_env()
        if os.path.isdir(config.code_dir):
            os.chdir(config.code_dir)  # relative paths in handlers resolve against their code, as on Lambda
        handler = load_handler(config)
    except (Exception, SystemExit) as exc:  # a module calling sys.exit() at import fails the load too
        return _startup_failed(_socket_dir(), exc)
    return asyncio.run(serve(config, handler))


if __name__ == "__main__":
    sys.exit(main())
