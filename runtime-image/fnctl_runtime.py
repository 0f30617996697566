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

import collections
import contextlib
import contextvars
import fcntl
import gc
import importlib
import io
import itertools
import json
import math
import os
import re
import select
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable

# Only what every start needs is imported here: a synchronous handler's runtime never imports asyncio (nor
# concurrent.futures and logging, which it pulls in: most of the runtime's start-up to its `ready` frame).
# An async handler's runtime imports them once its handler is loaded (`_import_asyncio`); `context.logger`
# imports logging when first used, and a traceback to print imports traceback (`_traceback`); typing is for
# the type checker alone.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import concurrent.futures
    import logging
    import traceback
    from typing import Any

PROTOCOL = 1
MIB = 1 << 20
READ_SIZE = 64 * 1024  # bytes per read: several frames at once under load; past 128 KiB each read maps fresh pages
FRAME_SLACK = 64 * 1024  # room for the envelope around a payload at the limit
LISTENER_PREFIX, LISTENER_SUFFIX = "h-", ".sock"  # the host's listeners; every other name is ignored
SCAN_INTERVAL = 0.02  # seconds between looks for new host listeners, while they change (`Server.watch`)
IDLE_SCAN_INTERVAL = 0.1  # the same once the listeners did not change for SETTLE seconds
SETTLE = 2.0
ATTACH_WAIT = 5.0  # how long a worker waits for the host to accept its own connection, then uses the first
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


class Config:
    """The instance's settings, from its environment. A plain class, as _Outcome: dataclasses (and inspect,
    which it imports) are not worth importing at every start for two classes."""

    __slots__ = ("handler", "code_dir", "deps_dir", "socket_dir", "function", "revision", "concurrency",
                 "payload_limit", "output_limit", "log_limit")

    def __init__(self, *, handler: str, code_dir: str, deps_dir: str, socket_dir: str, function: str,
                 revision: str, concurrency: int, payload_limit: int, output_limit: int, log_limit: int) -> None:
        self.handler, self.code_dir, self.deps_dir, self.socket_dir = handler, code_dir, deps_dir, socket_dir
        self.function, self.revision, self.concurrency = function, revision, concurrency
        self.payload_limit, self.output_limit, self.log_limit = payload_limit, output_limit, log_limit

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


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _frame_encoder(fallback: json.JSONEncoder) -> Callable[[Any], str]:
    """What encodes the runtime's frames (every call, result envelope and reply) and a handler's result, as
    `fallback` would: json's C encoder made once, not per message as JSONEncoder.encode does (half of an
    encode's ~10 µs here, twice per call). Without the circular-reference check: a cycle ends in
    RecursionError instead of ValueError (a result's is reported as not serialisable either way)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return fallback.encode
    chunks = make(None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, fallback.allow_nan)
    return lambda value: "".join(chunks(value, 0))


_ENCODE = _frame_encoder(_ENCODER)
_encode_string = json.encoder.encode_basestring  # a str as _ENCODE writes it (no ASCII escaping)
_ENCODE_RESULT = _frame_encoder(_RESULT_ENCODER)  # no NaN or Infinity in a result: refused as not JSON


def encode(message: dict[str, Any]) -> bytes:
    # "replace": a lone surrogate in a message or log must not make the reply unsendable
    body = _ENCODE(message).encode("utf-8", "replace")
    return len(body).to_bytes(4, "big") + body


# A call's keys around its parts' JSON text, as `encode` would write the dict of them: no dict built and walked
# per call (~2 of the ~3.5 us its encoding took here). The id is the runtime's own ("c17", "w2.5", "t3").
_CALL = '{"type":"call","id":"%s","invocation_id":%s,"method":%s,"params":%s}'


def _call_frame(call_id: str, invocation_id: str, method: str, params: dict[str, Any]) -> bytes:
    body = (_CALL % (call_id, _ENCODE(invocation_id), _ENCODE(method), _ENCODE(params))).encode("utf-8", "replace")
    return len(body).to_bytes(4, "big") + body


_SCAN = _DECODER.scan_once


def _decode(text: str) -> Any:
    """A frame's JSON value. fnctl's host writes frames without surrounding whitespace: the scanner reads the
    value at once, without JSONDecoder.decode's Python frames and whitespace matches (a fifth of a reply's
    decoding); anything else takes the full decode, whose ValueError says what is wrong."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        end = -1
    return value if end == len(text) else _DECODER.decode(text)


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


_CO_VARARGS, _CO_COROUTINE = 0x04, 0x80  # code flags (inspect's names): *args, `async def`


class Handler:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        plain = _plain_function(fn)
        if plain:  # most handlers: read off the code object, without importing inspect at every start
            self.is_async = bool(fn.__code__.co_flags & _CO_COROUTINE)
            self.takes_context = _takes_context_plain(fn)
            return
        import inspect  # anything else (a class instance, a partial, a decorated function): inspect decides

        call = getattr(fn, "__call__", None)
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)
        self.takes_context = _takes_context(fn)

    def call(self, event: Any, context: Context) -> Any:
        return self.fn(event, context) if self.takes_context else self.fn(event)


def _plain_function(fn: Any) -> bool:
    """Whether `fn` is a function whose code object says all inspect would: no wrapper, no signature of its
    own (`__wrapped__`, `__signature__`), not marked a coroutine function by anything but its code."""
    return (type(fn) is type(_plain_function) and not hasattr(fn, "__wrapped__")
            and not hasattr(fn, "__signature__") and not hasattr(fn, "_is_coroutine_marker"))


def _takes_context_plain(fn: Any) -> bool:
    code = fn.__code__
    if code.co_flags & _CO_VARARGS or code.co_argcount >= 2:  # co_argcount: positional-only ones included
        return True
    if code.co_argcount == 1:
        return False
    raise TypeError("the handler must accept (event) or (event, context)")


def _takes_context(fn: Callable[..., Any]) -> bool:
    import inspect

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
    import importlib.util  # only for a handler given by file (module.attr needs none of it)

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


def _traceback() -> Any:
    """The traceback module (with linecache and tokenize), imported when a traceback is first printed or
    reported rather than at every start."""
    import traceback

    return traceback


def user_traceback(exc: BaseException) -> str:
    """The traceback with this runtime's and importlib's frames removed: what the user's code did."""
    traceback = _traceback()
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
    report = {"type": type(exc).__name__, "message": _missing_library(exc) or _message(exc), "traceback": tb}
    _REAL_STDERR.write(f"fnctl-runtime: cannot load the handler\n{tb}")
    _REAL_STDERR.flush()
    _report_to_hosts(directory, encode({"type": "startup_failed", "protocol": PROTOCOL, "error": report}))
    return 3


_DLOPEN_FAILED = re.compile(r"([^\s:/]+\.so[.\d]*): cannot open shared object file")


def _missing_library(exc: BaseException) -> str | None:
    """A library the loader did not find, anywhere in the chain, said plainly: wrappers hide it (numpy's "you
    should not try to import numpy from its source directory"). From an extension that links it (ImportError
    naming the extension) or a ctypes load (OSError, named by the user's module that asked)."""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        found = _DLOPEN_FAILED.search(_message(node)) if isinstance(node, OSError | ImportError) else None
        if found:
            needed_by = node.name if isinstance(node, ImportError) and node.name else _importing_module(node)
            return (
                f"missing shared library {found[1]} in the base image (needed by {needed_by}): rebuild the base "
                "with `bash scripts/build-base-image.sh`, or use a wheel that bundles it"
            )
        pending += [node.__cause__, node.__context__]
    return None


def _importing_module(exc: BaseException) -> str:
    """The innermost module outside the standard library (and this runtime) that `exc` passed through."""
    stdlib = os.path.dirname(os.path.abspath(os.__file__))
    name = "the handler's module"
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith("<") and _is_user_frame(filename) and not filename.startswith(stdlib + os.sep):
            name = str(tb.tb_frame.f_globals.get("__name__", name))
        tb = tb.tb_next
    return name


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


class CognitoIdentity:
    """`context.identity` as AWS Lambda shapes it. fnctl has no Cognito: both ids are None, as on Lambda for
    any invocation that does not come from its mobile SDK (fnctl's caller is `context.caller`)."""

    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self) -> None:
        self.cognito_identity_id: str | None = None
        self.cognito_identity_pool_id: str | None = None


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
    """The handler's second argument: fnctl's names, and AWS Lambda's beside them with fnctl's values
    (docs/runtime.md): `aws_request_id` is the invocation id, `function_version` the revision,
    `invoked_function_arn` an ARN-shaped `arn:fnctl:lambda:local:000000000000:function:NAME:REVISION`,
    `memory_limit_in_mb` the sandbox's memory limit, `log_group_name` `/fnctl/NAME`, `log_stream_name`
    `REVISION/<instance host name>`, `identity` without Cognito ids and `client_context` None."""

    client_context = None
    Abort = Abort

    def __init__(self, server: Server, channel: Any, invocation_id: str, deadline: float, caller: Any) -> None:
        self.function_name = server.config.function
        self.revision = self.function_version = server.config.revision
        self.invocation_id = self.aws_request_id = invocation_id
        self.deadline = deadline
        self.caller: dict[str, Any] | None = caller if isinstance(caller, dict) else None
        self.memory_limit_in_mb = server.memory_limit_mb
        self.invoked_function_arn, self.log_group_name, self.log_stream_name = server.lambda_names
        self.identity = CognitoIdentity()
        self.db = Database(self)
        self._channel = channel

    @property
    def logger(self) -> logging.Logger:
        """The function's logger (`[LEVEL] message` lines in the invocation's logs), made on first use: an
        instance whose handler never logs never imports logging."""
        return _function_logger(self.function_name or "handler")

    def remaining_time(self) -> float:
        """Seconds left before the deadline."""
        return max(0.0, self.deadline - time.time())

    def get_remaining_time_in_millis(self) -> int:
        """Lambda's name: whole milliseconds left before the deadline."""
        return max(0, int((self.deadline - time.time()) * 1000))

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Ask the host to run `method`; blocks the calling thread until the reply comes."""
        try:
            return self._channel.call(self.invocation_id, method, params or {}, self.deadline)
        except CallbackError as exc:
            raise CallbackError(exc.type, exc.message, exc.details) from None  # a fresh traceback: no runtime frames

    def acall(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """`await context.acall(...)`: the channel's coroutine itself (no second coroutine around it)."""
        return self._channel.acall(self.invocation_id, method, params or {}, self.deadline)


def _memory_limit_mb() -> int:
    """The sandbox's memory limit (its cgroup's, v2 or v1), else the machine's memory, in MiB."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 60):  # "max" or a huge number: no limit there
            return int(text) // MIB
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MIB
    except (ValueError, OSError):
        return 0


def _lambda_names(config: Config) -> tuple[str, str, str]:
    name, revision = config.function or "handler", config.revision or "0"
    arn = f"arn:fnctl:lambda:local:000000000000:function:{name}:{revision}"
    return arn, f"/fnctl/{name}", f"{revision}/{socket.gethostname()}"


# ---- connections and the server ---------------------------------------------------------------


class _Connection:
    """One host connection: parses frames and multiplexes requests and callbacks by id.

    Read into a buffer of its own: an asyncio.BufferedProtocol under an async handler's loop (`serve`:
    asyncio's plain protocols get a fresh 256 KiB bytes object per read, an allocation of that size for every
    frame, a few µs of a call's round trip), and the same methods under a synchronous handler's `_PollLoop`."""

    def __init__(self, server: Server, path: str = "") -> None:
        self.server = server
        self.path = path  # the host's listener it came through: where a worker connects when offered
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        # Calls awaiting their reply: asyncio futures (acall, on the loop) or concurrent ones (call from a thread
        # an async handler started, which waits on it directly); both are resolved on the loop by `resolve`.
        self.calls: dict[str, Any] = {}
        self.deadlines: dict[str, tuple[float, str]] = {}  # acall id -> (deadline, method), for the sweep
        self.next_call = 0
        self.thread_calls = itertools.count(1)  # ids of calls from other threads ("t1", ...): next() is atomic
        self.closed = server.loop.create_future()  # done once connection_lost ran
        self.id = 0
        self.fd = -1  # the socket, written directly (under the shared lock) while workers write it too
        self.use_frame = b""  # tells a worker which connection its next invocation is from
        self.use_direct = b""  # the same, with the host's offer to send that worker its invocations itself
        self.incoming = memoryview(bytearray(READ_SIZE))
        self.poller: Any = None  # a poll of this socket and the loop's selector, for `reply_now`
        self.watches_loop = True  # whether that poll sees what else the loop watches (its selector)
        self.workers = not server.handler.is_async  # whether its invocations run in worker processes

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        server.next_conn += 1
        self.id = server.next_conn
        self.use_frame = self.use_direct = encode({"type": "use", "conn": self.id})
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        server.connections.add(self)
        self.send(server.ready_message())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.incoming

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.incoming[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            size = int.from_bytes(buf[:4], "big")
            if size > self.server.max_frame:
                self.abort(f"frame of {size} bytes is over the limit of {self.server.max_frame}")
                return
            if len(buf) < 4 + size:
                return
            if buf.startswith(_WORKER_REPLY, 4):  # fnctl's host writes these keys first: passed on undecoded
                call_id = buf[3 + len(_WORKER_REPLY) : 52].decode("ascii", "replace")
                worker = self.server.workers.get(_worker_index(call_id))
                if worker is not None:
                    worker.write(bytes(buf[: 4 + size]))
                del buf[: 4 + size]
                continue
            body = bytes(buf[4 : 4 + size])
            del buf[: 4 + size]
            # A synchronous handler's invocation is decoded whole once, by the worker that runs it: here only
            # its header (a 600-byte trigger event decoded twice was ~5 % of the instance's CPU per request).
            message = _invoke_header(body) if self.workers else None
            if message is None:
                try:
                    message = _decode(body.decode())
                except ValueError:  # UnicodeDecodeError included
                    message = None
            if not isinstance(message, dict):
                self.abort("frame is not a JSON object")
                return
            self.server.dispatch(self, message, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fd = -1
        self.server.connections.discard(self)
        self.deadlines.clear()
        for future in list(self.calls.values()):  # a copy: other threads add and remove calls
            if not future.done():
                future.set_exception(CallbackError("ConnectionLost", "the host connection closed"))
        self.server.connection_gone(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self, reason: str) -> None:
        _REAL_STDERR.write(f"fnctl-runtime: closing a connection: {reason}\n")
        self.close()

    def close(self) -> None:
        self.fd = -1
        if self.transport is not None:
            self.transport.close()

    def write(self, frame: bytes) -> None:
        lock = self.server.write_lock
        if lock is not None:  # workers write this connection too: whole frames, one writer at a time
            if self.fd >= 0:
                _write_all(self.fd, frame, lock)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send(self, message: dict[str, Any]) -> None:
        self.write(encode(message))

    def call(self, invocation_id: str, method: str, params: dict[str, Any], deadline: float) -> Any:
        """`context.call` from an async handler: only from a thread of its own, never the event loop's."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.server.loop:
            raise RuntimeError("context.call() would block the event loop: use `await context.acall(...)`")
        return self.call_from_thread(invocation_id, method, params, deadline)

    async def acall(self, invocation_id: str, method: str, params: dict[str, Any], deadline: float) -> Any:
        """The frame is written at once. When this call is all the event loop has to do (one invocation in
        flight, no callback ready), its reply is read here (`reply_now`); else, or when it is late, the reply
        resolves a future. No task and no timer per call: one sweep of the server fails the calls past their
        deadline (`Server.sweep`)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise CallbackError("ConnectionLost", "the host connection is closed")
        self.next_call += 1
        call_id = f"c{self.next_call}"
        frame = _call_frame(call_id, invocation_id, method, params)
        server = self.server  # an async handler's: no worker writes its connections, so no write lock
        sent, alone = 0, server.running == 1 and not server.loop._ready  # type: ignore[attr-defined]
        if alone and self.fd >= 0 and not transport.get_write_buffer_size():
            try:  # to the socket itself, as the sync path writes (asyncio's write costs ~2.5 us more here)
                sent = os.write(self.fd, frame)
            except OSError:  # full, or broken: the transport's own write buffers it or reports it
                pass
        if sent == len(frame):
            future = self.reply_now(call_id, deadline)
            if not isinstance(future, _Reply):  # the reply itself
                if future.get("ok"):
                    return future.get("result")
                raise _reply_error(future)
        else:  # the loop has more to do, or the frame did not all go: the rest goes when the loop flushes it
            transport.write(frame[sent:] if sent else frame)
            future = self.calls[call_id] = _Reply(server.loop)
        if deadline:
            self.deadlines[call_id] = (deadline, method)
            server.arm_sweep()
        try:
            return await future
        finally:
            self.calls.pop(call_id, None)
            self.deadlines.pop(call_id, None)

    def reply_now(self, call_id: str, deadline: float) -> dict[str, Any] | _Reply:
        """Wait for the reply to `call_id` on the socket itself, for as long as the event loop would have slept:
        until its next timer is due or the call's deadline, or until anything else it watches is ready (the poll
        includes the loop's own selector). The reply then ends the call within the handler's own step, without a
        round of the loop (a wake-up, an epoll_wait and a callback: a third of the round trip here). The reply
        alone in one read (the usual case) is returned as it is: no future, no callback. Anything else first
        registers the call's future in `calls`, then goes through `data_received` as the loop would handle it;
        that future is returned (resolved or not) once the reply came or the wait is over, for the caller to
        await. Not a fixed short bound: a poll timeout of 1 ms cost 15-50 us per call here against one of 20 ms
        or more (a timer that near is programmed into the CPU's, an exit of this virtual machine each way)."""
        fd, incoming, loop = self.fd, self.incoming, self.server.loop
        if self.poller is None:
            self.poller = select.poll()
            self.poller.register(fd, select.POLLIN)
            selector = getattr(loop, "_selector", None)
            if selector is None:  # not a selector loop: what else it watches is unknown, so only a brief wait
                self.watches_loop = False
            else:
                self.poller.register(selector.fileno(), select.POLLIN)
        now = time.monotonic()
        if not self.watches_loop:
            give_up = now + BRIEF_WAIT
        else:
            scheduled = loop._scheduled  # type: ignore[attr-defined]
            give_up = scheduled[0].when() if scheduled else math.inf  # the loop's clock is time.monotonic
            if deadline:
                give_up = min(give_up, now + deadline - time.time())
        future: _Reply | None = None
        while future is None or not future.done():
            left = give_up - time.monotonic()
            if left <= 0:
                break
            ready = self.poller.poll(None if left == math.inf else math.ceil(left * 1000))
            if not ready or ready[0][0] != fd:  # in the order registered: this socket first when it is ready
                break  # the wait is over, or the loop has something else to do: it takes over
            try:
                got = os.readv(fd, [incoming])
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                break  # the loop's own read reports it
            if not got:
                break  # the end of the connection: the loop's own read sees it too
            if future is None and not self.buf and int.from_bytes(incoming[:4], "big") == got - 4:
                try:  # one whole frame: this call's reply, unless the host sent something else first
                    message = _decode(str(incoming[4:got], "utf-8"))
                except ValueError:
                    message = None
                if isinstance(message, dict) and message.get("id") == call_id and message.get("type") == "reply":
                    return message
            if future is None:
                future = self.calls[call_id] = _Reply(self.server.loop)
            self.data_received(incoming[:got])
        if future is None:
            future = self.calls[call_id] = _Reply(self.server.loop)
        return future

    def call_from_thread(self, invocation_id: str, method: str, params: dict[str, Any], deadline: float) -> Any:
        """`call` for a thread an async handler started: the frame is sent by one callback on the loop and the
        thread waits on a concurrent future that `resolve` completes."""
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
            future.set_exception(_reply_error(message))


class _Reply:
    """What `await context.acall(...)` waits for: an asyncio-compatible future (a task awaits it as it awaits a
    Future) that resumes the waiting task at once when the reply's frame resolves it, from the read callback,
    in the task's own context. asyncio's Future schedules that resumption for the loop's next round instead:
    one more epoll_wait and callback handle per call, ~12 µs of a ~100 µs round trip here. Cancelling it (a
    `wait_for` timeout, say) resumes the task in the next round, as a Future would."""

    __slots__ = ("_asyncio_future_blocking", "_loop", "_state", "_value", "_wake", "_context")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._asyncio_future_blocking = False  # what a task checks of what its coroutine yielded
        self._loop = loop
        self._state = 0  # 0: pending, 1: result, 2: exception, 3: cancelled
        self._value: Any = None
        self._wake: Callable[[Any], None] | None = None
        self._context: contextvars.Context | None = None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def add_done_callback(self, fn: Callable[[Any], None], *, context: contextvars.Context | None = None) -> None:
        if self._state:
            self._loop.call_soon(fn, self, context=context)
        else:
            self._wake, self._context = fn, context

    def remove_done_callback(self, fn: Callable[[Any], None]) -> int:
        if self._wake is not None and self._wake == fn:
            self._wake = None
            return 1
        return 0

    def done(self) -> bool:
        return self._state != 0

    def cancelled(self) -> bool:
        return self._state == 3

    def result(self) -> Any:
        if self._state == 1:
            return self._value
        if self._state == 0:
            raise asyncio.InvalidStateError("the reply has not come")
        raise self._value

    def exception(self) -> BaseException | None:
        if self._state == 1:
            return None
        if self._state == 0:
            raise asyncio.InvalidStateError("the reply has not come")
        if self._state == 3:
            raise self._value
        return self._value  # type: ignore[no-any-return]

    def set_result(self, value: Any) -> None:
        self._settle(1, value, now=True)

    def set_exception(self, exc: BaseException) -> None:
        self._settle(2, exc, now=True)

    def cancel(self, msg: Any = None) -> bool:
        if self._state:
            return False
        self._settle(3, asyncio.CancelledError(msg), now=False)  # never inside the canceller's own step
        return True

    def _settle(self, state: int, value: Any, now: bool) -> None:
        if self._state:
            return
        self._state, self._value = state, value
        wake, context, self._wake, self._context = self._wake, self._context, None, None
        if wake is None:
            return
        if not now or asyncio.current_task(self._loop) is not None:  # never one task's step inside another's
            self._loop.call_soon(wake, self, context=context)
        elif context is None:
            wake(self)
        else:
            context.run(wake, self)

    def __await__(self) -> Any:
        if not self._state:
            self._asyncio_future_blocking = True
            yield self
        return self.result()

    __iter__ = __await__


def _reply_error(message: dict[str, Any]) -> CallbackError:
    error = message.get("error")
    error = error if isinstance(error, dict) else {}
    return CallbackError(str(error.get("type", "Error")), str(error.get("message", "")), error)


BRIEF_WAIT = 0.001  # seconds an acall may hold an event loop whose selector it cannot see (reply_now)
SWEEP_INTERVAL = 0.05  # seconds between looks for async calls past their deadline (so up to that late)


class Server:
    """The runtime's first process: the host connections, the queue of invocations and their slots.

    An async handler runs here, on the event loop (one process, any number of invocations). A synchronous one
    runs in worker processes forked from this one after the handler was imported (`_Worker`), each serving
    one invocation at a time on its own main thread, as AWS Lambda or a plain script would run it: the first
    is forked by the first invocation (an instance that was never invoked is one process), more as
    concurrent invocations need them, up to `concurrency`; they stay.
    """

    def __init__(self, config: Config, handler: Handler, loop: asyncio.AbstractEventLoop | _PollLoop) -> None:
        self.config = config
        self.handler = handler
        self.loop = loop
        self.max_frame = config.payload_limit + FRAME_SLACK
        self.connections: set[_Connection] = set()
        self.running = 0  # invocations holding one of the `concurrency` slots
        self.waiting: collections.deque[tuple[_Connection, dict[str, Any], bytes]] = collections.deque()
        self.memory_limit_mb = _memory_limit_mb()
        self.lambda_names = _lambda_names(config)
        self.inflight = 0  # running + waiting: what drain waits for and ping reports
        self.draining = False
        self.drains: list[tuple[_Connection | None, Any]] = []  # who asked to drain: told `drained` once idle
        self.on_stopped: Callable[[], None] = lambda: None  # what ends the loop (set by `serve`)
        self.connect: Callable[[str], None] = lambda path: None  # connects to a host listener (set by `serve`)
        self.stopping = False  # workers exiting now are expected to
        self.tasks: set[asyncio.Task[None]] = set()
        self.workers: dict[int, _Worker] = {}  # by index, which their call ids carry ("w3.17")
        self.idle_workers: list[_Worker] = []
        self.die_with_us: Callable[[], None] | None = None  # what a new worker calls first (`_pdeathsig`)
        # One byte per worker, shared with the workers (an anonymous shared mapping made before the first fork):
        # the count of invocations it finished, mod 256, written before its result. Reading it tells the
        # supervisor which slots are free without a note on the link per invocation (a write in the worker and
        # a read here: two of the seven system calls of an invocation); a note comes only when asked (`wake`).
        self.finished: Any = None
        # Whether a sweep is due: one at a time. A flag, not the timer's handle: `_PollLoop.call_later` returns
        # none, and a sweep armed per invocation piled up timers that each re-armed itself every 50 ms while a
        # deadline was pending (~100,000 timers after a few thousand invocations; the supervisor's CPU per
        # invocation grew with them, 300-800 us here).
        self.sweep_armed = False
        self.next_conn = 0
        # Workers handed to a host that sends them its invocations itself (`direct`, docs/protocol.md): the
        # supervisor never gives them work again, and their slots are not its to fill.
        self.dedicated = 0
        self.listeners_changed = time.monotonic()  # when `watch` last saw a listener come or go
        # Workers write to the host connections too (synchronous handlers): every write holds this lock.
        self.write_lock: int | None = None if handler.is_async else _new_write_lock()

    def ready_message(self) -> dict[str, Any]:
        c = self.config
        return {"type": "ready", "protocol": PROTOCOL, "function": c.function, "revision": c.revision,
                "pid": os.getpid(), "concurrency": c.concurrency}

    def dispatch(self, conn: _Connection, message: dict[str, Any], body: bytes) -> None:
        kind, request_id = message.get("type"), message.get("id")
        if kind == "invoke":
            self.start_invocation(conn, message, body)
        elif kind == "reply":
            if isinstance(request_id, str) and request_id.startswith("w"):
                worker = self.workers.get(_worker_index(request_id))
                if worker is not None:  # else: it is gone, and the call with it
                    worker.write(len(body).to_bytes(4, "big") + body)
            else:
                conn.resolve(message)
        elif kind == "ping":
            self.collect()
            conn.send({"type": "pong", "id": request_id, "inflight": self.inflight + self.busy_direct()})
        elif kind == "configure":
            self.configure(conn, request_id, message.get("secrets"), body, message.get("workers") is True,
                           message.get("direct") is True)
        elif kind == "drain":
            self.drain(conn, request_id)
        else:
            conn.send({"type": "error", "id": request_id, "message": f"unknown message type {kind!r}"})

    def configure(self, conn: _Connection, request_id: Any, secrets: Any, body: bytes, workers: bool,
                  direct: bool = False) -> None:
        if not isinstance(secrets, dict) or not all(isinstance(v, str) for v in secrets.values()):
            conn.send({"type": "error", "id": request_id, "message": "secrets must map names to strings"})
            return
        if workers and conn.path and not self.handler.is_async:
            # The host keeps its listener up for our workers: each connects there itself, on its first
            # invocation from this connection, and the host's replies to its calls reach it directly.
            conn.use_frame = conn.use_direct = encode({"type": "use", "conn": conn.id, "attach": conn.path})
            if direct:  # the host sends invocations straight to the workers that accept: they attach saying so
                conn.use_direct = encode({"type": "use", "conn": conn.id, "attach": conn.path, "direct": True})
        os.environ.update({str(k): v for k, v in secrets.items()})  # never echoed: values stay in the env
        for worker in self.workers.values():  # forked before: they learn them before their next invocation
            worker.write(len(body).to_bytes(4, "big") + body)
        _batch_scheduling()  # started: from now on it serves (a start stays as quick as it was)
        conn.send({"type": "configured", "id": request_id})

    def start_invocation(self, conn: _Connection, message: dict[str, Any], body: bytes) -> None:
        request_id = message.get("id")
        if self.draining:
            conn.write(_failure_frame(request_id, "draining", "Draining", "the instance is draining"))
            return
        if len(body) > self.config.payload_limit:
            text = f"the request is {len(body)} bytes, over the payload limit of {self.config.payload_limit}"
            conn.write(_failure_frame(request_id, "payload_too_large", "PayloadTooLarge", text))
            return
        if not self.idle_workers and self.workers:
            self.collect()  # slots freed since: admitted before this one (the queue keeps arrival order)
        self.inflight += 1
        if self.running + self.dedicated < self.config.concurrency:
            self.begin(conn, message, body)
        else:
            self.waiting.append((conn, message, body))  # admitted in arrival order as slots free up
            self.watch_workers()  # from now on each freed slot admits the next at once

    def begin(self, conn: _Connection, message: dict[str, Any], body: bytes) -> None:
        self.running += 1
        if not self.handler.is_async:
            try:
                worker = self.idle_workers.pop() if self.idle_workers else self.fork_worker()
            except OSError as exc:  # e.g. the pids limit: this invocation fails, the instance lives on
                self.finish(conn, _failure_frame(message.get("id"), "handler_error", type(exc).__name__,
                                                 f"{exc} (starting a worker process)"))
                return
            worker.conn = conn
            worker.invocation_id, worker.deadline = _invocation_of(message)
            worker.start(conn, body, bool(self.waiting) or self.draining)
            if worker.deadline:
                self.arm_sweep()
            return
        raw = message.get("context")
        info = raw if isinstance(raw, dict) else {}
        context = Context(self, conn, str(info.get("invocation_id", "")), float(info.get("deadline") or 0),
                          info.get("caller"))
        capture = _Capture(self.config.log_limit)
        ctx = contextvars.copy_context()
        ctx.run(_capture.set, capture)  # output within ctx, and any context copied from it, is captured
        self.spawn(self.run_async(conn, message.get("id"), message.get("event"), context, capture), ctx)

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
        logs = capture.text()
        _echo_logs(context.invocation_id, logs)
        self.finish(conn, _result_frame(request_id, outcome, logs, capture.truncated))

    def finish(self, conn: _Connection, frame: bytes) -> None:
        if frame:
            conn.write(frame)
        self.running -= 1
        self.inflight -= 1
        if self.waiting:
            self.begin(*self.waiting.popleft())
        elif self.inflight == 0 and self.drains:
            self.settle()

    def running_direct(self, worker: _Worker) -> bool:
        """Whether `worker` runs an invocation a host sent it (its begun and ended counters differ)."""
        shared, c = self.finished, self.config.concurrency + 1
        return shared[_BEGUN * c + worker.index] != shared[_ENDED * c + worker.index]

    def busy_direct(self) -> int:
        """How many dedicated workers run an invocation their host sent them."""
        return sum(1 for w in self.workers.values() if w.direct and self.running_direct(w)) if self.dedicated else 0

    def settle(self) -> None:
        """Draining, nothing in flight here: done once no dedicated worker runs one either; until then each
        busy one is asked for a note when it ends (`wake`), which brings the supervisor back here."""
        if not self.busy_direct():
            self.drained()
            return
        for worker in self.workers.values():
            if worker.direct and self.running_direct(worker):
                worker.wake()

    # ---- worker processes (synchronous handlers) ----

    def fork_worker(self) -> _Worker:
        index = len(self.workers) + 1
        while index in self.workers:
            index += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        supervisor = os.getpid()
        if self.die_with_us is None:
            self.die_with_us = _pdeathsig()  # loaded here, before the fork: the workers share its pages
            import mmap  # only a synchronous handler's runtime that forks needs it

            # shared (MAP_SHARED) with the workers: per worker, invocations finished, whether a host took it
            # (`direct`), that host's invocations begun and ended; then whether the instance drains
            self.finished = mmap.mmap(-1, _SHARED_ROWS * (self.config.concurrency + 1) + 1)
            if self.draining:
                self.finished[-1] = 1
            gc.freeze()  # what the import made stays out of the collector's way: fewer pages copied per worker
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:  # the worker: it never returns to the event loop
            code = 70
            try:
                ours.close()
                host_fds = self._forget_in_worker(supervisor)
                code = _Worker.serve(self, theirs, index, host_fds)
            except BaseException:  # noqa: BLE001 -- a runtime bug: say so, exit non-zero
                _traceback().print_exc(file=_REAL_STDERR)
            finally:
                _REAL_STDERR.flush()
                os._exit(code)
        theirs.close()
        worker = self.workers[index] = _Worker(self, index, pid, ours, {c.id for c in self.connections if c.fd >= 0})
        return worker

    def _forget_in_worker(self, supervisor: int) -> dict[int, int]:
        """In a new worker: drop the supervisor's links to other workers and its signal handling, so that only
        the supervisor reads the host and a worker's exit is seen at once. Returns its copies of the host
        connections (id -> fd), which it writes its calls and results to."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for worker in self.workers.values():
            with contextlib.suppress(OSError):
                os.close(worker.sock.fileno())
        host_fds = {conn.id: conn.fd for conn in self.connections if conn.fd >= 0}
        self.workers, self.idle_workers, self.connections = {}, [], set()
        if self.die_with_us is not None:
            self.die_with_us()
        if os.getppid() != supervisor:
            os._exit(0)  # the supervisor died before that took effect
        return host_fds

    def worker_done(self, worker: _Worker, frame: bytes) -> None:
        """A worker's invocation ended; `frame` is its result to pass on (empty: it wrote it itself)."""
        conn, worker.conn = worker.conn, None
        if self.finished[_OWNED * (self.config.concurrency + 1) + worker.index]:
            worker.direct = True
            self.dedicated += 1  # its host sends it invocations from now on: never this process again
        else:
            self.idle_workers.append(worker)
        if conn is not None:
            self.finish(conn, frame)
        if worker.conn is None:  # not given the next invocation by `finish`: nothing to wake up for
            worker.watch(False)

    def collect(self) -> None:
        """Free the slots of the workers whose invocation ended (their byte in `finished`): a worker's end is
        not worth a wake-up of this process unless an invocation waits for its slot (`watch_workers`). A worker
        that passes its result back through the link (`relay`) is freed by that result instead."""
        for worker in list(self.workers.values()):
            if worker.conn is not None and not worker.relay and self.finished[worker.index] == worker.started:
                self.worker_done(worker, b"")
            elif worker.direct:
                self.undedicate(worker)

    def undedicate(self, worker: _Worker) -> None:
        """A dedicated worker whose host connection ended (it let go: its `_drop`) comes back once idle."""
        if not self.finished[_OWNED * (self.config.concurrency + 1) + worker.index] and not self.running_direct(worker):
            worker.direct = False
            self.dedicated -= 1
            self.idle_workers.append(worker)
            if self.waiting and self.running + self.dedicated < self.config.concurrency:
                self.begin(*self.waiting.popleft())  # its slot is free again

    def watch_workers(self) -> None:
        """From now on a busy worker's end wakes this process: each is asked for a note (`wake`)."""
        for worker in self.workers.values():
            if worker.conn is not None and not worker.relay:
                worker.wake()

    def connection_gone(self, conn: _Connection) -> None:
        """The host hung up: calls that workers make for its invocations fail (their results are dropped)."""
        for worker in self.workers.values():
            if conn.id in worker.has or worker.conn is conn:
                worker.has.discard(conn.id)
                invocation = worker.invocation_id if worker.conn is conn else ""
                worker.write(encode({"type": "lost", "conn": conn.id, "invocation_id": invocation}))

    def reap(self) -> None:
        """SIGCHLD: a worker that exits unasked takes the instance with it, with its exit code (137 for the
        OOM killer's SIGKILL), as the single process it stands for would have: the host then reports the
        crash or the out-of-memory kill and replaces the instance."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers.values() if w.pid == pid), None)
            if worker is None or self.stopping:
                continue  # an orphan the runtime inherited as PID 1, or a worker told to stop
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            _REAL_STDERR.write(f"fnctl-runtime: the handler's worker process {pid} exited with code {code}\n")
            _REAL_STDERR.flush()
            os._exit(code)

    def arm_sweep(self) -> None:
        if not self.sweep_armed:
            self.sweep_armed = True
            self.loop.call_later(SWEEP_INTERVAL, self.sweep)

    def sweep(self) -> None:
        """Fail the async calls past their deadline and tell each worker whose invocation passed its deadline
        (a call it waits for, or makes from then on, fails with Timeout); look again while any are waiting."""
        self.sweep_armed = False
        now, waiting = time.time(), False
        if self.workers:
            self.collect()  # no deadline notice for an invocation that ended, nor a sweep kept up for it
        for worker in self.workers.values():
            if worker.conn is not None and worker.deadline:
                if worker.deadline > now:
                    waiting = True
                else:
                    worker.deadline = 0.0  # told once
                    worker.write(encode({"type": "deadline", "invocation_id": worker.invocation_id}))
        for conn in self.connections:
            for call_id, (deadline, method) in list(conn.deadlines.items()):
                if deadline > now:
                    waiting = True
                    continue
                del conn.deadlines[call_id]
                future = conn.calls.get(call_id)
                if future is not None and not future.done():
                    future.set_exception(CallbackError("Timeout", f"no reply to {method!r} before the deadline"))
        if waiting:
            self.arm_sweep()

    # ---- connections, drain ----

    def watch(self, tried: set[str]) -> None:
        """Connect out to each host listener as it appears in the socket directory, until draining: a draining
        instance takes no new connections either. Looked at every SCAN_INTERVAL while the listeners changed
        within the last SETTLE seconds (the start, a host process coming or going), every IDLE_SCAN_INTERVAL
        otherwise: most of an idle instance's CPU is these looks (a wake-up and a listing each, ~6 ms of CPU a
        second at 50 a second here), and a host process that comes later waits up to that long for it."""
        if self.draining:
            return
        known = len(tried)
        found = host_listeners(self.config.socket_dir, tried)
        now = time.monotonic()
        if found or len(tried) != known:
            self.listeners_changed = now
        for path in found:
            self.connect(path)
        settled = now - self.listeners_changed > SETTLE
        self.loop.call_later(IDLE_SCAN_INTERVAL if settled else SCAN_INTERVAL, self.watch, tried)

    def drain(self, conn: _Connection | None, request_id: Any) -> None:
        self.draining = True
        if self.finished is not None:
            self.finished[-1] = 1  # dedicated workers refuse what their host sends from now on
        self.collect()
        self.watch_workers()
        self.drains.append((conn, request_id))
        if self.inflight == 0:
            self.settle()

    def drained(self) -> None:
        """Nothing in flight while draining: each who asked is told, and the runtime stops."""
        drains, self.drains = self.drains, []
        for conn, request_id in drains:
            if conn is not None:
                conn.send({"type": "drained", "id": request_id})
        self.on_stopped()

    def stop_workers(self) -> None:
        self.stopping = True
        for worker in self.workers.values():
            worker.close()  # the worker reads the end of its link and exits 0

    def spawn(self, coro: Any, context: contextvars.Context | None = None) -> None:
        task = self.loop.create_task(coro, context=context)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            _traceback().print_exception(exc, file=_REAL_STDERR)


# Rows of the memory the supervisor shares with its workers, one byte per worker each (`fork_worker`)
_FINISHED, _OWNED, _BEGUN, _ENDED, _SHARED_ROWS = 0, 1, 2, 3, 4
_WORKER_REPLY = b'{"type":"reply","id":"w'  # the start of a host's reply to a worker's call
_WAKE_FRAME = encode({"type": "wake"})  # asks a worker for a `D` note once its invocation ended


def _worker_index(call_id: str) -> int:
    """The worker a call id ("w3.17") belongs to; 0 (none) for anything else."""
    head = call_id[1:].partition(".")[0]
    return int(head) if head.isdigit() else 0


_INVOKE_HEAD = b'{"type":"invoke","event":'
_CONTEXT_AT = b',"context":{"invocation_id":'


def _invoke_header(body: bytes) -> dict[str, Any] | None:
    """An invoke frame's type, id and context, without decoding its event: what the supervisor needs of it.
    Only for the shape fnctl's hosts write (the event first, then the context and the id last); None for any
    other frame, which is then decoded whole. The last `,"context":{"invocation_id":` is the frame's own: the
    event comes before it, and no JSON string can hold `,"` unescaped."""
    if not body.startswith(_INVOKE_HEAD):
        return None
    at = body.rfind(_CONTEXT_AT)
    if at < 0:
        return None
    try:
        text = body[at + 11 :].decode()
        context, end = _DECODER.raw_decode(text)
    except ValueError:  # UnicodeDecodeError included
        return None
    request_id = text[end + 6 : -1]
    if not (text.startswith(',"id":', end) and text.endswith("}") and request_id.isascii() and request_id.isdigit()):
        return None
    return {"type": "invoke", "id": int(request_id), "context": context}


def _decode_invocation(body: bytes) -> Any:
    """A frame's message as a worker reads it. An invoke frame whose event is not JSON, but whose header
    passed the supervisor's look (`_invoke_header`), comes back as that header marked `broken` (answered as
    such); any other frame that is not JSON as None."""
    try:
        return _decode(body.decode())
    except ValueError:
        message = _invoke_header(body)
        if message is not None:
            message["broken"] = True
        return message


def _invocation_of(message: dict[str, Any]) -> tuple[str, float]:
    """An invoke message's invocation id and deadline (0: none)."""
    info = message.get("context")
    if not isinstance(info, dict):
        return "", 0.0
    deadline = info.get("deadline")
    return str(info.get("invocation_id", "")), float(deadline) if isinstance(deadline, (int, float)) else 0.0


def _recv_frame(sock: socket.socket) -> bytes:
    """One whole frame's body from a blocking socket (b"": it ended first)."""
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        chunk = sock.recv(4096 if len(data) < 4 else 4 + int.from_bytes(data[:4], "big") - len(data))
        if not chunk:
            return b""
        data += chunk
    return data[4:]


def _pdeathsig() -> Callable[[], None]:
    """What makes a worker die with the supervisor (PR_SET_PDEATHSIG), so that none outlives it outside a
    container either. ctypes is loaded once, by the supervisor before its first fork, so that its ~1.3 MiB are
    shared by every worker instead of copied into each; the supervisor of an async handler never loads it.
    Nothing to do for a supervisor that is its PID namespace's init (PID 1: an instance's container): the
    kernel kills every process of the namespace when its init exits. Nor ctypes to load, then: 2-7 ms of a
    cold start's first invocation, which forks the first worker."""
    if os.getpid() == 1:
        return lambda: None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None
    return lambda: prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def _write_all(fd: int, data: bytes, lock: int | None) -> None:
    """Write all of `data` to the (non-blocking) socket `fd`, holding `lock` (an fcntl record lock, owned per
    process) when given: a host connection is written by the supervisor and its workers, and a frame must
    never be cut by another's. A connection that broke is left to its reader to notice."""
    if lock is not None:
        fcntl.lockf(lock, fcntl.LOCK_EX)
    try:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                select.select([], [fd], [])
    except OSError:
        pass  # broken pipe, reset, closed: the reader side sees it and fails what waits
    finally:
        if lock is not None:
            fcntl.lockf(lock, fcntl.LOCK_UN)


def _new_write_lock() -> int:
    """The lock of the writes to host connections, shared by the supervisor and its workers (an anonymous
    file's record lock: nothing is created on the read-only root filesystem)."""
    return os.memfd_create("fnctl-writes", os.MFD_CLOEXEC)


class _Worker:
    """A worker process as the supervisor sees it, and (`serve`) the worker's own main loop.

    The link is a socketpair. Supervisor -> worker: protocol frames (`use` with the host connection's fd when
    the worker has none yet, `invoke`, a `reply` to its call, `configure`, `deadline`, `lost`). Worker ->
    supervisor: a tag byte and a frame, `D` (empty: the answer to a `wake`, sent only while invocations wait for
    a slot; otherwise a worker's end is its `Server.finished` byte, looked at when the supervisor next needs a
    worker or answers a ping: `Server.collect`) or, when it holds no copy of the host connection, `C`/`R` (a call
    or a result to pass on). A worker writes its calls and results straight
    to the host connection (its own copy of the socket, under the shared write lock): no hop through the
    supervisor on the way out; replies to its calls come back through the supervisor, undecoded.
    """

    def __init__(self, server: Server, index: int, pid: int, sock: socket.socket, has: set[int]) -> None:
        self.server, self.index, self.pid, self.sock = server, index, pid, sock
        self.conn: _Connection | None = None  # the connection of the invocation it runs
        self.invocation_id = ""
        self.deadline = 0.0  # of the invocation it runs, until the sweep told it that it passed
        self.has = has  # ids of the host connections it holds a copy of
        self.use = b""  # the last `use` frame it was sent: it keeps acting on it until told otherwise
        self.buf = bytearray()
        self.watched = False  # whether the loop wakes for what it writes (else `Server.collect` looks)
        self.started = 0  # invocations handed to it, mod 256: it is idle when its `finished` byte says as many
        self.relay = False  # whether its current result comes back through the link (it holds no host socket)
        self.woken = False  # whether it was asked for a note when its invocation ends (`wake`), none came yet
        self.direct = False  # handed to a host, which sends it invocations itself (`Server.dedicated`)
        sock.setblocking(False)

    def watch(self, wanted: bool) -> None:
        if wanted != self.watched and self.sock.fileno() >= 0:
            self.watched = wanted
            if wanted:
                self.server.loop.add_reader(self.sock.fileno(), self.readable)
            else:
                self.server.loop.remove_reader(self.sock.fileno())

    def write(self, frame: bytes) -> None:
        if self.sock.fileno() >= 0:
            _write_all(self.sock.fileno(), frame, None)

    def wake(self) -> None:
        """Ask it for a `D` note once its invocation ended (at once if it already has), and watch for it."""
        if not self.woken:
            self.woken = True
            self.write(_WAKE_FRAME)
        self.watch(True)

    def start(self, conn: _Connection, body: bytes, wake: bool) -> None:
        """Hand it an invocation of `conn` (the invoke frame's body, as the host sent it), after a `use` frame
        only when it ran its last one for another connection (or `configure` changed the offer): one frame to
        decode per invocation in the worker, not two. `wake`: ask for a note when it ends (in the same write)."""
        self.started = (self.started + 1) & 0xFF
        frames = len(body).to_bytes(4, "big") + body
        # Every worker but the last that `concurrency` allows may be offered to the host: that one stays this
        # process's, so that another host's invocations (`fnctl invoke --direct`, a deploy's health check)
        # always find a worker. It is forked last: only a host that fills every slot gets to need it.
        use = conn.use_direct if self.index < self.server.config.concurrency else conn.use_frame
        if self.use is not use or conn.id not in self.has:
            frames = use + frames
            self.use = use
        if wake and not self.woken:
            self.woken = True
            frames += _WAKE_FRAME
        if conn.id in self.has or conn.fd < 0:
            self.send(frames, conn)
            return
        self.has.add(conn.id)  # its copy of the connection travels with the `use` frame
        try:
            sent = socket.send_fds(self.sock, [frames], [conn.fd])
        except OSError:  # the link's buffer is full, or fds cannot pass here
            self.has.discard(conn.id)
            self.send(frames, conn)  # without the copy: it passes its frames back through the link
            return
        if sent < len(frames):
            self.write(frames[sent:])
        self.relay = False
        self.watch(self.woken)

    def send(self, frames: bytes, conn: _Connection) -> None:
        self.write(frames)
        self.relay = conn.id not in self.has  # then its result comes back by the link, which is watched
        self.watch(self.relay or self.woken)

    def readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the worker exited: SIGCHLD says how
            self.watch(False)
            return
        buf = self.buf
        buf += data
        while len(buf) >= 5:
            end = 5 + int.from_bytes(buf[1:5], "big")
            if len(buf) < end:
                return
            tag, frame = buf[0], bytes(buf[5:end])
            del buf[:end]
            if tag == 0x44:  # "D": the note asked for (`wake`): its `finished` byte says whether it is done
                self.woken = False
                if self.direct and self.server.drains and self.server.inflight == 0:
                    self.server.settle()
                if self.conn is None or self.relay:
                    continue
                if self.server.finished[self.index] == self.started:
                    self.server.worker_done(self, b"")
                else:  # a late answer to an earlier request, read while watched for this invocation: ask again
                    self.wake()
            elif tag == 0x43:  # "C": a call to pass on
                if self.conn is not None:
                    self.conn.write(len(frame).to_bytes(4, "big") + frame)
            else:  # "R": a result to pass on
                self.server.worker_done(self, len(frame).to_bytes(4, "big") + frame)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.watch(False)
            self.sock.close()

    @staticmethod
    def serve(server: Server, sock: socket.socket, index: int, host_fds: dict[int, int]) -> int:
        """The worker's main loop, on its main thread: one invocation at a time, until its link ends."""
        channel = _WorkerChannel(server, sock, index, host_fds)
        while True:
            message = channel.read() if channel.direct is None else channel.next_direct()
            if message is None:
                return 0
            kind = message.get("type")
            if kind == "invoke":
                channel.invoke(message)
            elif kind == "wake":
                sock.sendall(b"D\0\0\0\0")  # idle: its `finished` byte says so already
            else:
                channel.notice(message, "")


def _apply_secrets(message: dict[str, Any]) -> None:
    secrets = message.get("secrets")
    if isinstance(secrets, dict):
        os.environ.update({str(k): str(v) for k, v in secrets.items()})


class _WorkerChannel:
    """A worker's end of its link, used from its main thread only: blocking writes, blocking reads. A call is
    one write to the host and one read of the reply: no other thread, no event loop, no timer."""

    def __init__(self, server: Server, sock: socket.socket, index: int, host_fds: dict[int, int]) -> None:
        self.server, self.sock, self.index = server, sock, index
        self.host_fds = host_fds  # host connection id -> this process's copy of its socket
        self.fds: collections.deque[int] = collections.deque()  # received with `use` frames, not yet matched
        self.host = -1  # the copy of the connection of the invocation it runs (-1: none, pass frames back)
        self.buf = bytearray()
        self.calls = 0
        self.late = ""  # the invocation whose deadline the supervisor said passed
        self.finished = 0  # invocations it ran, mod 256: its byte in `Server.finished`
        self.wake_due = False  # the supervisor asked for a note during the invocation (`wake`)
        # Its own connections to hosts that offered them (conn id -> socket; None: the connect failed, so
        # frames go the older way), the one of the invocation it runs, and what was read from it.
        self.own: dict[int, socket.socket | None] = {}
        self.current: socket.socket | None = None
        self.own_buf = bytearray()
        self.own_in = memoryview(bytearray(READ_SIZE))  # read into: no fresh buffer per reply
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        self.polled = -1  # the own socket registered with the poller beside the link
        # The own connection of a host that took this worker (`direct`): its invocations come there, and
        # none from the supervisor any more. `deadline`: of such an invocation, which the worker keeps itself.
        self.direct: socket.socket | None = None
        self.deadline = 0.0
        sock.setblocking(True)

    def read(self, fds: bool = True) -> dict[str, Any] | None:
        """The next message from the supervisor (None: the link ended). A plain blocking read: the supervisor
        says when an invocation's deadline passed (`deadline`), so no timeout is set per read. `fds`: whether
        a file descriptor may come (only with a `use` frame, sent to an idle worker: never during a call)."""
        buf = self.buf
        while True:
            if len(buf) >= 4:
                end = 4 + int.from_bytes(buf[:4], "big")
                if len(buf) >= end:
                    body = bytes(buf[4:end])
                    del buf[:end]
                    message = _decode_invocation(body)  # None: a broken frame concerns no call: skipped
                    return message if isinstance(message, dict) else {}
            try:
                if fds:
                    data, passed, _flags, _addr = socket.recv_fds(self.sock, READ_SIZE, 4)
                    self.fds.extend(passed)
                else:
                    data = self.sock.recv(READ_SIZE)
            except ConnectionResetError:  # the supervisor is gone (unread notes on its end make it a reset)
                data = b""
            if not data:
                return None
            buf += data

    def notice(self, message: dict[str, Any], invocation_id: str) -> None:
        """Act on a message that is not the reply awaited; raise when it ends the current call."""
        kind = message.get("type")
        if kind == "use":
            conn = message.get("conn")
            if self.fds and isinstance(conn, int):
                previous = self.host_fds.get(conn)
                self.host_fds[conn] = self.fds.popleft()
                if previous is not None:
                    os.close(previous)
            self.host = self.host_fds.get(conn, -1) if isinstance(conn, int) else -1
            attach = message.get("attach")
            direct = message.get("direct") is True
            self.current = (self._own(conn, attach, direct) if isinstance(conn, int) and isinstance(attach, str)
                            else None)
        elif kind == "configure":
            _apply_secrets(message)
        elif kind == "lost":
            own = self.own.pop(message.get("conn"), None)  # type: ignore[arg-type]
            if own is not None:
                self._drop(own)
            fd = self.host_fds.pop(message.get("conn"), None)  # type: ignore[arg-type]
            if fd is not None:
                os.close(fd)  # the host sees the connection end only when every copy is closed
                if fd == self.host:
                    self.host = -1
            if invocation_id and message.get("invocation_id") == invocation_id:
                raise CallbackError("ConnectionLost", "the host connection closed")
        elif kind == "wake":
            self.wake_due = True  # answered once the invocation ended (`invoke`)
        elif kind == "deadline" and invocation_id and message.get("invocation_id") == invocation_id:
            self.late = invocation_id
            raise CallbackError("Timeout", "no reply before the deadline")
        # else: the reply to a call that timed out before

    def _own(self, conn: int, path: str, direct: bool = False) -> socket.socket | None:
        """This worker's own connection to the host behind `conn` (made on first use: `attach` first, as the
        host expects), or None when it cannot connect (frames then go the older way)."""
        if conn in self.own:
            return self.own[conn]
        sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        assert sock is not None
        try:
            sock.settimeout(ATTACH_WAIT)
            sock.connect(path)
            attach = {"type": "attach", "protocol": PROTOCOL, "worker": self.index, "pid": os.getpid()}
            if direct:
                attach["direct"] = True
            sock.sendall(encode(attach))
            # The host's `attached` (an 4-byte header and a small body), or the end: it refused us.
            answer = _recv_frame(sock)
            if b'"attached"' not in answer:
                raise ConnectionRefusedError
            sock.settimeout(None)
            if direct and b'"direct":true' in answer:
                # Taken: said (in the shared memory) before this invocation's end is, so the supervisor, which
                # looks at that end first, never hands this worker another one.
                self.direct = sock
                self._mark(_OWNED, 1)
        except OSError:  # refused, timed out, or no listener: this connection's frames go the older way
            sock.close()
            sock = None
        self.own[conn] = sock
        return sock

    def _drop(self, sock: socket.socket) -> None:
        """Forget an own connection that ended (the host hung up, or the supervisor said it is lost)."""
        if self.polled == sock.fileno():
            self.poller.unregister(sock)
            self.polled = -1
        for conn, own in list(self.own.items()):
            if own is sock:
                self.own[conn] = None  # not tried again: its invocations go the older way
        if self.current is sock:
            self.current = None
        if self.direct is sock:
            self.direct = None
            self._mark(_OWNED, 0)  # the supervisor's again, once idle (`Server.undedicate`)
        self.own_buf.clear()
        sock.close()

    def _await_reply(self, own: socket.socket, call_id: str, invocation_id: str) -> dict[str, Any]:
        """The host's reply to `call_id` on this worker's own connection, watching the link meanwhile for
        the supervisor's notices (the deadline passed, the host connection was lost)."""
        self._watch(own)
        buf = self.own_buf
        while True:
            while len(buf) >= 4:
                end = 4 + int.from_bytes(buf[:4], "big")
                if len(buf) < end:
                    break
                body = bytes(buf[4:end])
                del buf[:end]
                try:
                    message = _decode(body.decode())
                except ValueError:
                    message = None
                if isinstance(message, dict) and message.get("id") == call_id:
                    return message
                # else: the reply to a call that timed out before
            wait = None
            if self.deadline:  # a direct invocation's: no supervisor tells this worker that it passed
                wait = max(0, math.ceil((self.deadline - time.time()) * 1000))
            ready = self.poller.poll(wait)
            if not ready and wait is not None:
                raise CallbackError("Timeout", "no reply before the deadline")
            for fd, _events in ready:
                if fd == own.fileno():
                    if not self._receive(own):
                        raise CallbackError("ConnectionLost", "the host connection closed")
                else:
                    message = self.read(fds=False)
                    if message is None:
                        raise CallbackError("ConnectionLost", "the runtime is stopping")
                    self.notice(message, invocation_id)

    def _watch(self, own: socket.socket) -> None:
        """Poll `own` beside the link from now on (one own connection is watched at a time)."""
        if self.polled != own.fileno():
            if self.polled >= 0:
                self.poller.unregister(self.polled)
            self.poller.register(own, select.POLLIN)
            self.polled = own.fileno()

    def _receive(self, own: socket.socket) -> bool:
        """What `own` has, added to `own_buf`; False when it ended (then it is dropped)."""
        try:
            got = own.recv_into(self.own_in)
        except OSError:
            got = 0
        if not got:
            self._drop(own)
            return False
        self.own_buf += self.own_in[:got]
        return True

    def send_host(self, tag: bytes, frame: bytes) -> None:
        """A frame for the host: on this worker's own connection, or straight to the first connection when
        this process holds a copy, else by the link."""
        if self.current is not None:
            try:
                self.current.sendall(frame)
            except OSError:
                self._drop(self.current)
                raise CallbackError("ConnectionLost", "the host connection closed") from None
        elif self.host >= 0:
            _write_all(self.host, frame, self.server.write_lock)
        else:
            self.sock.sendall(tag + frame)

    def _mark(self, row: int, value: int) -> None:
        self.server.finished[row * (self.server.config.concurrency + 1) + self.index] = value

    def next_direct(self) -> dict[str, Any] | None:
        """A dedicated worker's wait: the supervisor's next message (it comes first), or its host's next
        `invoke`, run here (then `{}`)."""
        direct, buf = self.direct, self.own_buf
        assert direct is not None
        while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
            if len(buf) >= 4 and int.from_bytes(buf[:4], "big") > self.server.max_frame:
                _REAL_STDERR.write("fnctl-runtime: closing a worker connection: a frame over the limit\n")
                self._drop(direct)  # as the supervisor does: the host's requests on it fail
                return {}
            if self.buf:  # a partial message of the supervisor's
                return self.read()
            self._watch(direct)
            fileno = direct.fileno()
            for fd, _events in self.poller.poll():
                if fd != fileno:
                    return self.read()
            if not self._receive(direct):
                return {}
        end = 4 + int.from_bytes(buf[:4], "big")
        body = bytes(buf[4:end])
        del buf[:end]
        self.invoke_direct(body)
        return {}

    def invoke_direct(self, body: bytes) -> None:
        """An invocation its host sent this worker: counted begun (what a ping and a drain look at) before
        the drain flag is read, so a drain either waits for it or it is refused."""
        server, c, i = self.server, self.server.config.concurrency + 1, self.index
        shared = server.finished
        shared[_BEGUN * c + i] = (shared[_BEGUN * c + i] + 1) & 0xFF
        message = _decode_invocation(body)
        if not isinstance(message, dict) or message.get("type") != "invoke":
            frame = b""  # nothing else comes here: not answered
        elif shared[-1]:
            frame = _failure_frame(message.get("id"), "draining", "Draining", "the instance is draining")
        elif len(body) > server.config.payload_limit:
            text = f"the request is {len(body)} bytes, over the payload limit of {server.config.payload_limit}"
            frame = _failure_frame(message.get("id"), "payload_too_large", "PayloadTooLarge", text)
        else:
            self.deadline = _invocation_of(message)[1]
            self.current = self.direct
            try:
                frame = self.run(message)
            finally:
                self.deadline = 0.0
        shared[_ENDED * c + i] = shared[_BEGUN * c + i]
        if self.wake_due:
            self.wake_due = False
            self.sock.sendall(b"D\0\0\0\0")
        if frame and self.direct is not None:
            try:
                self.send_host(b"R", frame)
            except CallbackError:  # the host is gone: nobody waits for the result
                pass

    def run(self, message: dict[str, Any]) -> bytes:
        """Run one invocation: its result frame."""
        server = self.server
        raw = message.get("context")
        info = raw if isinstance(raw, dict) else {}
        invocation_id = str(info.get("invocation_id", ""))
        context = Context(server, self, invocation_id, float(info.get("deadline") or 0), info.get("caller"))
        capture = _Capture(server.config.log_limit)
        # A fresh copy per invocation: context variables a handler sets do not leak into the next one.
        if message.get("broken"):
            outcome = _Outcome.failed("handler_error", ValueError("the invoke frame is not JSON"), time.perf_counter())
        else:
            outcome = contextvars.copy_context().run(self._run, message.get("event"), context, capture)
        logs = capture.text()
        _echo_logs(invocation_id, logs)
        return _result_frame(message.get("id"), outcome, logs, capture.truncated)

    def invoke(self, message: dict[str, Any]) -> None:
        server = self.server
        frame = self.run(message)
        self.finished = (self.finished + 1) & 0xFF
        if self.current is None and self.host < 0:
            server.finished[self.index] = self.finished
            self.sock.sendall(b"R" + frame)  # the supervisor passes it on and frees the slot then
            return
        # "Done" first: by the time the host has the result, the slot is free (a ping says so).
        server.finished[self.index] = self.finished
        if self.wake_due:
            self.wake_due = False
            self.sock.sendall(b"D\0\0\0\0")
        if self.current is not None:
            with contextlib.suppress(CallbackError):  # the host is gone: nobody waits for the result
                self.send_host(b"R", frame)
        else:
            _write_all(self.host, frame, server.write_lock)

    def _run(self, event: Any, context: Context, capture: _Capture) -> _Outcome:
        _capture.set(capture)
        start = time.perf_counter()
        try:
            result = self.server.handler.call(event, context)
        except BaseException as exc:  # SystemExit in a handler is the handler's failure, not ours
            return _Outcome.failed("handler_error", exc, start)
        return _serialise(result, self.server.config.output_limit, start)

    def call(self, invocation_id: str, method: str, params: dict[str, Any], deadline: float) -> Any:
        self.calls += 1
        call_id = f"w{self.index}.{self.calls}"
        frame = _call_frame(call_id, invocation_id, method, params)
        if self.late == invocation_id or (deadline and deadline <= time.time()):
            raise CallbackError("Timeout", f"no reply to {method!r} before the deadline")
        self.send_host(b"C", frame)
        own = self.current
        while own is not None:
            try:
                message = self._await_reply(own, call_id, invocation_id)
            except CallbackError as exc:
                if exc.type == "Timeout":
                    raise CallbackError("Timeout", f"no reply to {method!r} before the deadline") from None
                raise
            if message.get("ok"):
                return message.get("result")
            raise _reply_error(message)
        while True:
            message = self.read(fds=False)
            if message is None:
                raise CallbackError("ConnectionLost", "the runtime is stopping")
            if message.get("type") == "reply" and message.get("id") == call_id:
                if message.get("ok"):
                    return message.get("result")
                raise _reply_error(message)
            try:
                self.notice(message, invocation_id)
            except CallbackError as exc:
                if exc.type == "Timeout":
                    raise CallbackError("Timeout", f"no reply to {method!r} before the deadline") from None
                raise

    async def acall(self, invocation_id: str, method: str, params: dict[str, Any], deadline: float) -> Any:
        # A coroutine a synchronous handler runs itself (asyncio.run): its calls block like `call`.
        return self.call(invocation_id, method, params, deadline)


def _function_logger(name: str) -> logging.Logger:
    import logging

    logger = logging.getLogger(f"fnctl.function.{name}")
    if logger.handlers:
        return logger
    handler = logging.StreamHandler(_Stream(_REAL_STDERR))  # routes to the invocation's capture
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


class _Outcome:
    __slots__ = ("ok", "duration_ms", "result_json", "error")

    def __init__(self, ok: bool, duration_ms: float, result_json: bytes = b"",
                 error: dict[str, str] | None = None) -> None:
        self.ok, self.duration_ms, self.result_json, self.error = ok, duration_ms, result_json, error

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
        text = _ENCODE_RESULT(result)
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


def _echo_logs(invocation_id: str, text: str) -> None:
    """Copy an invocation's (already capped) output to the container's log, each line tagged with the
    invocation, so that `fnctl logs` shows it; the engine caps the log file itself."""
    if text:
        tag = f"[{invocation_id[:12]}] "
        _REAL_STDERR.write("".join(tag + line + "\n" for line in text.splitlines()))
        _REAL_STDERR.flush()


# A successful result's envelope up to its result, as `encode` would write the dict of it: no dict built and
# walked per invocation. The duration is a finite float, which the encoder writes as its repr.
_RESULT_HEAD = '{"type":"result","id":%s,"ok":true,"logs":%s,"logs_truncated":%s,"duration_ms":%r,"result":'


def _result_frame(request_id: Any, outcome: _Outcome, logs: str, truncated: bool) -> bytes:
    if not outcome.ok:
        return encode({"type": "result", "id": request_id, "ok": False, "logs": logs, "logs_truncated": truncated,
                       "duration_ms": outcome.duration_ms, "error": outcome.error})
    # Splice the already-serialised result in rather than serialising it a second time.
    head = _RESULT_HEAD % (_ENCODE(request_id), _encode_string(logs), "true" if truncated else "false",
                           outcome.duration_ms)
    body = b"".join((head.encode("utf-8", "replace"), outcome.result_json, b"}"))
    return len(body).to_bytes(4, "big") + body


def _failure_frame(request_id: Any, kind: str, type_: str, message: str) -> bytes:
    error = {"kind": kind, "type": type_, "message": message, "traceback": ""}
    return encode({"type": "result", "id": request_id, "ok": False, "error": error, "logs": "",
                   "logs_truncated": False, "duration_ms": 0.0})


# ---- entry point ------------------------------------------------------------------------------


class _PollLoop:
    """A synchronous handler's supervisor loop: what it used of asyncio's (the host connections' and the
    workers' reads, two timers, the signals), on one poll(2), so that its runtime never imports asyncio:
    most of the start-up to the `ready` frame. Callbacks run one at a time; an exception in one is printed
    and the loop goes on, as asyncio's does."""

    def __init__(self) -> None:
        self.poller = select.poll()
        self.readers: dict[int, Callable[[], None]] = {}
        self.timers: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.order = itertools.count()  # orders timers due at the same time, as they were set
        self.signals: dict[int, Callable[[], None]] = {}
        self.wake_in, wake_out = os.pipe()  # where the interpreter's C signal handler writes each signal number
        for fd in (self.wake_in, wake_out):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_out)
        self.poller.register(self.wake_in, select.POLLIN)
        self.running = False

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback
        self.poller.register(fd, select.POLLIN)

    def remove_reader(self, fd: int) -> None:
        if self.readers.pop(fd, None) is not None:
            self.poller.unregister(fd)

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        self.timers.append((time.monotonic() + delay, next(self.order), callback, args))

    def create_future(self) -> _Settled:
        return _Settled()

    def add_signal_handler(self, sig: int, callback: Callable[[], None]) -> None:
        self.signals[sig] = callback
        signal.signal(sig, _on_signal)  # a Python handler: the C one then writes the number to the wake-up fd
        signal.siginterrupt(sig, False)

    def connect(self, path: str, protocol: _Connection) -> None:
        """Connect to a host listener and serve the connection with `protocol`, as create_unix_connection."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(1.0)  # a listener's full backlog: waits a little (a refusal is at once)
            sock.connect(path)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return  # the listener of a host process that died or gave up: not tried again
        transport = _PollTransport(self, sock, protocol)
        protocol.connection_made(transport)
        self.add_reader(sock.fileno(), transport.readable)

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        self.running = True
        while self.running:
            timeout = -1
            if self.timers:
                timeout = max(0, int((min(self.timers)[0] - time.monotonic()) * 1000) + 1)
            for fd, _events in self.poller.poll(timeout):  # hang-ups and errors too: the reader sees them
                if fd == self.wake_in:
                    self._signalled()
                elif fd in self.readers:  # a callback before may have removed it
                    self._run(self.readers[fd], ())
            if self.timers:
                now = time.monotonic()
                due = sorted(t for t in self.timers if t[0] <= now)
                self.timers = [t for t in self.timers if t[0] > now]
                for _when, _order, callback, args in due:
                    self._run(callback, args)

    def _signalled(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            for number in os.read(self.wake_in, 64):
                callback = self.signals.get(number)
                if callback is not None:
                    self._run(callback, ())

    @staticmethod
    def _run(callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 -- a runtime bug: said, and the other connections go on
            _traceback().print_exc(file=_REAL_STDERR)


def _on_signal(number: int, frame: Any) -> None:
    """Nothing: `_PollLoop` acts on the signal once poll(2) returns (the wake-up fd)."""


class _Settled:
    """`_Connection.closed` under `_PollLoop`: connection_lost marks it, nothing waits for it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False

    def done(self) -> bool:
        return self.value

    def set_result(self, result: None) -> None:
        self.value = True


class _PollTransport:
    """A host connection under `_PollLoop`, as a _Connection sees its asyncio transport: a synchronous
    handler's runtime writes the socket itself (`_write_all`, under the write lock), so no write buffer."""

    def __init__(self, loop: _PollLoop, sock: socket.socket, protocol: _Connection) -> None:
        self.loop, self.sock, self.protocol = loop, sock, protocol
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def is_closing(self) -> bool:
        return self.closing

    def readable(self) -> None:
        try:
            got = self.sock.recv_into(self.protocol.get_buffer(-1))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            got = 0  # reset: the end of the connection
        if got:
            self.protocol.buffer_updated(got)
        else:
            self.close()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.loop.call_later(0, self.protocol.connection_lost, None)  # after the caller is done, as asyncio


def _start(server: Server, loop: Any) -> None:
    # What the runtime's and the handler's imports made lives as long as the instance: out of the collector's
    # way, a full collection (every ~100,000 allocations of an async handler's calls) no longer walks it all,
    # a stall of several ms in a call's p99 here.
    gc.freeze()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: server.drain(None, None))
    if not server.handler.is_async:
        # No worker before the first invocation: an instance nobody invoked costs one interpreter.
        loop.add_signal_handler(signal.SIGCHLD, server.reap)
    server.watch(set())


def serve_sync(config: Config, handler: Handler) -> int:
    """A synchronous handler's runtime: its supervisor on `_PollLoop`, its invocations in worker processes."""
    loop = _PollLoop()
    server = Server(config, handler, loop)
    server.on_stopped = loop.stop
    server.connect = lambda path: loop.connect(path, _Connection(server, path))
    _start(server, loop)
    loop.run()
    for conn in list(server.connections):
        conn.close()  # nothing pending: every frame was written whole, at once
    server.stop_workers()
    return 0


async def serve(config: Config, handler: Handler) -> int:
    """An async handler's runtime: its invocations on asyncio's loop (imported by `_import_asyncio`)."""
    loop = asyncio.get_running_loop()
    server = Server(config, handler, loop)
    stopped = asyncio.Event()
    server.on_stopped = stopped.set
    # asyncio reads into a protocol's own buffer only for a BufferedProtocol: _Connection becomes one here.
    connection = type("_AioConnection", (_Connection, asyncio.BufferedProtocol), {})

    async def connect_out(path: str) -> None:
        with contextlib.suppress(OSError):  # the listener of a host process that died or gave up: not tried again
            await loop.create_unix_connection(lambda: connection(server, path), path)

    server.connect = lambda path: server.spawn(connect_out(path))
    _start(server, loop)
    await stopped.wait()
    conns = list(server.connections)
    for conn in conns:
        conn.close()  # flushes pending replies (the `drained` one) first
    if conns:
        await asyncio.wait([c.closed for c in conns], timeout=5)
    server.stop_workers()
    return 0


def _import_asyncio() -> None:
    """What only an async handler's runtime uses, imported once its handler is loaded: asyncio, and
    concurrent.futures (`context.call` from a thread of an async handler)."""
    global asyncio, concurrent
    import asyncio
    import concurrent.futures


def _no_new_privileges() -> None:
    """PR_SET_NO_NEW_PRIVS on this process (and so every process it starts) before any user code is
    imported: no set-uid file can then raise a handler's privileges. The engine sets it on one host
    (`no-new-privileges` security option); a Swarm service cannot ask for it (docs/swarm.md), so the runtime
    does it. Read first: when the engine did it, ctypes is not imported (~2.5 ms of a cold start)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            if any(line.split() == ["NoNewPrivs:", "1"] for line in status):
                return
    except OSError:
        pass
    import ctypes  # only where the engine did not set it

    if ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0) != 0:  # 38: PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def _batch_scheduling() -> None:
    """SCHED_BATCH for this process and every worker it forks from now on, once the host configured it:
    the same CPU share as before (the weight is the nice value's), but a runtime process woken by the
    host's write no longer preempts the task running on that core, which on a loaded host is most often
    the gateway's event loop itself; it runs once that task's slice ends, or at once on an idle core. The
    gateway serves every instance from one thread: each preemption stalled all of them
    (benchmarks/bench_gateway.py prints how often it is preempted). Not before: the start, up to `ready`
    and `configure`, keeps its wake-ups (a cold start waits on them). No privilege is needed; where the
    kernel refuses (gVisor does), the runtime serves as before."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):  # AttributeError: a Python built without the call
        pass


def main() -> int:
    if __name__ == "__main__":
        # `from fnctl_runtime import CallbackError` in a handler must see this module, not a second copy.
        sys.modules.setdefault("fnctl_runtime", sys.modules[__name__])
    sys.stdout, sys.stderr = _Stream(_REAL_STDERR), _Stream(_REAL_STDERR)
    try:
        _no_new_privileges()  # fails closed: a runtime that cannot set it serves nothing
        config = Config.from_env()
        if os.path.isdir(config.code_dir):
            os.chdir(config.code_dir)  # relative paths in handlers resolve against their code, as on Lambda
        handler = load_handler(config)
    except (Exception, SystemExit) as exc:  # a module calling sys.exit() at import fails the load too
        return _startup_failed(_socket_dir(), exc)
    if not handler.is_async:
        return serve_sync(config, handler)
    _import_asyncio()
    return asyncio.run(serve(config, handler))


if __name__ == "__main__":
    sys.exit(main())
