"""The instance protocol, as the host speaks it: length-prefixed JSON frames, the messages they carry, what a
result frame decodes into, and the errors of a runtime that cannot be reached or breaks the protocol.

Used by both transports (`transport.UnixSocketTransport`, threads; `aiotransport.AsyncTransport`, asyncio), so that
they cannot read a frame differently.

Frames, each way a 4-byte big-endian length then a JSON object. The runtime speaks first, on every
connection: `{"type": "ready", "protocol": 1, ...}`, or, when the handler failed to load,
`{"type": "startup_failed", "protocol": 1, "error": {"type", "message", "traceback"}}` (then it waits for the
host to hang up and exits with code 3; no file is ever written for it). After `ready`: host requests
`configure`, `invoke`, `ping`, `drain` (each with an integer `id`) and `reply` (to a runtime `call`); runtime
frames `configured`, `result`, `pong`, `drained`, `error` (echoing the `id`) and `call`.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from fnctl.errors import FnctlError

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")  # 4-byte big-endian body length
DEFAULT_MAX_FRAME = 64 * 2**20  # a reply bigger than this is a broken runtime, not a result
INVOKE_GRACE = 1.0  # seconds past the deadline a reply may still arrive (queueing, serialisation)


class TransportError(FnctlError):
    """The runtime could not be reached or broke the protocol."""


class TransportTimeout(TransportError):
    """No reply came before the timeout; the connection itself may still be fine."""


class ConnectionLost(TransportError):
    """The connection dropped (or was closed); every request waiting on it gets this."""


class RuntimeStartFailed(TransportError):
    """The runtime could not load the handler: `error` is its `startup_failed` report (type, message,
    traceback), `detail` the user's traceback."""

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



# ---- framing ---------------------------------------------------------------------------------


def invoke_message(event: Any, invocation_id: str, deadline: float, caller: Mapping[str, Any] | None,
                   timeout: float | None) -> tuple[dict[str, Any], float]:
    """The `invoke` message, and how long to wait for its result (default: until the deadline plus a grace)."""
    if timeout is None:
        timeout = max(deadline - time.time(), 0.0) + INVOKE_GRACE
    context = {"invocation_id": invocation_id, "deadline": deadline,
               "caller": dict(caller) if caller is not None else None}
    return {"type": "invoke", "event": event, "context": context}, timeout


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


# Built once: json.dumps with options builds a new encoder per call, a measurable cost per invocation.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """Raises TypeError/ValueError when the message is not JSON-serialisable."""
    body = _ENCODER.encode(message).encode()
    return HEADER.pack(len(body)) + body


def read_frame(stream: Readable, max_size: int = DEFAULT_MAX_FRAME) -> dict[str, Any] | None:
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



def expect_reply(message: dict[str, Any] | None, expect: str) -> dict[str, Any]:
    if message is None:
        raise TransportError("no reply")
    kind = message.get("type")
    if kind == "error":
        raise TransportError(f"the runtime refused the request: {message.get('message', '')}")
    if kind != expect:
        raise TransportError(f"the runtime answered {kind!r} where {expect!r} was expected")
    return message


def check_first_frame(message: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """The runtime's first frame on a connection: its `ready` message, or RuntimeStartFailed for its
    `startup_failed` report; anything else breaks the protocol."""
    kind = message.get("type") if message is not None else None
    if kind == "startup_failed":
        assert message is not None
        error = message.get("error")
        raise RuntimeStartFailed(error if isinstance(error, dict) else {"type": "Error", "message": str(error)})
    if message is None:
        raise ConnectionLost(f"the runtime in {where} closed the connection before it was ready")
    if kind != "ready":
        raise TransportError(f"the runtime in {where} sent {kind!r} before it was ready")
    if message.get("protocol") != PROTOCOL_VERSION:
        raise TransportError(f"the runtime speaks protocol {message.get('protocol')!r}, not {PROTOCOL_VERSION}")
    return message
