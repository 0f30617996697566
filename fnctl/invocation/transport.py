"""Host side of the instance protocol: length-prefixed JSON frames to the in-container runtime.

`Transport` is the one interface the instance pool talks to; `UnixSocketTransport` implements it over a Unix
socket connection, multiplexing any number of calling threads over one connection.

Who connects to whom (protocol 1, since the socket-directory escape was closed): the runtime connects out to
this process's own listener, and only the expected peer is admitted (`fnctl.invocation.rendezvous`).

The frames and messages, their builders and parsers, live in `fnctl.invocation.protocol` (docs/protocol.md);
this module owns the connection and the waiting of concurrent callers.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from fnctl.invocation.protocol import (
    DEFAULT_MAX_FRAME,
    CallRequest,
    ConnectionLost,
    FrameDecoder,
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
    reply_id,
    reply_timeout,
)
from fnctl.invocation.rendezvous import PeerCheck, Rendezvous

# (invocation_id, method, params) -> result; raising sends an error reply to the handler
CallHandler = Callable[[str, str, dict[str, Any]], Any]


class TransportTimeout(TransportError):
    """No reply came before the timeout; the connection itself may still be fine."""


class Transport(Protocol):
    """How the host talks to one instance's runtime. All methods but `connect` are thread-safe."""

    on_call: CallHandler | None

    def connect(self, timeout: float = 10.0) -> dict[str, Any]: ...

    def configure(self, secrets: Mapping[str, str], timeout: float = 5.0) -> None: ...

    def invoke(
        self,
        event: Any,
        *,
        invocation_id: str,
        deadline: float,
        caller: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> InvocationResult: ...

    def ping(self, timeout: float = 5.0) -> int: ...

    def drain(self, timeout: float = 30.0) -> None: ...

    def close(self) -> None: ...


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

    The runtime of the instance directory `socket_dir` connects to this transport's own listener; only a peer
    that passes `peer` is accepted. Whoever pops a waiter from `_pending` (reader, timeout or failure path) is
    the only one to release it.
    """

    def __init__(
        self,
        socket_dir: str,
        *,
        peer: PeerCheck,
        on_call: CallHandler | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        callback_workers: int = 16,
    ) -> None:
        self.socket_dir = socket_dir
        self.peer = peer  # read at each accept: `instances.start` sets it once the container exists
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
        self._rendezvous: Rendezvous | None = None

    def __enter__(self) -> UnixSocketTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def listen(self) -> None:
        """Put up this process's listener now: before the container starts, so that its runtime finds it at
        once (and can report a failed start over it)."""
        if self._rendezvous is None:
            self._rendezvous = Rendezvous(self.socket_dir)

    def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for the runtime to connect (checked by `peer`) and say ready; returns that message.

        RuntimeStartFailed when it reports that the handler failed to load. On a TransportTimeout with nobody
        connected, the listener stays up and `connect` may be called again (`instances.start` looks at the
        container's state in between); `close` takes it down.
        """
        if self._sock is not None or self._closing:
            raise TransportError("the transport is already connected, or closed: use a new one")
        deadline = time.monotonic() + timeout
        self.listen()
        rendezvous = self._rendezvous
        assert rendezvous is not None
        try:
            sock = rendezvous.accept(deadline, self.peer)
        except TimeoutError:
            raise TransportTimeout(f"no runtime connected to {rendezvous.path} within {timeout:g}s") from None
        except BaseException:
            self._close_rendezvous()
            raise
        self._close_rendezvous()  # connected: the name goes at once, the runtime never connects to it again
        decoder = FrameDecoder(self._max_frame)  # the connection's one decoder: keeps what followed `ready`
        try:
            ready = self._handshake(sock, decoder, deadline, timeout)
        except BaseException:
            sock.close()
            raise
        self._sock, self.ready = sock, ready
        self._callbacks = ThreadPoolExecutor(self._callback_workers, thread_name_prefix="fnctl-callback")
        self._reader = threading.Thread(
            target=self._read_loop, args=(sock, decoder), name="fnctl-transport", daemon=True
        )
        self._reader.start()
        return ready

    def _close_rendezvous(self) -> None:
        rendezvous, self._rendezvous = self._rendezvous, None
        if rendezvous is not None:
            rendezvous.close()

    def _handshake(self, sock: socket.socket, decoder: FrameDecoder, deadline: float, timeout: float) -> dict[str, Any]:
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            first = decoder.read_from(sock.recv)
            sock.settimeout(None)
        except TimeoutError:
            message = f"the runtime in {self.socket_dir} did not say ready within {timeout:g}s"
            raise TransportTimeout(message) from None
        return check_first_frame(first, self.socket_dir)

    def configure(self, secrets: Mapping[str, str], timeout: float = 5.0) -> None:
        request_id = next(self._ids)
        reply = self._request(request_id, configure_frame(request_id, secrets), MessageType.CONFIGURE, timeout)
        expect_reply(reply, MessageType.CONFIGURED)

    def invoke(
        self,
        event: Any,
        *,
        invocation_id: str,
        deadline: float,
        caller: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> InvocationResult:
        """Run the handler once. `deadline` is epoch seconds; `timeout` defaults to it plus a grace."""
        request_id = next(self._ids)
        frame = invoke_frame(request_id, event, invocation_id, deadline, caller)
        wait = reply_timeout(deadline) if timeout is None else timeout
        return parse_result(self._request(request_id, frame, MessageType.INVOKE, wait))

    def ping(self, timeout: float = 5.0) -> int:
        """The number of invocations in flight on the instance."""
        request_id = next(self._ids)
        return parse_pong(self._request(request_id, ping_frame(request_id), MessageType.PING, timeout))

    def drain(self, timeout: float = 30.0) -> None:
        """Finish in-flight invocations, refuse new ones; the runtime exits once this returns."""
        request_id = next(self._ids)
        reply = self._request(request_id, drain_frame(request_id), MessageType.DRAIN, timeout)
        expect_reply(reply, MessageType.DRAINED)

    def close(self) -> None:
        self._closing = True
        self._close_rendezvous()
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

    def _request(self, request_id: int, frame: bytes, kind: MessageType, timeout: float) -> dict[str, Any] | None:
        """Send one request frame (built with `request_id`) and wait for the runtime frame with that id."""
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
                raise TransportTimeout(f"no reply to {kind} within {timeout:g}s")
            waiter.wait(None)  # the reply won the race against the timeout: it is being delivered
        if waiter.error is not None:
            raise waiter.error
        return waiter.message

    def _send(self, frame: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise OSError("not connected")
        with self._send_lock:  # frames from different threads must not interleave
            sock.sendall(frame)

    def _read_loop(self, sock: socket.socket, decoder: FrameDecoder) -> None:
        reason = "the runtime closed the connection"
        try:
            while (message := decoder.read_from(sock.recv)) is not None:
                if message.get("type") == MessageType.CALL:
                    self._start_callback(message)
                elif (waiter := self._pending.pop(reply_id(message), None)) is not None:
                    waiter.deliver(message)
                # else: a reply to a request that already timed out
        except (OSError, ValueError, TransportError) as exc:
            reason = f"the connection to the runtime failed: {exc}"
        finally:
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
        call = CallRequest.from_message(message)
        try:
            if self.on_call is None:
                raise NotImplementedError("callbacks not supported")
            frame = reply_frame(call.id, self.on_call(call.invocation_id, call.method, call.params))
        except Exception as exc:  # any failure of the handler is the caller's error, never the reader's
            frame = reply_error_frame(call.id, exc)
        try:
            self._send(frame)
        except OSError:
            pass  # the connection is gone; the invocation fails with ConnectionLost anyway
