"""Worker connections (docs/protocol.md): the gateway's transport keeps its listener up and offers them; each
worker process of a synchronous handler connects there itself, `attach`es, and its calls, their replies and
its results travel on that connection instead of through the runtime's first process. Every connection passes
the transport's peer check; a worker the check refuses falls back to the first connection. The runtime runs as
a local process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_helpers import parent_of, unhosted_runtime

from fnctl.invocation.aiotransport import Answered, AsyncTransport
from fnctl.invocation.protocol import CallFailed, encode_frame
from fnctl.invocation.rendezvous import LISTENER_PREFIX

HANDLERS = """
import os
from fnctl_runtime import CallbackError

def handler(event, context):
    out = []
    for n in range(event.get("calls", 3)):
        try:
            params = {"n": n, "text": event["text"]} if "text" in event else {"n": n}
            out.append(context.call("echo", params))
        except CallbackError as exc:
            out.append([exc.type, exc.message])
    return {"pid": os.getpid(), "calls": out}
"""


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with unhosted_runtime(tmp_path, HANDLERS, concurrency=2) as started:
        yield started


def _transport(
    directory: str, peer: Callable[[int], bool], on_call: Callable[..., Awaitable[Any] | Answered]
) -> AsyncTransport:
    return AsyncTransport(directory, peer=peer, on_call=on_call)


def _echo(invocation_id: str, method: str, params: dict[str, Any]) -> Answered:
    return Answered({"n": params["n"], "for": invocation_id})


def test_each_worker_calls_and_answers_on_its_own_connection(runtime: tuple[str, subprocess.Popen[bytes]]) -> None:
    directory, process = runtime
    checked: list[int] = []

    def peer(pid: int) -> bool:
        checked.append(pid)
        return pid == process.pid or parent_of(pid) == process.pid

    async def run() -> tuple[list[Any], int, list[str]]:
        transport = _transport(directory, peer, _echo)
        await transport.connect(timeout=15)
        try:
            listening = [n for n in os.listdir(directory) if n.startswith(LISTENER_PREFIX)]
            results = await asyncio.gather(
                *(transport.invoke({}, invocation_id=f"inv-{n}", deadline=time.time() + 30) for n in range(2))
            )
            # Both slots busy at once forks the second worker; a third round reuses the two connections.
            results += [await transport.invoke({}, invocation_id="inv-2", deadline=time.time() + 30)]
            return [r.result for r in results], transport.worker_connections, listening
        finally:
            await transport.close()

    results, attached, listening = asyncio.run(run())
    for n, result in enumerate(results):
        assert result["calls"] == [{"n": k, "for": f"inv-{n}"} for k in range(3)]
        assert result["pid"] != process.pid  # a worker process ran it
    workers = {result["pid"] for result in results}
    assert 1 <= len(workers) <= 2 and attached == len(workers)  # one connection per worker, kept
    assert set(checked[1:]) == workers  # each worker connection passed the peer check, as the runtime's did
    assert checked[0] == process.pid
    assert len(listening) == 1  # the listener stays up while the transport is connected ...
    assert not [n for n in os.listdir(directory) if n.startswith(LISTENER_PREFIX)]  # ... and goes with it


def test_a_worker_refused_by_the_peer_check_calls_through_the_first_connection(
    runtime: tuple[str, subprocess.Popen[bytes]],
) -> None:
    directory, process = runtime

    async def run() -> tuple[Any, int]:
        transport = _transport(directory, lambda pid: pid == process.pid, _echo)
        await transport.connect(timeout=15)
        try:
            result = await transport.invoke({}, invocation_id="inv-1", deadline=time.time() + 30)
            return result.result, transport.worker_connections
        finally:
            await transport.close()

    result, attached = asyncio.run(run())
    assert attached == 0
    assert result["calls"] == [{"n": k, "for": "inv-1"} for k in range(3)]


def test_a_foreign_connection_to_the_kept_listener_is_closed_unread(
    runtime: tuple[str, subprocess.Popen[bytes]],
) -> None:
    directory, process = runtime

    async def run() -> tuple[bytes, Any, int]:
        transport = _transport(directory, lambda pid: pid == process.pid or parent_of(pid) == process.pid, _echo)
        await transport.connect(timeout=15)
        try:
            [name] = [n for n in os.listdir(directory) if n.startswith(LISTENER_PREFIX)]
            foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # this test process: not the runtime's
            foreign.setblocking(False)
            try:
                foreign.connect(os.path.join(directory, name))
                foreign.sendall(b'\0\0\0\x0f{"type":"call"}')
                loop = asyncio.get_running_loop()
                try:
                    said = await asyncio.wait_for(loop.sock_recv(foreign, 4096), 10)
                except ConnectionResetError:  # closed with what it sent unread
                    said = b""
            finally:
                foreign.close()
            result = await transport.invoke({}, invocation_id="inv-1", deadline=time.time() + 30)
            return said, result.result, transport.worker_connections
        finally:
            await transport.close()

    said, result, attached = asyncio.run(run())
    assert said == b""  # closed without a byte
    assert result["calls"] == [{"n": k, "for": "inv-1"} for k in range(3)] and attached == 1


def test_a_call_unanswered_on_a_worker_connection_fails_at_the_deadline(
    runtime: tuple[str, subprocess.Popen[bytes]],
) -> None:
    directory, process = runtime

    async def never(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        await asyncio.Event().wait()

    def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Awaitable[Any] | Answered:
        if params["n"] == 0:
            return never(invocation_id, method, params)
        raise CallFailed("Refused", "after the deadline")

    async def run() -> tuple[Any, int]:
        transport = _transport(directory, lambda pid: pid == process.pid or parent_of(pid) == process.pid, on_call)
        await transport.connect(timeout=15)
        try:
            result = await transport.invoke({"calls": 2}, invocation_id="inv-1", deadline=time.time() + 0.5, timeout=15)
            return result.result, transport.worker_connections
        finally:
            await transport.close()

    result, attached = asyncio.run(run())
    assert attached == 1
    timed_out, refused = result["calls"]
    assert timed_out[0] == "Timeout" and "'echo'" in timed_out[1]
    assert refused[0] == "Timeout"  # the deadline passed: later calls fail at once too


def test_frames_larger_than_one_read_cross_a_worker_connection_whole(
    runtime: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """Calls, replies and results of several hundred KiB (many reads each, on both sides of the worker's
    connection) arrive whole."""
    directory, process = runtime
    text = "a" + "x" * 400_000 + "z"

    def triple(invocation_id: str, method: str, params: dict[str, Any]) -> Answered:
        return Answered({"n": params["n"], "text": params["text"] * 3})

    async def run() -> tuple[Any, int]:
        transport = _transport(directory, lambda pid: pid == process.pid or parent_of(pid) == process.pid, triple)
        await transport.connect(timeout=15)
        try:
            result = await transport.invoke(
                {"calls": 2, "text": text}, invocation_id="inv-1", deadline=time.time() + 30
            )
            return result.result, transport.worker_connections
        finally:
            await transport.close()

    result, attached = asyncio.run(run())
    assert attached == 1
    assert result["calls"] == [{"n": n, "text": text * 3} for n in range(2)]


def test_no_more_worker_connections_are_kept_than_the_runtime_has_slots(
    runtime: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """Code in the sandbox passes the peer check, so the host bounds what it may open: `concurrency` (2 here)
    connections at a time; one more is closed unread."""
    directory, _process = runtime

    async def run() -> list[bytes]:
        transport = _transport(directory, lambda pid: True, _echo)  # admits this test process too
        await transport.connect(timeout=15)
        extra = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
        try:
            [name] = [n for n in os.listdir(directory) if n.startswith(LISTENER_PREFIX)]
            loop = asyncio.get_running_loop()
            said: list[bytes] = []
            for sock in extra:
                sock.setblocking(False)
                await loop.sock_connect(sock, os.path.join(directory, name))
                await loop.sock_sendall(sock, encode_frame({"type": "attach", "protocol": 1, "worker": 9, "pid": 1}))
                try:
                    said.append(await asyncio.wait_for(loop.sock_recv(sock, 4096), 10))
                except ConnectionResetError:  # closed with what it sent unread
                    said.append(b"")
            return said
        finally:
            for sock in extra:
                sock.close()
            await transport.close()

    first, second, third = asyncio.run(run())
    assert first.endswith(b'{"type":"attached"}') and second.endswith(b'{"type":"attached"}')
    assert third == b""
