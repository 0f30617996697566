"""Host side of the instance protocol: length-prefixed JSON frames to the in-container runtime.

`Transport` is the one interface the instance pool talks to; `UnixSocketTransport` implements it over the
instance's Unix socket, multiplexing any number of calling threads over one connection.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from fnctl.errors import BadInput, FnctlError

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")  # 4-byte big-endian body length
DEFAULT_MAX_FRAME = 64 * 2**20  # a reply bigger than this is a broken runtime, not a result
INVOKE_GRACE = 1.0  # seconds past the deadline a reply may still arrive (queueing, serialisation)

# (invocation_id, method, params) -> result; raising sends an error reply to the handler
CallHandler = Callable[[str, str, dict[str, Any]], Any]


class TransportError(FnctlError):
    """The runtime could not be reached or broke the protocol."""


class TransportTimeout(TransportError):
    """No reply came before the timeout; the connection itself may still be fine."""


class ConnectionLost(TransportError):
    """The connection dropped (or was closed); every request waiting on it gets this."""


class RuntimeStartFailed(TransportError):
    """The runtime could not load the handler: `error` is its error.json, `detail` the user's traceback."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        super().__init__(
            f"the handler failed to load: {error.get('type', 'Error')}: {error.get('message', '')}",
            detail=str(error.get("traceback", "")),
        )
        self.error = dict(error)


class ErrorKind(StrEnum):
    HANDLER_ERROR = "handler_error"
    OUTPUT_TOO_LARGE = "output_too_large"
    NOT_SERIALISABLE = "not_serialisable"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    DRAINING = "draining"


@dataclass(frozen=True)
class InvocationError:
    kind: ErrorKind
    type: str
    message: str
    traceback: str


@dataclass(frozen=True)
class InvocationResult:
    ok: bool
    result: Any
    error: InvocationError | None
    logs: str
    logs_truncated: bool
    duration_ms: float

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> InvocationResult:
        error: InvocationError | None = None
        if not message.get("ok"):
            raw = message.get("error")
            if not isinstance(raw, dict):
                raise TransportError("the runtime sent a failed result without an error")
            try:
                kind = ErrorKind(str(raw.get("kind")))
            except ValueError:
                raise TransportError(f"the runtime sent an unknown error kind {raw.get('kind')!r}") from None
            error = InvocationError(kind, str(raw.get("type", "")), str(raw.get("message", "")),
                                    str(raw.get("traceback", "")))
        return cls(
            ok=error is None,
            result=message.get("result"),
            error=error,
            logs=str(message.get("logs", "")),
            logs_truncated=bool(message.get("logs_truncated", False)),
            duration_ms=float(message.get("duration_ms", 0.0)),
        )


class Transport(Protocol):
    """How the host talks to one instance's runtime. All methods but `connect` are thread-safe."""

    on_call: CallHandler | None

    def connect(self, timeout: float = 10.0) -> dict[str, Any]: ...

    def configure(self, secrets: Mapping[str, str], timeout: float = 5.0) -> None: ...

    def invoke(
        self, event: Any, *, invocation_id: str, deadline: float,
        caller: Mapping[str, Any] | None = None, timeout: float | None = None,
    ) -> InvocationResult: ...

    def ping(self, timeout: float = 5.0) -> int: ...

    def drain(self, timeout: float = 30.0) -> None: ...

    def close(self) -> None: ...


# ---- framing ---------------------------------------------------------------------------------


def invoke_message(event: Any, invocation_id: str, deadline: float, caller: Mapping[str, Any] | None,
                   timeout: float | None) -> tuple[dict[str, Any], float]:
    """The `invoke` message, and how long to wait for its result (default: until the deadline plus a grace)."""
    if timeout is None:
        timeout = max(deadline - time.time(), 0.0) + INVOKE_GRACE
    context = {"invocation_id": invocation_id, "deadline": deadline,
               "caller": dict(caller) if caller is not None else None}
    return {"type": "invoke", "event": event, "context": context}, timeout


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


# Built once: json.dumps with options builds a new encoder per call, a measurable cost per invocation.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """Raises TypeError/ValueError when the message is not JSON-serialisable."""
    body = _ENCODER.encode(message).encode()
    return HEADER.pack(len(body)) + body


def read_frame(stream: _Readable, max_size: int = DEFAULT_MAX_FRAME) -> dict[str, Any] | None:
    """The next message, or None at a clean end of stream."""
    header = stream.read(HEADER.size)
    if not header:
        return None
    if len(header) < HEADER.size:
        raise ConnectionLost("the connection closed in the middle of a frame")
    (size,) = HEADER.unpack(header)
    if size > max_size:
        raise TransportError(f"the runtime sent a frame of {size} bytes (limit {max_size})")
    body = stream.read(size)
    if len(body) < size:
        raise ConnectionLost("the connection closed in the middle of a frame")
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise TransportError(f"the runtime sent a frame that is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise TransportError("the runtime sent a frame that is not a JSON object")
    return message


# ---- Unix socket transport -------------------------------------------------------------------


class _Waiter:
    """One outstanding request. A pre-acquired lock is the cheapest one-shot wake-up between threads."""

    __slots__ = ("_lock", "message", "error")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.message: dict[str, Any] | None = None
        self.error: TransportError | None = None

    def deliver(self, message: dict[str, Any]) -> None:
        self.message = message
        self._lock.release()

    def fail(self, error: TransportError) -> None:
        self.error = error
        self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        return self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))


class UnixSocketTransport:
    """One connection to a runtime; a reader thread routes replies to the waiting callers by id.

    Whoever pops a waiter from `_pending` (reader, timeout or failure path) is the only one to release it.
    """

    def __init__(
        self, socket_path: str, *, on_call: CallHandler | None = None,
        max_frame: int = DEFAULT_MAX_FRAME, callback_workers: int = 16,
    ) -> None:
        self.socket_path = socket_path
        self.on_call = on_call
        self.ready: dict[str, Any] | None = None
        self._max_frame = max_frame
        self._callback_workers = callback_workers
        self._ids = itertools.count(1)
        self._pending: dict[int, _Waiter] = {}
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._callbacks: ThreadPoolExecutor | None = None
        self._lost: str | None = None  # why the connection is gone; None while it is usable
        self._closing = False

    def __enter__(self) -> UnixSocketTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for the socket to appear and the runtime's `ready` message; returns that message."""
        if self._sock is not None or self._closing:
            raise TransportError("the transport is already connected, or closed: use a new one")
        deadline = time.monotonic() + timeout
        sock = self._open(deadline, timeout)
        stream = sock.makefile("rb")
        try:
            ready = self._handshake(sock, stream, deadline, timeout)
        except BaseException:
            stream.close()  # the descriptor is only released once both are closed
            sock.close()
            raise
        self._sock, self.ready = sock, ready
        self._callbacks = ThreadPoolExecutor(self._callback_workers, thread_name_prefix="fnctl-callback")
        self._reader = threading.Thread(target=self._read_loop, args=(stream,), name="fnctl-transport",
                                        daemon=True)
        self._reader.start()
        return ready

    def _handshake(
        self, sock: socket.socket, stream: _Readable, deadline: float, timeout: float
    ) -> dict[str, Any]:
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            ready = read_frame(stream, self._max_frame)
            sock.settimeout(None)
        except TimeoutError:
            message = f"the runtime at {self.socket_path} did not say ready within {timeout:g}s"
            raise TransportTimeout(message) from None
        if ready is None or ready.get("type") != "ready":
            raise ConnectionLost(f"the runtime at {self.socket_path} closed the connection before it was ready")
        if ready.get("protocol") != PROTOCOL_VERSION:
            raise TransportError(f"the runtime speaks protocol {ready.get('protocol')!r}, not {PROTOCOL_VERSION}")
        return ready

    def _open(self, deadline: float, timeout: float) -> socket.socket:
        error_file = os.path.join(os.path.dirname(self.socket_path), "error.json")
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.socket_path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()  # not listening yet: keep polling until the deadline
            if os.path.exists(error_file):
                raise RuntimeStartFailed(_read_error_file(error_file))
            if time.monotonic() >= deadline:
                raise TransportTimeout(f"no runtime listening on {self.socket_path} after {timeout:g}s")
            time.sleep(0.005)

    def configure(self, secrets: Mapping[str, str], timeout: float = 5.0) -> None:
        self._request({"type": "configure", "secrets": dict(secrets)}, "configured", timeout)

    def invoke(
        self, event: Any, *, invocation_id: str, deadline: float,
        caller: Mapping[str, Any] | None = None, timeout: float | None = None,
    ) -> InvocationResult:
        """Run the handler once. `deadline` is epoch seconds; `timeout` defaults to it plus a grace."""
        message, timeout = invoke_message(event, invocation_id, deadline, caller, timeout)
        reply = self._request(message, "result", timeout)
        return InvocationResult.from_message(reply)

    def ping(self, timeout: float = 5.0) -> int:
        """The number of invocations in flight on the instance."""
        return int(self._request({"type": "ping"}, "pong", timeout).get("inflight", 0))

    def drain(self, timeout: float = 30.0) -> None:
        """Finish in-flight invocations, refuse new ones; the runtime exits once this returns."""
        self._request({"type": "drain"}, "drained", timeout)

    def close(self) -> None:
        self._closing = True
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread out of recv
            except OSError:
                pass
            sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        self._fail_all("the transport was closed")
        if self._callbacks is not None:
            self._callbacks.shutdown(wait=False)

    # ---- request/reply plumbing ----

    def _request(self, message: dict[str, Any], expect: str, timeout: float) -> dict[str, Any]:
        request_id = next(self._ids)
        try:
            frame = encode_frame({**message, "id": request_id})
        except (TypeError, ValueError) as exc:
            raise BadInput(f"cannot send {message['type']}: not JSON-serialisable: {exc}") from None
        waiter = _Waiter()
        self._pending[request_id] = waiter
        # Checked after registering: either this sees the loss or _fail_all sees the waiter.
        if (self._lost is not None or self._sock is None) and self._pending.pop(request_id, None) is not None:
            raise ConnectionLost(self._lost or "the transport is not connected")
        try:
            self._send(frame)
        except OSError as exc:
            if self._pending.pop(request_id, None) is not None:
                raise ConnectionLost(f"cannot send to the runtime: {exc}") from None
        if not waiter.wait(timeout):
            if self._pending.pop(request_id, None) is not None:
                raise TransportTimeout(f"no reply to {message['type']} within {timeout:g}s")
            waiter.wait(None)  # the reply won the race against the timeout: it is being delivered
        if waiter.error is not None:
            raise waiter.error
        return _expect(waiter.message, expect)

    def _send(self, frame: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise OSError("not connected")
        with self._send_lock:  # frames from different threads must not interleave
            sock.sendall(frame)

    def _read_loop(self, stream: _Readable) -> None:
        reason = "the runtime closed the connection"
        try:
            while (message := read_frame(stream, self._max_frame)) is not None:
                if message.get("type") == "call":
                    self._start_callback(message)
                elif (waiter := self._pending.pop(_int_id(message), None)) is not None:
                    waiter.deliver(message)
                # else: a reply to a request that already timed out
        except (OSError, ValueError, TransportError) as exc:
            reason = f"the connection to the runtime failed: {exc}"
        finally:
            stream.close()  # the socket's descriptor is only released once its file object is closed too
            self._fail_all("the transport was closed" if self._closing else reason)

    def _fail_all(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        while True:
            try:
                _, waiter = self._pending.popitem()  # atomic: each waiter is released exactly once
            except KeyError:
                return
            waiter.fail(ConnectionLost(self._lost))

    def _start_callback(self, message: dict[str, Any]) -> None:
        if self._callbacks is not None:
            try:
                self._callbacks.submit(self._run_callback, message)
            except RuntimeError:
                pass  # the pool is shut down: the transport is closing

    def _run_callback(self, message: dict[str, Any]) -> None:
        call_id = message.get("id")
        try:
            if self.on_call is None:
                raise NotImplementedError("callbacks not supported")
            params = message.get("params")
            result = self.on_call(str(message.get("invocation_id", "")), str(message.get("method", "")),
                                  params if isinstance(params, dict) else {})
            frame = encode_frame({"type": "reply", "id": call_id, "ok": True, "result": result})
        except Exception as exc:  # any failure of the handler is the caller's error, never the reader's
            error = {"type": type(exc).__name__, "message": str(exc)}
            frame = encode_frame({"type": "reply", "id": call_id, "ok": False, "error": error})
        try:
            self._send(frame)
        except OSError:
            pass  # the connection is gone; the invocation fails with ConnectionLost anyway


def _int_id(message: Mapping[str, Any]) -> int:
    value = message.get("id")
    return value if isinstance(value, int) else -1  # -1 is never issued: the reply is dropped


def _expect(message: dict[str, Any] | None, expect: str) -> dict[str, Any]:
    if message is None:
        raise TransportError("no reply")
    kind = message.get("type")
    if kind == "error":
        raise TransportError(f"the runtime refused the request: {message.get('message', '')}")
    if kind != expect:
        raise TransportError(f"the runtime answered {kind!r} where {expect!r} was expected")
    return message


def _read_error_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        return {"type": "Error", "message": f"unreadable {path}: {exc}", "traceback": ""}
    return data if isinstance(data, dict) else {"type": "Error", "message": str(data), "traceback": ""}
