"""The instance protocol (`fnctl.invocation.protocol`, docs/protocol.md) spoken from asyncio: one connection per
instance carrying any number of concurrent invocations, for the gateway's instance pool, and beside it one
worker connection per worker process of a synchronous handler, for that process's calls and results.

Same codec, same messages, same results and errors as the thread-based `UnixSocketTransport`, and the same
way in (`fnctl.invocation.rendezvous`'s docstring): the runtime connects to this transport's own listener in the
instance directory, and only a peer that passes the check is accepted. Only the waiting differs (futures on
the event loop instead of a reader thread and locks), and that this transport keeps its listener up once the
runtime connected and offers worker connections in `configure`: a worker process of the runtime then connects
to it (checked by the same `peer`), says `attach`, and writes its calls and results there; the replies to its
calls go back on that connection, so they reach the worker without passing through the runtime's first
process (which cost a process wake-up and ~80 us of the instance's CPU per call).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fnctl.invocation.aioworkers import FrameReader, WorkerListener
from fnctl.invocation.protocol import (
    DEFAULT_MAX_FRAME,
    HEADER,
    ConnectionLost,
    EncodedJson,
    InvocationResult,
    MessageType,
    TransportError,
    check_first_frame,
    configure_frame,
    drain_frame,
    expect_reply,
    invoke_frame,
    parse_pong,
    parse_result,
    ping_frame,
    reply_error_frame,
    reply_frame,
    reply_timeout,
)
from fnctl.invocation.rendezvous import PeerCheck, Rendezvous
from fnctl.invocation.transport import TransportTimeout


class Answered:
    """What a call handler returns when it answered at once: the transport writes the reply from the frame's
    own read callback, with no task (and no loop round) per call."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


# (invocation_id, method, params) -> `Answered(result)` now, or an awaitable of the result; raising (at once or
# when awaited) sends an error reply to the handler
AsyncCallHandler = Callable[[str, str, dict[str, Any]], "Awaitable[Any] | Answered"]
# Replies overdue are failed by one sweep every SWEEP seconds (so up to that late), not by a timer per request:
# asyncio keeps a cancelled timer in its heap until it would have fired, and at thousands of requests a
# second pushing and sifting those costs more than the rest of a request's round trip here.
SWEEP = 0.05
# Read per invocation: a module constant is read ~0.07 us faster than the member through its enum class
_INVOKE = MessageType.INVOKE
# A request waiting for its reply: (future, deadline on the loop's clock, message type, timeout given).
_Pending = tuple["asyncio.Future[dict[str, Any]]", float, MessageType, float]


class FrameTooLarge(TransportError):
    """A request over the transport's `max_request`: refused before sending, the connection stays usable
    (the runtime drops a connection whose frame is far over its payload limit, failing every caller on it)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the request is {size} bytes; the limit is {limit} bytes")
        self.size, self.limit = size, limit


class _Protocol(FrameReader):
    """The instance's first connection: hands each message to its transport."""

    def __init__(self, owner: AsyncTransport) -> None:
        super().__init__(owner.max_frame)
        self.owner = owner

    def frames(self) -> None:
        decoder, received = self.decoder, self.owner.received
        try:
            while (message := decoder.next_message()) is not None:
                received(message)
        except TransportError as exc:  # a frame over the limit or not a JSON object: nothing after it is trusted
            self.owner.abort(exc.message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost(f"the connection to the runtime failed: {exc}" if exc else "the runtime closed the connection")


class AsyncTransport:
    """One connection to a runtime. Not thread-safe: use it from the event loop that connected it.

    `on_lost` is called once, on the loop, when the connection goes away for any reason but `close()`.
    """

    def __init__(
        self,
        socket_dir: str,
        *,
        peer: PeerCheck,
        on_call: AsyncCallHandler | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_request: int | None = None,
    ) -> None:
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
        # The loop that connected: asked once (each `asyncio.get_running_loop()` is a getpid() system call)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._lost: str | None = None  # why the connection is gone; None while usable
        self._closing = False
        self._notified = False
        self._calls: set[asyncio.Task[None]] = set()
        self._rendezvous: Rendezvous | None = None  # while the runtime has not connected
        self._workers: WorkerListener | None = None  # the listener, kept up for the runtime's workers
        # Set by the first invocation's answer (or the connection's end): the gateway sets a started
        # instance's own CPU quota after it, not beside it (fnctl.gateway.pools).
        self.answered = asyncio.Event()

    @property
    def worker_connections(self) -> int:
        """How many of the runtime's worker processes attached a connection of their own."""
        return self._workers.attached if self._workers is not None else 0

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._lost is None

    async def connect(
        self, timeout: float = 10.0, *, secrets: Mapping[str, str] | None = None, listener: Rendezvous | None = None
    ) -> dict[str, Any]:
        """Put up this process's listener, wait for the runtime to connect (checked by `peer`) and say ready,
        then configure it (`secrets`, and the offer of worker connections: one round trip); returns the ready
        message (RuntimeStartFailed when it reports that its handler failed to load). `listener`: one put up
        before the container started (`fnctl.engine.instances.launch`), which this transport takes over, so
        that the runtime finds it on its first look instead of one scan later."""
        if self._transport is not None or self._closing:
            raise TransportError("the transport is already connected, or closed: use a new one")
        loop = self._loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        self._ready = loop.create_future()
        try:
            await self._accept(loop, deadline, timeout, listener)
            ready = await asyncio.wait_for(asyncio.shield(self._ready), max(deadline - time.monotonic(), 0.001))
        except TimeoutError:
            await self.close()
            raise TransportTimeout(f"the runtime in {self.socket_dir} did not say ready within {timeout:g}s") from None
        except BaseException:
            await self.close()
            raise
        self.ready = ready
        if self._workers is not None:
            concurrency = ready.get("concurrency")
            self._workers.limit = concurrency if isinstance(concurrency, int) and concurrency > 0 else 1
        try:
            await self.configure(secrets or {}, max(deadline - time.monotonic(), 1.0))
        except BaseException:
            await self.close()
            raise
        return ready

    async def _accept(
        self, loop: asyncio.AbstractEventLoop, deadline: float, timeout: float, given: Rendezvous | None
    ) -> None:
        rendezvous = self._rendezvous = given or Rendezvous(self.socket_dir)
        listener = rendezvous.sock
        assert listener is not None
        listener.setblocking(False)
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
        # The listener stays for the runtime's worker processes (the runtime's first process tried the name
        # once and never connects to it again); every connection passes the same peer check.
        self._rendezvous = None
        self._workers = WorkerListener(rendezvous, self.peer, self, self.max_frame)
        self._workers.start(loop)
        try:
            # no isinstance check: uvloop's transports behave as asyncio.Transport without subclassing it
            transport, _ = await loop.create_unix_connection(lambda: _Protocol(self), sock=conn)
        except BaseException:
            conn.close()
            raise
        self._transport = transport

    async def configure(self, secrets: Mapping[str, str], timeout: float = 5.0) -> None:
        """Set the secrets; and offer worker connections, when this transport still listens for them."""
        request_id = next(self._ids)
        frame = configure_frame(request_id, secrets, workers=self._workers is not None and not self._workers.closed)
        reply = await self._send(request_id, frame, MessageType.CONFIGURE, timeout)
        expect_reply(reply, MessageType.CONFIGURED)

    async def invoke(
        self,
        event: Any,
        *,
        invocation_id: str,
        deadline: float,
        caller: Mapping[str, Any] | EncodedJson | None = None,
        timeout: float | None = None,
    ) -> InvocationResult:
        """Run the handler once. `deadline` is epoch seconds; `timeout` defaults to it plus a grace."""
        request_id = next(self._ids)
        frame = invoke_frame(request_id, event, invocation_id, deadline, caller)
        wait = reply_timeout(deadline) if timeout is None else timeout
        return parse_result(await self._send(request_id, frame, _INVOKE, wait))

    async def ping(self, timeout: float = 5.0) -> int:
        """The number of invocations in flight on the instance (over every connection)."""
        request_id = next(self._ids)
        return parse_pong(await self._send(request_id, ping_frame(request_id), MessageType.PING, timeout))

    async def drain(self, timeout: float = 30.0) -> None:
        """Finish in-flight invocations, refuse new ones; the runtime exits once this returns."""
        request_id = next(self._ids)
        reply = await self._send(request_id, drain_frame(request_id), MessageType.DRAIN, timeout)
        expect_reply(reply, MessageType.DRAINED)

    async def close(self) -> None:
        self._closing = True
        self._stop_listening()
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._fail_all("the transport was closed")
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self._calls):
            task.cancel()

    def _stop_listening(self) -> None:
        if self._rendezvous is not None:
            self._rendezvous.close()
            self._rendezvous = None
        if self._workers is not None:
            self._workers.close()

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
        if kind == MessageType.CALL:
            self.answer_call(message, self._transport)
            return
        self.resolve(message)

    def resolve(self, message: dict[str, Any]) -> None:
        """A runtime frame that answers a request (from any of the instance's connections)."""
        request_id = message.get("id")
        pending = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if pending is not None and pending[2] is _INVOKE:
            self.answered.set()
        if pending is not None and not pending[0].done():
            pending[0].set_result(message)
        # else: a reply to a request that already timed out or was cancelled

    def lost(self, reason: str) -> None:
        self._transport = None
        self.answered.set()  # nothing more to wait for
        self._stop_listening()  # the instance is gone: its workers' connections end with it
        self._fail_all("the transport was closed" if self._closing else reason)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(
                ConnectionLost(f"the runtime in {self.socket_dir} closed the connection before it was ready")
            )
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

    async def _send(self, request_id: int, frame: bytes, kind: MessageType, timeout: float) -> dict[str, Any]:
        """Send one request frame (built with `request_id`) and wait for the runtime frame with that id. An
        invocation goes straight to an idle worker this host took, when there is one: the runtime's first
        process (a wake-up, a read and a write there, ~40 % of the instance's CPU per no-op) is not on the way."""
        if self._transport is None or self._lost is not None:
            raise ConnectionLost(self._lost or "the transport is not connected")
        if self.max_request is not None and len(frame) - HEADER.size > self.max_request:
            raise FrameTooLarge(len(frame) - HEADER.size, self.max_request)
        workers = self._workers
        worker = workers.take() if kind is _INVOKE and workers is not None else None
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[request_id] = (future, loop.time() + timeout, kind, timeout)
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP, self._sweep)
        if worker is not None:
            worker.send(request_id, frame)
        # Requests that arrive in one loop round go out in one write: one system call and one wake-up of
        # the runtime for all of them, instead of one each (the runtime batches its replies the same way).
        elif self._outbox is None:
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

    def answer_call(self, message: dict[str, Any], transport: asyncio.Transport | None) -> None:
        """Answer a `call` frame on the connection it came from (`transport`): at once when the handler can
        (`Answered`), else in a task of its own."""
        # The frame's fields as `CallRequest.from_message` reads them, without building one per call.
        call_id, params = message.get("id"), message.get("params")
        try:
            if self.on_call is None:
                raise NotImplementedError("callbacks not supported")
            answer = self.on_call(
                str(message.get("invocation_id", "")),
                str(message.get("method", "")),
                params if isinstance(params, dict) else {},
            )
            if not isinstance(answer, Answered):
                task = asyncio.get_running_loop().create_task(self._run_callback(call_id, answer, transport))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
                return
            frame = reply_frame(call_id, answer.value)
        except Exception as exc:  # any failure of the callback is the handler's error, never the connection's
            frame = reply_error_frame(call_id, exc)
        if transport is not None and not transport.is_closing():
            transport.write(frame)

    async def _run_callback(self, call_id: Any, answer: Awaitable[Any], transport: asyncio.Transport | None) -> None:
        try:
            frame = reply_frame(call_id, await answer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of the callback is the handler's error, never the connection's
            frame = reply_error_frame(call_id, exc)
        if transport is not None and not transport.is_closing():
            transport.write(frame)
