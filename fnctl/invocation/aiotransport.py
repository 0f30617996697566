"""The instance protocol of `fnctl.invocation.transport`, spoken from asyncio: one connection per instance carrying any
number of concurrent invocations, for the gateway's instance pool.

Same frames, same messages, same results and errors as the thread-based `UnixSocketTransport`, and the same
way in (`fnctl.invocation.transport`'s docstring): the runtime connects to this transport's own listener in the instance
directory, and only a peer that passes the check is accepted. Only the waiting differs (futures on the event
loop instead of a reader thread and locks).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fnctl.errors import BadInput
from fnctl.invocation.transport import (
    DEFAULT_MAX_FRAME,
    HEADER,
    INVOKE_GRACE,
    ConnectionLost,
    InvocationResult,
    PeerCheck,
    Rendezvous,
    TransportError,
    TransportTimeout,
    _expect,
    call_error,
    check_first_frame,
    encode_frame,
)

# (invocation_id, method, params) -> result; raising sends an error reply to the handler
AsyncCallHandler = Callable[[str, str, dict[str, Any]], Awaitable[Any]]
# Replies overdue are failed by one sweep every SWEEP seconds (so up to that late), not by a timer per request:
# asyncio keeps a cancelled timer in its heap until it would have fired, and at thousands of requests a
# second pushing and sifting those costs more than the rest of a request's round trip here.
SWEEP = 0.05
# A request waiting for its reply: (future, deadline on the loop's clock, message type, timeout given).
_Pending = tuple["asyncio.Future[dict[str, Any]]", float, str, float]
_DECODER = json.JSONDecoder()
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # as `encode_frame`'s
_INVOKE = '{"type":"invoke","event":%s,"context":{"invocation_id":%s,"deadline":%r,"caller":%s},"id":%d}'


class FrameTooLarge(TransportError):
    """A request over the transport's `max_request`: refused before sending, the connection stays usable
    (the runtime drops a connection whose frame is far over its payload limit, failing every caller on it)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the request is {size} bytes; the limit is {limit} bytes")
        self.size, self.limit = size, limit


class _Protocol(asyncio.Protocol):
    """Cuts the byte stream into frames and hands each message to its transport."""

    def __init__(self, owner: AsyncTransport) -> None:
        self.owner = owner
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer)
            if size > self.owner.max_frame:
                self.owner.abort(f"the runtime sent a frame of {size} bytes (limit {self.owner.max_frame})")
                return
            end = HEADER.size + size
            if len(buffer) < end:
                return
            body = buffer[HEADER.size:end]
            del buffer[:end]
            try:  # frames are UTF-8: no need for json.loads' encoding detection (a UnicodeError is a ValueError)
                message = _DECODER.decode(body.decode())
            except ValueError as exc:
                self.owner.abort(f"the runtime sent a frame that is not JSON: {exc}")
                return
            if not isinstance(message, dict):
                self.owner.abort("the runtime sent a frame that is not a JSON object")
                return
            self.owner.received(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost(f"the connection to the runtime failed: {exc}" if exc else "the runtime closed the connection")


class AsyncTransport:
    """One connection to a runtime. Not thread-safe: use it from the event loop that connected it.

    `on_lost` is called once, on the loop, when the connection goes away for any reason but `close()`.
    """

    def __init__(self, socket_dir: str, *, peer: PeerCheck, on_call: AsyncCallHandler | None = None,
                 max_frame: int = DEFAULT_MAX_FRAME, max_request: int | None = None) -> None:
        self.socket_dir = socket_dir
        self.peer = peer
        self.on_call = on_call
        self.on_lost: Callable[[str], None] | None = None
        self.ready: dict[str, Any] | None = None
        self.max_frame = max_frame
        self.max_request = max_request
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._outbox: list[bytes] | None = None  # frames of this loop round, written together by `_flush`
        self._transport: asyncio.Transport | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._lost: str | None = None  # why the connection is gone; None while usable
        self._closing = False
        self._notified = False
        self._calls: set[asyncio.Task[None]] = set()
        self._rendezvous: Rendezvous | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._lost is None

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Put up this process's listener, wait for the runtime to connect (checked by `peer`) and say ready;
        returns that message (RuntimeStartFailed when it reports that its handler failed to load)."""
        if self._transport is not None or self._closing:
            raise TransportError("the transport is already connected, or closed: use a new one")
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        self._ready = loop.create_future()
        try:
            await self._accept(loop, deadline, timeout)
            ready = await asyncio.wait_for(asyncio.shield(self._ready), max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            await self.close()
            raise TransportTimeout(f"the runtime in {self.socket_dir} did not say ready within {timeout:g}s") from None
        except BaseException:
            await self.close()
            raise
        self.ready = ready
        return ready

    async def _accept(self, loop: asyncio.AbstractEventLoop, deadline: float, timeout: float) -> None:
        rendezvous = self._rendezvous = Rendezvous(self.socket_dir)
        listener = rendezvous.sock
        assert listener is not None
        listener.setblocking(False)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransportTimeout(f"no runtime connected to {rendezvous.path} within {timeout:g}s")
                try:
                    conn, _ = await asyncio.wait_for(loop.sock_accept(listener), remaining)
                except TimeoutError:
                    continue  # the deadline check above says so
                if rendezvous.admit(conn, self.peer):
                    break
        finally:
            self._rendezvous = None
            rendezvous.close()  # connected or given up: the name goes at once
        try:
            # no isinstance check: uvloop's transports behave as asyncio.Transport without subclassing it
            transport, _ = await loop.create_unix_connection(lambda: _Protocol(self), sock=conn)
        except BaseException:
            conn.close()
            raise
        self._transport = transport

    async def configure(self, secrets: Mapping[str, str], timeout: float = 5.0) -> None:
        await self._request({"type": "configure", "secrets": dict(secrets)}, "configured", timeout)

    async def invoke(
        self, event: Any, *, invocation_id: str, deadline: float,
        caller: Mapping[str, Any] | None = None, timeout: float | None = None,
    ) -> InvocationResult:
        """Run the handler once. `deadline` is epoch seconds; `timeout` defaults to it plus a grace."""
        if timeout is None:
            timeout = max(deadline - time.time(), 0.0) + INVOKE_GRACE
        request_id = next(self._ids)
        try:  # `invoke_message` as `encode_frame` would write it, put together here: at a third of the cost
            body = _INVOKE % (_ENCODER.encode(event), _ENCODER.encode(invocation_id), float(deadline),
                              _ENCODER.encode(caller), request_id)
            frame = body.encode()
        except (TypeError, ValueError) as exc:
            raise BadInput(f"cannot send invoke: not JSON-serialisable: {exc}") from None
        reply = await self._send(request_id, HEADER.pack(len(frame)) + frame, "invoke", timeout)
        return InvocationResult.from_message(_expect(reply, "result"))

    async def ping(self, timeout: float = 5.0) -> int:
        """The number of invocations in flight on the instance (over every connection)."""
        return int((await self._request({"type": "ping"}, "pong", timeout)).get("inflight", 0))

    async def drain(self, timeout: float = 30.0) -> None:
        """Finish in-flight invocations, refuse new ones; the runtime exits once this returns."""
        await self._request({"type": "drain"}, "drained", timeout)

    async def close(self) -> None:
        self._closing = True
        if self._rendezvous is not None:
            self._rendezvous.close()
            self._rendezvous = None
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._fail_all("the transport was closed")
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self._calls):
            task.cancel()

    # ---- called by the protocol ----

    def received(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if self._ready is not None and not self._ready.done():
            try:
                self._ready.set_result(check_first_frame(message, self.socket_dir))
            except TransportError as exc:  # startup_failed, another protocol, or a frame out of turn
                self._ready.set_exception(exc)
                self.abort(exc.message)
            return
        if kind == "call":
            task = asyncio.get_running_loop().create_task(self._run_callback(message))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
            return
        request_id = message.get("id")
        pending = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if pending is not None and not pending[0].done():
            pending[0].set_result(message)
        # else: a reply to a request that already timed out or was cancelled

    def lost(self, reason: str) -> None:
        self._transport = None
        self._fail_all("the transport was closed" if self._closing else reason)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ConnectionLost(f"the runtime in {self.socket_dir} closed the connection "
                                                     "before it was ready"))
        if not self._notified and not self._closing and self.on_lost is not None:
            self._notified = True
            self.on_lost(self._lost or reason)

    def abort(self, reason: str) -> None:
        """A protocol violation: the connection cannot be trusted any more."""
        transport = self._transport
        self._fail_all(reason)
        if transport is not None:
            transport.abort()  # connection_lost follows, which notifies `on_lost`

    # ---- request/reply plumbing ----

    async def _request(self, message: dict[str, Any], expect: str, timeout: float) -> dict[str, Any]:
        request_id = message["id"] = next(self._ids)  # every caller builds its message afresh: no copy
        try:
            frame = encode_frame(message)
        except (TypeError, ValueError) as exc:
            raise BadInput(f"cannot send {message['type']}: not JSON-serialisable: {exc}") from None
        return _expect(await self._send(request_id, frame, message["type"], timeout), expect)

    async def _send(self, request_id: int, frame: bytes, kind: str, timeout: float) -> dict[str, Any]:
        """Send one request frame and wait for the reply with its id."""
        if self._transport is None or self._lost is not None:
            raise ConnectionLost(self._lost or "the transport is not connected")
        if self.max_request is not None and len(frame) - HEADER.size > self.max_request:
            raise FrameTooLarge(len(frame) - HEADER.size, self.max_request)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[request_id] = (future, loop.time() + timeout, kind, timeout)
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP, self._sweep)
        # Requests that arrive in one loop round go out in one write: one system call and one wake-up of
        # the runtime for all of them, instead of one each (the runtime batches its replies the same way).
        if self._outbox is None:
            self._outbox = [frame]
            loop.call_soon(self._flush)
        else:
            self._outbox.append(frame)
        try:
            return await future
        finally:
            self._pending.pop(request_id, None)  # cancelled by the caller: forget it, drop its late reply

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, None
        if frames and self._transport is not None and self._lost is None:  # else its requests failed already
            self._transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def _sweep(self) -> None:
        """Fail the requests past their deadline; look again in SWEEP seconds while any are waiting."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for request_id, (future, deadline, kind, timeout) in list(self._pending.items()):
            if deadline <= now:
                del self._pending[request_id]
                if not future.done():
                    future.set_exception(TransportTimeout(f"no reply to {kind} within {timeout:g}s"))
        self._sweeper = loop.call_later(SWEEP, self._sweep) if self._pending else None

    def _fail_all(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        pending, self._pending = self._pending, {}
        for future, *_ in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(self._lost))

    async def _run_callback(self, message: dict[str, Any]) -> None:
        call_id = message.get("id")
        try:
            if self.on_call is None:
                raise NotImplementedError("callbacks not supported")
            params = message.get("params")
            result = await self.on_call(str(message.get("invocation_id", "")), str(message.get("method", "")),
                                        params if isinstance(params, dict) else {})
            frame = encode_frame({"type": "reply", "id": call_id, "ok": True, "result": result})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the callback is the handler's error, never the connection's
            frame = encode_frame({"type": "reply", "id": call_id, "ok": False, "error": call_error(exc)})
        if self._transport is not None:
            self._transport.write(frame)
