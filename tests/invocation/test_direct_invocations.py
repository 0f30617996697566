"""Invocations straight to a worker (docs/protocol.md, "Worker connections", `direct`): the gateway's transport
takes the workers that attach saying `direct` and sends them its invocations itself, so the runtime's first
process (the supervisor) is not on their way; it keeps the last worker `concurrency` allows for itself. The
protocol's guarantees hold on that path: ping counts, drain, deadlines, a worker that dies, secrets, logs.
The runtime runs as a local process, with `concurrency` 3: workers 1 and 2 may be taken, 3 stays."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_helpers import parent_of, unhosted_runtime

from fnctl.invocation.aiotransport import Answered, AsyncTransport
from fnctl.invocation.protocol import ConnectionLost
from fnctl.invocation.transport import UnixSocketTransport

HANDLER = """
import os, time
from fnctl_runtime import CallbackError

def handler(event, context):
    print("ran", event.get("tag", ""))
    if "exit" in event:
        os._exit(event["exit"])
    time.sleep(event.get("sleep", 0))
    out = {"pid": os.getpid(), "env": os.environ.get(event.get("env", ""), "")}
    if event.get("call"):
        try:
            out["called"] = context.call("echo", {"n": 1})
        except CallbackError as exc:
            out["called"] = [exc.type, exc.message]
    return out
"""

Runtime = tuple[str, "subprocess.Popen[bytes]"]


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    with unhosted_runtime(tmp_path, HANDLER, concurrency=3) as started:
        yield started


def _echo(invocation_id: str, method: str, params: dict[str, Any]) -> Answered:
    return Answered({"n": params["n"], "for": invocation_id})


async def _connected(
    runtime: Runtime, on_call: Callable[..., Awaitable[Any] | Answered] = _echo, secrets: dict[str, str] | None = None
) -> AsyncTransport:
    """A transport whose two takeable workers are forked and taken (two rounds of two at once)."""
    directory, process = runtime
    transport = AsyncTransport(
        directory, peer=lambda pid: pid == process.pid or parent_of(pid) == process.pid, on_call=on_call
    )
    await transport.connect(timeout=15, secrets=secrets)
    for _ in range(2):
        await asyncio.gather(*(_invoke(transport, {}) for _ in range(2)))
    assert transport.worker_connections == 2
    return transport


def _invoke(transport: AsyncTransport, event: Any, deadline: float = 30) -> Any:
    return transport.invoke(event, invocation_id=f"inv-{time.monotonic_ns()}", deadline=time.time() + deadline)


def test_invocations_reach_a_taken_worker_without_the_supervisor(runtime: Runtime) -> None:
    """With the supervisor stopped (SIGSTOP), invocations, their calls and their logs still go round: they
    travel on the workers' own connections only. Before, every invocation passed through the supervisor."""
    _directory, process = runtime

    async def run() -> list[Any]:
        transport = await _connected(runtime)
        try:
            os.kill(process.pid, signal.SIGSTOP)
            try:
                return list(
                    await asyncio.wait_for(
                        asyncio.gather(*(_invoke(transport, {"call": True, "tag": n}) for n in range(2))), 10
                    )
                )
            finally:
                os.kill(process.pid, signal.SIGCONT)
        finally:
            await transport.close()

    first, second = asyncio.run(run())
    for n, result in enumerate((first, second)):
        assert result.ok and result.result["pid"] != process.pid
        assert result.result["called"]["n"] == 1
        assert result.logs == f"ran {n}\n"
    assert first.result["pid"] != second.result["pid"]  # one invocation per worker at a time


def test_ping_counts_an_invocation_a_taken_worker_runs(runtime: Runtime) -> None:
    async def run() -> tuple[int, int, Any]:
        transport = await _connected(runtime)
        try:
            slow = asyncio.ensure_future(_invoke(transport, {"sleep": 1.0}))
            await asyncio.sleep(0.4)
            during = await transport.ping()
            result = await slow
            return during, await transport.ping(), result
        finally:
            await transport.close()

    during, after, result = asyncio.run(run())
    assert result.ok and (during, after) == (1, 0)


def test_drain_waits_for_a_taken_worker_and_it_refuses_new_invocations(runtime: Runtime) -> None:
    _directory, process = runtime

    async def run() -> tuple[Any, Any, bool]:
        transport = await _connected(runtime)
        try:
            slow = asyncio.ensure_future(_invoke(transport, {"sleep": 1.0}))
            await asyncio.sleep(0.3)
            drain = asyncio.ensure_future(transport.drain())
            await asyncio.sleep(0.3)
            refused = await _invoke(transport, {})  # to the other, idle, taken worker
            done_early = drain.done()
            result = await slow
            await drain
            return result, refused, done_early
        finally:
            await transport.close()

    result, refused, done_early = asyncio.run(run())
    assert result.ok and not done_early
    assert not refused.ok and refused.error.kind == "draining"
    assert process.wait(timeout=10) == 0


def test_a_call_of_a_taken_worker_fails_at_its_deadline(runtime: Runtime) -> None:
    """No supervisor tells a taken worker that its invocation's deadline passed: it keeps it itself."""

    async def never(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        await asyncio.Event().wait()

    async def run() -> Any:
        transport = await _connected(runtime, on_call=never)
        try:
            return await transport.invoke({"call": True}, invocation_id="late", deadline=time.time() + 0.5, timeout=15)
        finally:
            await transport.close()

    result = asyncio.run(run())
    assert result.ok and result.result["called"][0] == "Timeout"


def test_a_taken_worker_that_dies_fails_its_invocation_and_ends_the_instance(runtime: Runtime) -> None:
    _directory, process = runtime

    async def run() -> BaseException | None:
        transport = await _connected(runtime)
        try:
            await _invoke(transport, {"exit": 7})
        except ConnectionLost as exc:
            return exc
        finally:
            await transport.close()
        return None

    assert isinstance(asyncio.run(run()), ConnectionLost)
    assert process.wait(timeout=10) == 7


def test_secrets_set_later_reach_a_taken_worker_before_its_next_invocation(runtime: Runtime) -> None:
    async def run() -> Any:
        transport = await _connected(runtime, secrets={"TOKEN": "one"})
        try:
            before = await _invoke(transport, {"env": "TOKEN"})
            await transport.configure({"TOKEN": "two"})
            after = await asyncio.gather(*(_invoke(transport, {"env": "TOKEN"}) for _ in range(2)))
            return before, after
        finally:
            await transport.close()

    before, after = asyncio.run(run())
    assert before.result["env"] == "one"
    assert [r.result["env"] for r in after] == ["two", "two"]


def test_another_host_finds_a_worker_while_the_gateway_holds_its_taken_ones(runtime: Runtime) -> None:
    """The last worker `concurrency` allows stays the supervisor's: with both taken workers busy, a second
    host (the blocking client of `fnctl invoke --direct`) is still served, by that worker."""
    directory, process = runtime

    async def run() -> tuple[list[Any], Any, int]:
        transport = await _connected(runtime)
        other = UnixSocketTransport(directory, peer=lambda pid: pid == process.pid or parent_of(pid) == process.pid)
        try:
            await asyncio.to_thread(other.connect, 15)
            busy = [asyncio.ensure_future(_invoke(transport, {"sleep": 1.0})) for _ in range(2)]
            await asyncio.sleep(0.3)
            theirs = await asyncio.to_thread(
                lambda: other.invoke({}, invocation_id="other", deadline=time.time() + 10, timeout=10)
            )
            running = await transport.ping()
            return list(await asyncio.gather(*busy)), theirs, running
        finally:
            other.close()
            await transport.close()

    busy, theirs, running = asyncio.run(run())
    assert all(result.ok for result in busy) and theirs.ok
    assert theirs.result["pid"] not in {result.result["pid"] for result in busy}
    assert running == 2  # the two taken workers' invocations, still running
