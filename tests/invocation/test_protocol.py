"""Conformance of the wire protocol (docs/protocol.md) to its golden frames, tests/golden/protocol/*.json.

Each golden file is one exchange on one connection: the frames the host sends and the replies a runtime must
give, in order. Two halves run the same files:

(a) the host codec (`fnctl.invocation.protocol`): its builders write exactly the golden host frames, and it
    decodes and parses every golden runtime frame;
(b) every runtime in RUNTIMES, started as a local process (no Docker) with the conformance handler of its
    language: the host listens in the instance directory as in production, the runtime connects out, and
    the golden host frames go out byte for byte while each runtime frame must match its golden pattern.

A runtime frame in a golden file is a pattern: exact values, except `{"$any": "int" | "number" | "string"}`
(any value of that JSON type: a pid, a duration, a runtime's own wording) and `{"$bind": NAME}` (any value,
kept under NAME for a later host frame's `{"$ref": NAME}`: the id of a `call`). Objects must have exactly the
golden keys, in any order. A host frame marked `"foreign": true` is one this host never sends (a newer host's).
A frame marked `"optional": true` belongs to a worker connection (an exchange whose `configure` offers them):
the harness keeps its listener up, accepts a runtime's worker processes there with the same kind of peer check,
and answers each call on the connection it came on; a runtime without worker processes skips those frames and
sends the rest on its first connection.

A runtime in another language joins by one more entry in RUNTIMES: the command that starts it and the
directory of its conformance handler, which behaves as tests/golden/protocol/handlers/python/ does. The
Node.js runtime runs on the pinned node binary scripts/build-node-image.sh leaves on the host.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from node_helpers import NODE_RUNTIME, node_binary
from runtime_helpers import runtime_module

from fnctl.invocation.protocol import (
    HEADER,
    PROTOCOL_VERSION,
    CallFailed,
    CallRequest,
    EncodedJson,
    ErrorKind,
    FrameDecoder,
    InvocationResult,
    MessageType,
    RuntimeStartFailed,
    TransportError,
    attached_frame,
    check_attach_frame,
    check_first_frame,
    configure_frame,
    drain_frame,
    encode_frame,
    expect_reply,
    invoke_frame,
    parse_pong,
    parse_result,
    ping_frame,
    reply_error_frame,
    reply_frame,
)
from fnctl.invocation.rendezvous import Rendezvous

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "protocol"
FRAME_TIMEOUT = 15.0  # seconds for one runtime frame: a start under load, never a measure of speed


@dataclass(frozen=True)
class Exchange:
    name: str
    about: str
    handler: str  # which conformance handler the runtime loads: "conformance" or "broken"
    frames: list[dict[str, Any]]
    env: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None  # how the runtime exits once the host hangs up after the last frame


def load_exchanges() -> list[Exchange]:
    exchanges = []
    for path in sorted(GOLDEN.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        exchanges.append(
            Exchange(
                path.stem, data["about"], data["handler"], data["frames"], data.get("env", {}), data.get("exit_code")
            )
        )
    return exchanges


EXCHANGES = load_exchanges()


@dataclass(frozen=True)
class RuntimeUnderTest:
    """One runtime implementation: how to start it, and where its conformance handlers are.

    The runtime gets its configuration from the environment (docs/protocol.md, "A new runtime"): the handler,
    its code directory, the socket directory, the function's name, revision and limits.
    """

    name: str
    command: tuple[str, ...]
    handlers: Path  # a directory holding the handlers that `handler_spec` names
    handler_spec: Mapping[str, str]  # golden handler name -> FNCTL_HANDLER
    workers: bool  # whether a synchronous handler runs in worker processes that take a worker connection


RUNTIMES = [
    RuntimeUnderTest(
        "python",
        (sys.executable, str(ROOT / "runtime-image" / "fnctl_runtime.py")),
        GOLDEN / "handlers" / "python",
        {"conformance": "conformance.handler", "broken": "broken.handler"},
        workers=True,
    ),
    RuntimeUnderTest(
        "node",
        (node_binary(), str(NODE_RUNTIME)),
        GOLDEN / "handlers" / "node",
        {"conformance": "conformance.handler", "broken": "broken.cjs:handler"},
        workers=False,
    ),
]


# ---- patterns ------------------------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "number": (int, float), "string": (str,)}
_SAMPLES: dict[str, Any] = {"int": 4242, "number": 1.5, "string": "text"}


def _marker(value: Any) -> tuple[str, str] | None:
    """("$any" | "$bind" | "$ref", argument) when `value` is a placeholder object."""
    if isinstance(value, dict) and len(value) == 1:
        [(key, argument)] = value.items()
        if key in ("$any", "$bind", "$ref"):
            return key, argument
    return None


def match(pattern: Any, value: Any, bound: dict[str, Any], where: str = "$") -> None:
    """Assert that `value` fits `pattern`, keeping `$bind` values in `bound`."""
    marker = _marker(pattern)
    if marker is not None:
        key, argument = marker
        if key == "$any":
            assert isinstance(value, _TYPES[argument]) and not isinstance(value, bool), (
                f"{where}: expected any {argument}, got {value!r}"
            )
        elif key == "$bind":
            bound[argument] = value
        else:
            assert value == bound[argument], f"{where}: expected {bound[argument]!r}, got {value!r}"
        return
    if isinstance(pattern, dict):
        assert isinstance(value, dict), f"{where}: expected an object, got {value!r}"
        assert sorted(value) == sorted(pattern), f"{where}: keys {sorted(value)}, golden {sorted(pattern)}"
        for key, inner in pattern.items():
            match(inner, value[key], bound, f"{where}.{key}")
    elif isinstance(pattern, list):
        assert isinstance(value, list) and len(value) == len(pattern), f"{where}: expected {pattern!r}, got {value!r}"
        for n, (inner, item) in enumerate(zip(pattern, value, strict=True)):
            match(inner, item, bound, f"{where}[{n}]")
    else:
        assert (
            value == pattern
            and type(value) is type(pattern)
            or (isinstance(pattern, float) and isinstance(value, int) and value == pattern)
        ), f"{where}: expected {pattern!r}, got {value!r}"


def fill(pattern: Any, bound: Mapping[str, Any]) -> Any:
    """`pattern` with every placeholder replaced: `$ref`/`$bind` by the bound value (a sample when none is
    bound), `$any` by a sample of its type."""
    marker = _marker(pattern)
    if marker is not None:
        key, argument = marker
        return _SAMPLES[argument] if key == "$any" else bound.get(argument, f"{argument}-sample")
    if isinstance(pattern, dict):
        return {key: fill(inner, bound) for key, inner in pattern.items()}
    if isinstance(pattern, list):
        return [fill(inner, bound) for inner in pattern]
    return pattern


# ---- (a) the host codec against the golden frames ------------------------------------------------


def host_frame(message: dict[str, Any]) -> bytes:
    """`message` as the host codec's builder for its type writes it."""
    kind = message["type"]
    if kind == MessageType.CONFIGURE:
        return configure_frame(message["id"], message["secrets"], workers=message.get("workers", False))
    if kind == MessageType.ATTACHED:
        return attached_frame(message.get("direct", False))
    if kind == MessageType.INVOKE:
        context = message["context"]
        return invoke_frame(
            message["id"], message["event"], context["invocation_id"], context["deadline"], context["caller"]
        )
    if kind == MessageType.PING:
        return ping_frame(message["id"])
    if kind == MessageType.DRAIN:
        return drain_frame(message["id"])
    if kind == MessageType.REPLY and message["ok"]:
        return reply_frame(message["id"], message["result"])
    if kind == MessageType.REPLY:
        error = message["error"]
        return reply_error_frame(message["id"], type(error["type"], (Exception,), {})(error["message"]))
    raise AssertionError(f"the host sends no {kind!r} frames: mark the golden frame foreign")


def golden_bytes(message: dict[str, Any]) -> bytes:
    """The golden frame on the wire: the header, then the golden object as compact UTF-8 JSON, keys in the
    golden file's order."""
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def decode_in_pieces(frame: bytes) -> dict[str, Any]:
    """`frame` through the incremental decoder, fed a byte at a time: no message before the last byte."""
    decoder = FrameDecoder()
    for n in range(len(frame) - 1):
        decoder.feed(frame[n : n + 1])
        assert decoder.next_message() is None
    decoder.feed(frame[-1:])
    message = decoder.next_message()
    assert message is not None and not decoder.pending
    return message


def parse_runtime_frame(message: dict[str, Any]) -> None:
    """Run `message` through the host parser for its type and check what it makes of it."""
    kind = message["type"]
    if kind == MessageType.READY:
        assert check_first_frame(message, "golden") == message
    elif kind == MessageType.STARTUP_FAILED:
        with pytest.raises(RuntimeStartFailed) as failed:
            check_first_frame(message, "golden")
        assert failed.value.error == message["error"]
        assert failed.value.detail == message["error"]["traceback"]
    elif kind == MessageType.RESULT:
        result = parse_result(message)
        assert result.ok is message["ok"] and result.logs == message["logs"]
        assert result.duration_ms == message["duration_ms"] and result.logs_truncated is message["logs_truncated"]
        if message["ok"]:
            assert result.result == message["result"] and result.error is None
        else:
            assert result.error is not None
            assert result.error.kind is ErrorKind(message["error"]["kind"])
            assert (result.error.type, result.error.message, result.error.traceback) == (
                message["error"]["type"],
                message["error"]["message"],
                message["error"]["traceback"],
            )
    elif kind == MessageType.PONG:
        assert parse_pong(message) == message["inflight"]
    elif kind in (MessageType.CONFIGURED, MessageType.DRAINED):
        assert expect_reply(message, MessageType(kind)) == message
    elif kind == MessageType.ERROR:
        with pytest.raises(TransportError, match="refused the request"):
            expect_reply(message, MessageType.PONG)
    elif kind == MessageType.ATTACH:
        assert check_attach_frame(message) == message
    elif kind == MessageType.CALL:
        call = CallRequest.from_message(message)
        assert (call.id, call.invocation_id, call.method, call.params) == (
            message["id"],
            message["invocation_id"],
            message["method"],
            message["params"],
        )
    else:
        raise AssertionError(f"no host parser for a runtime frame of type {kind!r}")


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: e.name)
def test_host_codec_writes_and_reads_the_golden_frames(exchange: Exchange) -> None:
    for frame in exchange.frames:
        message = fill(frame["message"], {})
        wire = golden_bytes(message)
        if frame["from"] == "host":
            if not frame.get("foreign"):
                assert host_frame(message) == wire
        else:
            assert decode_in_pieces(wire) == message
            parse_runtime_frame(message)


def test_every_message_type_has_a_golden_frame() -> None:
    seen = {frame["message"]["type"] for exchange in EXCHANGES for frame in exchange.frames}
    assert {kind.value for kind in MessageType} <= seen


def test_a_runtime_of_another_protocol_version_is_refused() -> None:
    ready = {
        "type": "ready",
        "protocol": PROTOCOL_VERSION + 1,
        "function": "f",
        "revision": "1",
        "pid": 1,
        "concurrency": 1,
    }
    with pytest.raises(TransportError, match=f"speaks protocol {PROTOCOL_VERSION + 1}, not {PROTOCOL_VERSION}"):
        check_first_frame(ready, "golden")


def test_broken_frames_are_refused() -> None:
    for body, reason in ((b"[1]", "not a JSON object"), (b"{nope", "not JSON"), (b'"\xff"', "not JSON")):
        decoder = FrameDecoder()
        decoder.feed(HEADER.pack(len(body)) + body)
        with pytest.raises(TransportError, match=reason):
            decoder.next_message()
    decoder = FrameDecoder(max_frame=10)
    decoder.feed(encode_frame({"type": "pong", "id": 1, "inflight": 0})[:4])  # refused on its header alone
    with pytest.raises(TransportError, match="limit 10"):
        decoder.next_message()

    decoder = FrameDecoder()  # a whole value followed by more is no frame either
    decoder.feed(HEADER.pack(12) + b'{"id":1} {}x')
    with pytest.raises(TransportError, match="not JSON"):
        decoder.next_message()


def test_only_a_result_answers_an_invoke() -> None:
    """`parse_result` takes a `result` directly; anything else goes through `expect_reply`'s refusals."""
    with pytest.raises(TransportError, match="refused the request: busy"):
        parse_result({"type": "error", "id": 1, "message": "busy"})
    with pytest.raises(TransportError, match="answered 'pong' where 'result' was expected"):
        parse_result({"type": "pong", "id": 1, "inflight": 0})
    with pytest.raises(TransportError, match="no reply"):
        parse_result(None)
    with pytest.raises(TransportError, match="without an error"):
        parse_result({"type": "result", "id": 1, "ok": False})
    assert parse_result({"type": "result", "id": 1, "ok": True}) == InvocationResult(True, None, None, "", False, 0.0)


def test_frames_assembled_from_parts_are_the_frames_a_dict_encodes_to() -> None:
    """Replies (host) and calls (runtime) are written around their parts' JSON text rather than from a dict:
    the same bytes whatever the parts hold, and both sides read a frame with whitespace around its object."""
    runtime = runtime_module()
    odd = {"é": ["\u2028", '"', None, 1.5], "n": -0.0}
    values: tuple[Any, ...] = (odd, "x", None, [], 7)
    for value in values:
        assert reply_frame("w1.2", value) == encode_frame({"type": "reply", "id": "w1.2", "ok": True, "result": value})
        assert runtime._call_frame("c9", "inv-é", "db.get", value) == runtime.encode(
            {"type": "call", "id": "c9", "invocation_id": "inv-é", "method": "db.get", "params": value}
        )
    idents: tuple[Any, ...] = ('inv-é\u2028"', ErrorKind.DRAINING, 7)  # a str quoted directly, others encoded
    for ident in idents:
        for who in (None, {"subject": "é", "roles": ["r"]}, MappingProxyType({"kind": "key"})):
            context = {"invocation_id": ident, "deadline": 1733300005.125, "caller": None if who is None else dict(who)}
            assert invoke_frame(9, odd, ident, 1733300005.125, who) == encode_frame(
                {"type": "invoke", "event": odd, "context": context, "id": 9}
            )
    caller = {"subject": "é", "roles": ["r"], "tenant": None}  # its text encoded once: spliced in as it is
    text = EncodedJson(json.dumps(caller, separators=(",", ":"), ensure_ascii=False))
    assert invoke_frame(9, odd, "i", 5.0, text) == invoke_frame(9, odd, "i", 5.0, caller)
    for request_id in (7, "r-é", None, "\ud800", True):  # a result's envelope too, filled in from a template
        for logs, truncated in (("", False), ('a "q"\n\x01é\u2028', True)):
            outcome = runtime._Outcome(True, 0.1 + 0.2, result_json=b'{"a":[1,"\xc3\xa9"]}')
            head = {"type": "result", "id": request_id, "ok": True, "logs": logs, "logs_truncated": truncated}
            envelope = head | {"duration_ms": 0.1 + 0.2, "result": {"a": [1, "é"]}}
            assert runtime._result_frame(request_id, outcome, logs, truncated) == runtime.encode(envelope)
    failed = {"type": "reply", "id": 3, "ok": False, "error": {"status": 404, "type": "NotFound", "message": "m"}}
    assert reply_error_frame(3, CallFailed("NotFound", "m", {"status": 404})) == encode_frame(failed)
    spaced = b' \n{"type": "pong", "id": 1, "inflight": 0} '
    decoder = FrameDecoder()
    decoder.feed(HEADER.pack(len(spaced)) + spaced)
    assert decoder.next_message() == runtime._decode(spaced.decode()) == {"type": "pong", "id": 1, "inflight": 0}
    with pytest.raises(ValueError, match="Extra data"):
        runtime._decode('{"id":1} {}')


# ---- (b) every runtime against the golden exchanges ------------------------------------------------


def _forked_by(parent: int) -> Any:
    """A peer check for a runtime run as a local process: it, or a process it forked (its workers)."""

    def check(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        return parent in (pid, ppid)

    return check


@dataclass
class Connection:
    process: subprocess.Popen[bytes]
    sock: socket.socket
    decoder: FrameDecoder
    log: Path
    listener: Rendezvous | None = None  # kept up for worker connections when the exchange offers them
    workers: dict[socket.socket, FrameDecoder] = field(default_factory=dict)

    def receive(self) -> dict[str, Any] | None:
        """The next runtime frame on the first connection (None: it ended)."""
        got = self.receive_any()
        return None if got is None else got[0]

    def receive_any(self) -> tuple[dict[str, Any], socket.socket] | None:
        """The next runtime frame on any of its connections, and which; None when the first one ended.
        Accepts worker connections meanwhile (checked: the runtime or a process it forked)."""
        decoders = {self.sock: self.decoder, **self.workers}
        give_up = time.monotonic() + FRAME_TIMEOUT
        while True:
            for sock, decoder in decoders.items():
                message = decoder.next_message()
                if message is not None:
                    return message, sock
            watched: list[Any] = list(decoders)
            if self.listener is not None and self.listener.sock is not None:
                watched.append(self.listener.sock)
            readable, _, _ = select.select(watched, [], [], max(give_up - time.monotonic(), 0))
            assert readable, f"no runtime frame within {FRAME_TIMEOUT}s"
            for sock in readable:
                if self.listener is not None and sock is self.listener.sock:
                    worker, _ = sock.accept()
                    if self.listener.admit(worker, _forked_by(self.process.pid)):
                        self.workers[worker] = decoders[worker] = FrameDecoder()
                    continue
                data = sock.recv(65536)
                if not data and sock is self.sock:
                    return None
                decoders[sock].feed(data)


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[Any]:
    """Start a runtime for an exchange and accept its connection, as the host does in production."""
    started: list[Connection] = []
    socket_dir = Path(tempfile.mkdtemp(prefix="fnproto-"))  # a socket path must stay under ~108 bytes

    def start(runtime: RuntimeUnderTest, exchange: Exchange) -> Connection:
        code = tmp_path / "code"
        shutil.copytree(runtime.handlers, code)  # a copy: a runtime may write caches next to the code
        env = {
            **os.environ,
            "FNCTL_HANDLER": runtime.handler_spec[exchange.handler],
            "FNCTL_CODE_DIR": str(code),
            "FNCTL_DEPS_DIR": str(tmp_path / "deps"),
            "FNCTL_SOCKET_DIR": str(socket_dir),
            "FNCTL_FUNCTION": "conformance",
            "FNCTL_REVISION": "r1",
            "FNCTL_CONCURRENCY": "2",
            **exchange.env,
        }
        rendezvous = Rendezvous(str(socket_dir))  # listening before the runtime starts, as `instances.start` does
        log = tmp_path / "runtime.log"
        with log.open("wb") as out:
            process = subprocess.Popen(list(runtime.command), env=env, stdout=out, stderr=out)
        offers_workers = any(frame["message"].get("workers") for frame in exchange.frames if frame["from"] == "host")
        try:
            sock = rendezvous.accept(time.monotonic() + FRAME_TIMEOUT, lambda pid: pid == process.pid)
        except BaseException:
            process.kill()
            process.wait(timeout=10)
            rendezvous.close()
            raise
        if not offers_workers:
            rendezvous.close()
        connection = Connection(process, sock, FrameDecoder(), log, rendezvous if offers_workers else None)
        started.append(connection)
        return connection

    yield start
    for connection in started:
        connection.sock.close()
        for worker in connection.workers:
            worker.close()
        if connection.listener is not None:
            connection.listener.close()
        if connection.process.poll() is None:
            connection.process.kill()
        connection.process.wait(timeout=10)
    shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: e.name)
@pytest.mark.parametrize("runtime", RUNTIMES, ids=lambda r: r.name)
def test_runtime_gives_the_golden_replies(runtime: RuntimeUnderTest, exchange: Exchange, connect: Any) -> None:
    conn: Connection = connect(runtime, exchange)
    bound: dict[str, Any] = {}
    came_on: dict[Any, socket.socket] = {}  # a call's id -> the connection it came on, where its reply goes
    attached: socket.socket | None = None  # the worker connection that said `attach`
    waiting: tuple[dict[str, Any], socket.socket] | None = None  # received, not matched yet
    for n, frame in enumerate(exchange.frames):
        if frame["from"] == "host":
            if frame.get("optional") and attached is None:
                continue  # no worker connection: nothing to answer
            message = fill(frame["message"], bound)
            target = attached if message["type"] == MessageType.ATTACHED else conn.sock
            target = came_on.get(message.get("id"), target) if message["type"] == MessageType.REPLY else target
            assert target is not None
            target.sendall(golden_bytes(message))
            continue
        got = waiting or conn.receive_any()
        assert got is not None, f"frame {n}: the runtime closed the connection; its log:\n{conn.log.read_text()}"
        message, sock = got
        if frame.get("optional") and message.get("type") != frame["message"]["type"]:
            waiting = got  # a runtime without worker processes: this frame is for the next pattern
            continue
        waiting = None
        match(frame["message"], message, bound, f"frame {n}")
        if message["type"] == MessageType.ATTACH:
            assert sock is not conn.sock, f"frame {n}: `attach` on the first connection"
            attached = sock
        elif message["type"] == MessageType.CALL:
            came_on[message["id"]] = sock
    if any(frame.get("optional") for frame in exchange.frames):
        assert (attached is not None) == runtime.workers, f"worker connection: {attached}"
    if exchange.exit_code is not None:
        conn.sock.shutdown(socket.SHUT_WR)  # the host hangs up
        assert conn.receive() is None  # nothing more was said
        assert conn.process.wait(timeout=FRAME_TIMEOUT) == exchange.exit_code
