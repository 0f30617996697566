"""The asyncio host's side of worker connections (docs/protocol.md, "Worker connections"), and how its
connections read.

`FrameReader`: a connection's protocol reads into a buffer of its own (asyncio's plain protocols get a fresh
256 KiB bytes object per read: an allocation of that size, and its page faults, for every frame, ~30 us of
kernel time per call here) and cuts the stream into messages.

`WorkerListener`: once the runtime connected, `AsyncTransport` keeps its listener up for the runtime's worker
processes. Every connection made to it passes the same peer check as the runtime's first one (others are
closed unread), must say `attach` first and gets `attached`; then it carries that worker's `call` frames,
answered on the same connection, and the `result` frames of the invocations it runs. At most `limit` (the
runtime's `concurrency`: one per worker process) are kept at a time; more are closed unread, so code in the
sandbox cannot make the host hold any number of connections. A worker that attaches with `direct` is taken
(`attached` says `direct` back): once the result of the invocation it attached for came, it is idle, and the
transport sends it the next invocation itself (`take`), one at a time, instead of through the runtime's first
process. Code in the sandbox that attaches so gets invocations of its own function: no more than it could
read from the connections it shares already.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Protocol

from fnctl.invocation.protocol import (
    RECV_SIZE,
    FrameDecoder,
    MessageType,
    TransportError,
    attached_frame,
    check_attach_frame,
)
from fnctl.invocation.rendezvous import PeerCheck, Rendezvous

# Read per frame: module constants are read ~0.07 us faster than the members through their enum class
_CALL, _RESULT = MessageType.CALL, MessageType.RESULT


class CallSink(Protocol):
    """Where a worker connection's frames go: the transport of the instance's first connection."""

    def answer_call(self, message: dict[str, Any], transport: asyncio.Transport | None) -> None: ...

    def resolve(self, message: dict[str, Any]) -> None: ...


class FrameReader(asyncio.BufferedProtocol):
    """Reads into a buffer of its own and feeds the connection's decoder; `frames` takes the messages."""

    def __init__(self, max_frame: int) -> None:
        self.decoder = FrameDecoder(max_frame)
        self.incoming = memoryview(bytearray(RECV_SIZE))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.incoming

    def buffer_updated(self, nbytes: int) -> None:
        self.decoder.feed(self.incoming[:nbytes])
        self.frames()

    def frames(self) -> None:
        raise NotImplementedError


class _WorkerConnection(FrameReader):
    def __init__(self, listener: WorkerListener) -> None:
        super().__init__(listener.max_frame)
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.attached = False
        # Taken (`direct`): this host sends the worker its invocations here, one at a time. `request`: the one
        # it runs (-1: the one the runtime's first process gave it when it attached; None: idle).
        self.direct = False
        self.request: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass it
        self.listener.connections.add(self)

    def frames(self) -> None:
        decoder, sink = self.decoder, self.listener.sink
        try:
            while (message := decoder.next_message()) is not None:
                kind = message.get("type")
                if kind == _CALL and self.attached:
                    sink.answer_call(message, self.transport)
                elif self.attached:
                    sink.resolve(message)
                    if self.direct and self.request is not None and kind == _RESULT:
                        self.request = None  # its invocation ended: idle, and ours to give the next one
                        self.listener.idle.append(self)
                else:
                    check_attach_frame(message)
                    self.attached = True
                    # It runs the invocation it attached for; its result makes it idle.
                    self.direct, self.request = self.listener.direct and message.get("direct") is True, -1
                    assert self.transport is not None
                    self.transport.write(attached_frame(self.direct))
                    self.listener.attached += 1
        except TransportError:  # a broken worker connection: closed; the instance's first connection lives on
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        listener = self.listener
        listener.connections.discard(self)
        if self in listener.idle:
            listener.idle.remove(self)
        # An invocation sent here fails with the first connection, which the worker's exit ends (the
        # instance's exit state then says why), or at its deadline: not here, before the instance is seen gone.
        self.request, self.direct = None, False

    def send(self, request_id: int, frame: bytes) -> None:
        """Give this idle taken worker an invocation."""
        self.request = request_id
        assert self.transport is not None
        self.transport.write(frame)


class WorkerListener:
    """A connected transport's listener, kept up for the runtime's worker processes until `close`."""

    def __init__(self, rendezvous: Rendezvous, peer: PeerCheck, sink: CallSink, max_frame: int) -> None:
        self.rendezvous, self.peer, self.sink, self.max_frame = rendezvous, peer, sink, max_frame
        self.connections: set[_WorkerConnection] = set()
        self.attached = 0  # worker connections that said `attach` (figures and tests)
        self.limit = 0  # connections kept at most: set from the runtime's `ready` (none before it)
        self.direct = True  # whether this host takes the workers that offer themselves (`configure` said so)
        self.idle: list[_WorkerConnection] = []  # taken workers that run nothing: the next invocations go there
        self.closed = False
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = self.rendezvous.sock
        assert sock is not None
        self._task = loop.create_task(self._accept(loop, sock))

    async def _accept(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError:
                return  # the listener was closed
            if not self.rendezvous.admit(conn, self.peer):
                continue
            if len(self.connections) >= self.limit:
                conn.close()  # more than the runtime has workers: not served
                continue
            try:
                await loop.create_unix_connection(lambda: _WorkerConnection(self), sock=conn)
            except OSError:
                conn.close()

    def take(self) -> _WorkerConnection | None:
        """An idle taken worker, now busy (None: the invocation goes to the runtime's first process)."""
        while self.idle:
            connection = self.idle.pop()
            if connection.transport is not None and not connection.transport.is_closing():
                return connection
        return None

    def close(self) -> None:
        """Stop listening (the name goes) and close the worker connections."""
        self.closed = True
        self.idle.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()  # its pending accept leaves the loop before the socket closes:
            sock = self.rendezvous.sock
            if sock is not None:
                with contextlib.suppress(ValueError, KeyError, RuntimeError):
                    asyncio.get_running_loop().remove_reader(sock.fileno())
        self.rendezvous.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
