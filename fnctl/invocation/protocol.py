"""The wire protocol between the host and an in-container runtime: the one host-side codec (docs/protocol.md).

Frames, each way: a 4-byte big-endian body length, then the body, one UTF-8 JSON object. This module owns
what goes into them and what comes out: the frame header and size limit, the encoder, an incremental decoder
(bytes in, messages out) that the blocking client (`transport`) and the asyncio client (`aiotransport`) both
feed, a builder for every frame the host sends, a parser for every frame a runtime sends, the protocol
version, the error kinds of a failed invocation and the errors of a broken exchange.

Pure: no sockets, threads or event loops; the clients own the waiting. The in-container runtime keeps its
own standard-library copy of the runtime side (it never imports fnctl); tests/invocation/test_protocol.py runs the same
golden frames (tests/golden/protocol/) through this codec and against every runtime.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from json.encoder import encode_basestring as _quote  # a str as a JSON string, non-ASCII kept (C)
from typing import Any

from fnctl.errors import BadInput, FnctlError
from fnctl.jsontext import compact_encoder

# What `protocol` in a runtime's `ready` (and `startup_failed`) says. Raised only for a change that an
# existing peer would misread; new optional fields and message types leave it as it is (docs/protocol.md).
PROTOCOL_VERSION = 1
HEADER = struct.Struct(">I")  # 4-byte big-endian body length
_unpack = HEADER.unpack_from
DEFAULT_MAX_FRAME = 64 * 2**20  # a reply bigger than this is a broken runtime, not a result
INVOKE_GRACE = 1.0  # seconds past the deadline a reply may still arrive (queueing, serialisation)
# Bytes asked of a blocking socket per read: several frames at once under load. Not more: recv allocates
# that much for every call, and past 128 KiB the allocator maps fresh pages each time (~17 us a read here).
RECV_SIZE = 64 * 1024


class MessageType(StrEnum):
    """The `type` of every frame. Host to runtime: CONFIGURE, INVOKE, PING, DRAIN (requests, with an integer
    `id`) and REPLY (to a CALL). Runtime to host: READY or STARTUP_FAILED first, then CONFIGURED, RESULT, PONG,
    DRAINED and ERROR (echoing a request's `id`) and CALL (a callback from a handler). ATTACH: the first frame
    of a worker connection (a runtime process's own connection for its calls and results, when the host
    offered it in `configure`), which the host acknowledges with ATTACHED."""

    READY = "ready"
    STARTUP_FAILED = "startup_failed"
    CONFIGURE = "configure"
    CONFIGURED = "configured"
    INVOKE = "invoke"
    RESULT = "result"
    PING = "ping"
    PONG = "pong"
    DRAIN = "drain"
    DRAINED = "drained"
    ERROR = "error"
    CALL = "call"
    REPLY = "reply"
    ATTACH = "attach"
    ATTACHED = "attached"


# ---- errors of an exchange ---------------------------------------------------------------------


class TransportError(FnctlError):
    """The runtime could not be reached or broke the protocol."""


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


# ---- what an invocation came to -------------------------------------------------------------------


class ErrorKind(StrEnum):
    """`error.kind` of a failed `result`: why the runtime produced no result."""

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


@dataclass(slots=True)  # made per request: a frozen one's __init__ costs ~5x (a setattr per field)
class InvocationResult:
    ok: bool
    result: Any
    error: InvocationError | None
    logs: str
    logs_truncated: bool
    duration_ms: float

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> InvocationResult:
        """A `result` frame's fields; TransportError for a failure without an error or of an unknown kind."""
        get = message.get
        error: InvocationError | None = None
        if not get("ok"):
            raw = get("error")
            if not isinstance(raw, dict):
                raise TransportError("the runtime sent a failed result without an error")
            try:
                kind = ErrorKind(str(raw.get("kind")))
            except ValueError:
                raise TransportError(f"the runtime sent an unknown error kind {raw.get('kind')!r}") from None
            error = InvocationError(
                kind, str(raw.get("type", "")), str(raw.get("message", "")), str(raw.get("traceback", ""))
            )
        logs, truncated, duration = str(get("logs", "")), bool(get("logs_truncated", False)), get("duration_ms", 0.0)
        return cls(error is None, get("result"), error, logs, truncated, float(duration))  # positional: per invocation


@dataclass(frozen=True, slots=True)
class CallRequest:
    """A `call` frame: a handler asks the host to run `method` for the invocation `invocation_id`; the host
    answers with a `reply` carrying the same `id` (a string the runtime chose)."""

    id: Any
    invocation_id: str
    method: str
    params: dict[str, Any]

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> CallRequest:
        params = message.get("params")
        return cls(
            message.get("id"),
            str(message.get("invocation_id", "")),
            str(message.get("method", "")),
            params if isinstance(params, dict) else {},
        )


# ---- encoding: the frames the host sends ---------------------------------------------------------

# json's C encoder made once (JSONEncoder.encode makes a new one per message, half of its cost), paid for every
# invoke and every reply to a call. A cycle (never in decoded JSON) ends in RecursionError: not serialisable.
_encode = compact_encoder(allow_nan=True)
json_text = _encode  # a value as compact JSON text (UTF-8 kept as is), for frames assembled from parts


class EncodedJson:
    """An event already encoded as JSON text (a trigger's proxy event, written in one pass from the request):
    `invoke_frame` sends it as it is instead of encoding a dict built first."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """Header and body of one message. Raises TypeError/ValueError (RecursionError for a cycle) when it is not
    JSON-serialisable."""
    body = _encode(message).encode()
    return HEADER.pack(len(body)) + body


def _request_frame(message: dict[str, Any]) -> bytes:
    try:
        return encode_frame(message)
    except (TypeError, ValueError, RecursionError) as exc:
        raise BadInput(f"cannot send {message['type']}: not JSON-serialisable: {exc}") from None


def configure_frame(request_id: int, secrets: Mapping[str, str], *, workers: bool = False) -> bytes:
    """Set these environment variables in the runtime (secrets: never in images or labels); `configured`.
    `workers`: this host keeps its listener up for worker connections, and takes workers (`direct`)."""
    message: dict[str, Any] = {"type": MessageType.CONFIGURE, "secrets": dict(secrets), "id": request_id}
    if workers:
        message["workers"] = message["direct"] = True
    return _request_frame(message)


def invoke_frame(
    request_id: int, event: Any, invocation_id: str, deadline: float, caller: Mapping[str, Any] | EncodedJson | None
) -> bytes:
    """Run the handler once on `event`; `deadline` is epoch seconds (finite), `caller` the identity the handler
    sees (or its JSON text, encoded once per principal: ~0.5 us a request less). Answered by a `result`.
    BadInput when the event or caller is not JSON-serialisable."""
    # The body as `encode_frame` writes the message, filled in directly: about a third of the cost of building
    # the nested dicts and encoding them (the hot path of every invocation).
    if caller is not None and not isinstance(caller, (dict, EncodedJson)):
        caller = dict(caller)  # the encoder takes dicts only
    try:  # float's repr is what the JSON encoder writes for a finite float
        text = event.text if type(event) is EncodedJson else _encode(event)
        # a str straight to the C quoting the encoder calls for one (a third of the encoder's cost)
        ident = _quote(invocation_id) if type(invocation_id) is str else _encode(invocation_id)
        who = "null" if caller is None else caller.text if type(caller) is EncodedJson else _encode(caller)
        body = (
            f'{{"type":"invoke","event":{text},"context":{{"invocation_id":{ident},"deadline":{float(deadline)!r},'
            f'"caller":{who}}},"id":{request_id:d}}}'
        ).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise BadInput(f"cannot send invoke: not JSON-serialisable: {exc}") from None
    return HEADER.pack(len(body)) + body


def ping_frame(request_id: int) -> bytes:
    """Answered by `pong` with the runtime's invocations in flight."""
    return encode_frame({"type": MessageType.PING, "id": request_id})


def drain_frame(request_id: int) -> bytes:
    """Finish what is in flight, refuse new invocations; `drained` once idle, then the runtime exits 0."""
    return encode_frame({"type": MessageType.DRAIN, "id": request_id})


def reply_frame(call_id: Any, result: Any, outcome: str = '"ok":true,"result"') -> bytes:
    """The answer to a `call` (TypeError/ValueError: `result` is not JSON), keys written around its parts' JSON
    in a dict's order, no dict built per call ("type", "id": the runtime passes worker replies on by that start)."""
    body = f'{{"type":"reply","id":{_encode(call_id)},{outcome}:{_encode(result)}}}'.encode()
    return HEADER.pack(len(body)) + body


class CallFailed(Exception):
    """Raised by an `on_call` handler to answer a `call` with a typed error: the reply's `error` is
    `{"type": type_, "message": message, **fields}` (e.g. a data error's status and problem details)."""

    def __init__(self, type_: str, message: str, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.type, self.message, self.fields = type_, message, dict(fields or {})

    def reply_error(self) -> dict[str, Any]:
        return {**self.fields, "type": self.type, "message": self.message}


def reply_error_frame(call_id: Any, exc: BaseException) -> bytes:
    """A `call` that failed: the handler sees an error of this type and message (never a traceback), with a
    `CallFailed`'s fields (e.g. a data error's status and problem details)."""
    error = exc.reply_error() if isinstance(exc, CallFailed) else {"type": type(exc).__name__, "message": str(exc)}
    return reply_frame(call_id, error, '"ok":false,"error"')


def reply_timeout(deadline: float) -> float:
    """How long to wait for an invocation's result: until its deadline (epoch seconds) plus a grace."""
    return max(deadline - time.time(), 0.0) + INVOKE_GRACE


# ---- decoding: the frames a runtime sends ----------------------------------------------------------

_DECODER = json.JSONDecoder()
_RESULT = MessageType.RESULT  # a module constant: an enum member looked up on its class costs ~70 ns more (3.11)
_scan: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]  # set in __init__


def _decode(text: str) -> Any:
    """A frame's JSON value: the scanner's, when the text is that value alone (the runtime's frames: no
    whitespace around), without decode()'s Python frames and whitespace matches; else decode()'s (its errors)."""
    try:
        value, end = _scan(text, 0)
        return value if end == len(text) else _DECODER.decode(text)
    except StopIteration:
        return _DECODER.decode(text)


class FrameDecoder:
    """Cuts a byte stream into messages: `feed` it whatever arrived, then take `next_message` until None.

    Incremental, so that one decoder serves a connection whatever the reads cut off: the asyncio client feeds
    it from `data_received`, the blocking client through `read_from`. A frame over `max_frame`, or one that is
    not a UTF-8 JSON object, raises TransportError: the connection cannot be trusted after it.
    """

    __slots__ = ("_buffer", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buffer = bytearray()
        self.max_frame = max_frame

    @property
    def pending(self) -> bool:
        """Whether part of a frame is waiting for the rest."""
        return bool(self._buffer)

    def feed(self, data: bytes | memoryview) -> None:
        self._buffer += data

    def next_message(self) -> dict[str, Any] | None:
        """The next complete message, or None until more bytes are fed."""
        buffer = self._buffer
        if len(buffer) < 4:  # 4 is HEADER.size, written as a literal: an attribute look-up costs here (every frame)
            return None
        (size,) = _unpack(buffer)
        if size > self.max_frame:
            raise TransportError(f"the runtime sent a frame of {size} bytes (limit {self.max_frame})")
        end = 4 + size
        if len(buffer) < end:
            return None
        body = buffer[4:end]
        del buffer[:end]
        try:  # frames are UTF-8: no need for json.loads' encoding detection (a UnicodeError is a ValueError)
            message = _decode(body.decode())
        except ValueError as exc:
            raise TransportError(f"the runtime sent a frame that is not JSON: {exc}") from None
        if not isinstance(message, dict):
            raise TransportError("the runtime sent a frame that is not a JSON object")
        return message

    def read_from(self, recv: Callable[[int], bytes]) -> dict[str, Any] | None:
        """The next message, reading with `recv` (a blocking `socket.recv` or `stream.read`) as long as needed;
        None at a clean end of stream, ConnectionLost at an end in the middle of a frame."""
        while (message := self.next_message()) is None:
            data = recv(RECV_SIZE)
            if not data:
                if self._buffer:
                    raise ConnectionLost("the connection closed in the middle of a frame")
                return None
            self._buffer += data
        return message


def check_first_frame(message: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """The runtime's first frame on a connection: its `ready` message, or RuntimeStartFailed for its
    `startup_failed` report; anything else, another protocol version included, breaks the protocol."""
    kind = message.get("type") if message is not None else None
    if kind == MessageType.STARTUP_FAILED:
        assert message is not None
        error = message.get("error")
        raise RuntimeStartFailed(error if isinstance(error, dict) else {"type": "Error", "message": str(error)})
    if message is None:
        raise ConnectionLost(f"the runtime in {where} closed the connection before it was ready")
    if kind != MessageType.READY:
        raise TransportError(f"the runtime in {where} sent {kind!r} before it was ready")
    if message.get("protocol") != PROTOCOL_VERSION:
        raise TransportError(f"the runtime speaks protocol {message.get('protocol')!r}, not {PROTOCOL_VERSION}")
    return message


def attached_frame(direct: bool = False) -> bytes:
    """The host's answer to `attach`: it accepted the connection (`direct`: and took the worker)."""
    return _request_frame({"type": MessageType.ATTACHED, "direct": True} if direct else {"type": MessageType.ATTACHED})


def check_attach_frame(message: dict[str, Any] | None) -> dict[str, Any]:
    """A worker connection's first frame: its `attach` message; anything else breaks the protocol."""
    if message is None or message.get("type") != MessageType.ATTACH:
        kind = message.get("type") if message is not None else None
        raise TransportError(f"a worker connection sent {kind!r} before attaching")
    if message.get("protocol") != PROTOCOL_VERSION:
        raise TransportError(f"the worker speaks protocol {message.get('protocol')!r}, not {PROTOCOL_VERSION}")
    return message


def reply_id(message: Mapping[str, Any]) -> int:
    """The request a runtime frame answers; -1 (never issued, so the frame is dropped) when it names none."""
    value = message.get("id")
    return value if isinstance(value, int) else -1


def expect_reply(message: dict[str, Any] | None, expect: MessageType) -> dict[str, Any]:
    """`message` when it is the `expect` answer to a request; TransportError for `error` or anything else."""
    if message is None:
        raise TransportError("no reply")
    kind = message.get("type")
    if kind == MessageType.ERROR:
        raise TransportError(f"the runtime refused the request: {message.get('message', '')}")
    if kind != expect:
        raise TransportError(f"the runtime answered {kind!r} where {expect.value!r} was expected")
    return message


def parse_result(message: dict[str, Any] | None) -> InvocationResult:
    """The answer to `invoke`."""
    if message is not None and message.get("type") == _RESULT:  # the usual answer: as expect_reply takes it
        return InvocationResult.from_message(message)
    return InvocationResult.from_message(expect_reply(message, MessageType.RESULT))


def parse_pong(message: dict[str, Any] | None) -> int:
    """The answer to `ping`: the number of invocations in flight on the instance (over every connection)."""
    return int(expect_reply(message, MessageType.PONG).get("inflight", 0))
