"""The runtime's process model and AWS Lambda's context API (docs/runtime.md), with the runtime as a local
process: synchronous handlers run on the main thread of worker processes forked after the import, async
handlers on the first process's event loop; `context` carries Lambda's names with fnctl's values."""

from __future__ import annotations

import functools
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from runtime_helpers import InBackground, StartRuntime, runtime_module, wait_until

from fnctl.invocation.protocol import ConnectionLost

# Blocks until event["release"] exists (when given), so that several invocations are in flight at once, then
# reports where it ran and whether the main thread's facilities work.
MAIN_THREAD = """
import decimal, os, signal, threading, time

decimal.getcontext().prec = 5  # per-thread state of a C extension, set at import as libraries do

def handler(event, context):
    give_up = time.monotonic() + 30
    while "release" in event and not os.path.exists(event["release"]):
        if time.monotonic() > give_up:
            raise TimeoutError("never released")
        time.sleep(0.005)
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    signal.setitimer(signal.ITIMER_REAL, 0.01)
    while not fired and time.monotonic() < give_up:
        time.sleep(0.001)
    signal.signal(signal.SIGALRM, previous)
    return {
        "main_thread": threading.get_ident() == threading.main_thread().ident,
        "alarm": fired == [signal.SIGALRM],
        "seventh": str(decimal.Decimal(1) / decimal.Decimal(7)),
        "pid": os.getpid(),
    }
"""


def test_sync_handlers_run_on_the_main_thread_of_worker_processes(start_runtime: StartRuntime, tmp_path: Path) -> None:
    rt = start_runtime({"main.py": MAIN_THREAD}, FNCTL_CONCURRENCY="3")
    release = tmp_path / "release"
    calls = [
        InBackground(functools.partial(rt.invoke, {"release": str(release)}, invocation_id=f"inv-{n}"))
        for n in range(3)
    ]
    wait_until(lambda: rt.transport.ping() == 3, what="three invocations in flight")
    release.touch()
    results = []
    for call in calls:
        call.join()
        assert call.error is None
        results.append(call.result.result)
    for result in results:
        # signal.signal works, the alarm reaches the handler, and the precision set at import is the handler's
        assert result["main_thread"] and result["alarm"] and result["seventh"] == "0.14286", result
    pids = {r["pid"] for r in results}
    assert len(pids) == 3 and rt.process.pid not in pids  # one worker process per concurrent invocation
    # Sequential invocations reuse the workers: no process per invocation.
    assert {rt.invoke({}).result["pid"] for _ in range(5)} <= pids


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
        return [int(child) for child in fh.read().split()]


def test_an_instance_never_invoked_is_one_process_and_the_first_invocation_forks_its_worker(
    start_runtime: StartRuntime,
) -> None:
    rt = start_runtime({"main.py": "import os\ndef handler(event):\n    return os.getpid()\n"})
    assert rt.transport.ping() == 0  # ready and idle
    assert _children(rt.process.pid) == []  # no worker yet: an idle instance costs one interpreter
    worker = rt.invoke({}).result
    assert worker != rt.process.pid and _children(rt.process.pid) == [worker]
    assert {rt.invoke({}).result for _ in range(3)} == {worker}  # one at a time: the same worker serves them all


def test_async_handlers_share_the_event_loop_of_one_process(start_runtime: StartRuntime, tmp_path: Path) -> None:
    source = """
import asyncio, os, threading
async def handler(event, context):
    while "release" in event and not os.path.exists(event["release"]):
        await asyncio.sleep(0.005)
    return {"pid": os.getpid(), "main_thread": threading.get_ident() == threading.main_thread().ident}
"""
    rt = start_runtime({"main.py": source}, FNCTL_CONCURRENCY="4")
    release = tmp_path / "release"
    calls = [InBackground(functools.partial(rt.invoke, {"release": str(release)})) for _ in range(4)]
    wait_until(lambda: rt.transport.ping() == 4, what="four invocations in flight")
    release.touch()
    for call in calls:
        call.join()
        assert call.result.result == {"pid": rt.process.pid, "main_thread": True}


ACALLS = """
import asyncio

async def handler(event, context):
    print("before")
    first = await context.acall("echo", {"n": 1})
    print("after", first)
    both = await asyncio.gather(context.acall("echo", {"n": 2}), context.acall("echo", {"n": 3}))
    try:
        await asyncio.wait_for(context.acall("slow", {}), 0.05)
        late = "answered"
    except asyncio.TimeoutError:
        late = "cancelled"
    return [first, both, late, await context.acall("echo", {"n": 4})]
"""


def test_acall_resumes_the_handler_in_its_context_and_cancels_cleanly(start_runtime: StartRuntime) -> None:
    """A reply resumes the awaiting handler at once, from the connection's read (docs/runtime.md): its output
    is still captured, concurrent calls of one invocation each get theirs, and a call cancelled by a timeout
    leaves the next one working."""

    def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        if method == "slow":
            time.sleep(0.3)
        return params.get("n")

    rt = start_runtime({"main.py": ACALLS}, on_call=on_call)
    reply = rt.invoke({})
    assert reply.result == [1, [2, 3], "cancelled", 4]
    assert reply.logs == "before\nafter 1\n"


PING_FIRST = """
async def handler(event, context):
    return [await context.acall("ping-first", {}), await context.acall("echo", {"n": 2})]
"""
TIMER_DURING_CALL = """
import asyncio

async def handler(event, context):
    fired = []
    asyncio.get_running_loop().call_later(0.05, fired.append, "timer")
    await context.acall("slow", {})
    return fired
"""
LARGE_CALL = """
async def handler(event, context):
    return [await context.acall("size", {"blob": "x" * 4_000_000}), await context.acall("echo", {"n": 2})]
"""


def test_the_frames_before_an_acalls_reply_are_handled_while_it_waits(start_runtime: StartRuntime) -> None:
    """An async handler's call, alone on the event loop, waits for its reply on the socket itself: a frame the
    host sends before that reply (here a ping, sent while the host answers the call) is handled as the loop
    would handle it, and the reply that follows still ends the call."""

    def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        if method == "ping-first":
            return rt.transport.ping()  # the invocation in flight: 1
        return params.get("n")

    rt = start_runtime({"main.py": PING_FIRST}, on_call=on_call)
    assert rt.invoke({}).result == [1, 2]
    assert rt.invoke({}).result == [1, 2]  # and the connection is in step for the next invocation


def test_a_timer_of_the_loop_runs_while_an_acall_waits(start_runtime: StartRuntime) -> None:
    """An acall alone on the loop waits for its reply on the socket itself only until the loop's next timer is
    due: a handler's own timer fires while the host takes its time to answer, not after the reply."""

    def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        time.sleep(0.3)
        return None

    rt = start_runtime({"main.py": TIMER_DURING_CALL}, on_call=on_call)
    assert rt.invoke({}).result == ["timer"]


def test_an_acall_larger_than_the_sockets_buffer_arrives_whole(start_runtime: StartRuntime) -> None:
    """A call frame that does not all go in one write (4 MB, past a Unix socket's buffer) is finished by the
    event loop: the host reads it whole, and the next call's frame follows it on the connection."""

    def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        return len(params["blob"]) if method == "size" else params.get("n")

    rt = start_runtime({"main.py": LARGE_CALL}, on_call=on_call)
    assert rt.invoke({}).result == [4_000_000, 2]


def test_secrets_reach_workers_started_before_and_after_configure(start_runtime: StartRuntime, tmp_path: Path) -> None:
    source = """
import os, time
def handler(event):
    while "release" in event and not os.path.exists(event["release"]):
        time.sleep(0.005)
    return [os.environ.get("API_TOKEN"), os.getpid()]
"""
    rt = start_runtime({"main.py": source}, FNCTL_CONCURRENCY="2")
    first_pid = rt.invoke({}).result[1]  # the worker the first invocation forked, before any secret
    rt.transport.configure({"API_TOKEN": "s3cr3t"})
    release = tmp_path / "release"
    calls = [InBackground(functools.partial(rt.invoke, {"release": str(release)})) for _ in range(2)]
    wait_until(lambda: rt.transport.ping() == 2, what="both workers busy")
    release.touch()
    for call in calls:
        call.join()
    answers = sorted(call.result.result for call in calls)
    assert [token for token, _ in answers] == ["s3cr3t", "s3cr3t"]
    assert first_pid in {pid for _, pid in answers} and len({pid for _, pid in answers}) == 2


def test_a_worker_that_exits_takes_the_instance_with_its_exit_code(start_runtime: StartRuntime) -> None:
    rt = start_runtime({"main.py": "import os\ndef handler(event):\n    os._exit(7)\n"})
    with pytest.raises(ConnectionLost):
        rt.invoke({})
    assert rt.exit_code() == 7
    assert "worker process" in rt.output() and "exited with code 7" in rt.output()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_call_without_a_reply_fails_at_the_deadline(start_runtime: StartRuntime, asynchronous: bool) -> None:
    source = (
        "from fnctl_runtime import CallbackError\n"
        + ("async def handler(event, context):\n" if asynchronous else "def handler(event, context):\n")
        + "    try:\n"
        + ("        await context.acall('slow')\n" if asynchronous else "        context.call('slow')\n")
        + "    except CallbackError as exc:\n"
        + "        return [exc.type, exc.message, context.get_remaining_time_in_millis()]\n"
    )

    def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        time.sleep(1.5)  # past the invocation's deadline
        return "late"

    rt = start_runtime({"main.py": source}, on_call=on_call)
    reply = rt.transport.invoke({}, invocation_id="inv-1", deadline=time.time() + 0.3, timeout=10)
    assert reply.result == ["Timeout", "no reply to 'slow' before the deadline", 0]
    assert rt.transport.ping() == 0


LAMBDA_CONTEXT = """
def lambda_handler(event, context):
    return {
        "aws_request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "invoked_function_arn": context.invoked_function_arn,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "identity": [context.identity.cognito_identity_id, context.identity.cognito_identity_pool_id],
        "client_context": context.client_context,
        "remaining": context.get_remaining_time_in_millis(),
    }

def my_handler(event):
    return {"one_argument": event}
"""


def test_lambda_context_api_with_fnctl_values(start_runtime: StartRuntime) -> None:
    rt = start_runtime({"main.py": LAMBDA_CONTEXT}, handler="main.lambda_handler")
    reply = rt.transport.invoke({}, invocation_id="inv-7", deadline=time.time() + 20)
    result = reply.result
    remaining = result.pop("remaining")
    assert isinstance(remaining, int) and 10_000 < remaining <= 20_000
    assert isinstance(result["memory_limit_in_mb"], int) and result.pop("memory_limit_in_mb") > 0
    assert result.pop("log_stream_name") == f"r1/{os.uname().nodename}"
    assert result == {
        "aws_request_id": "inv-7",
        "function_name": "hello",
        "function_version": "r1",
        "invoked_function_arn": "arn:fnctl:lambda:local:000000000000:function:hello:r1",
        "log_group_name": "/fnctl/hello",
        "identity": [None, None],
        "client_context": None,
    }
    one = start_runtime({"main.py": LAMBDA_CONTEXT}, handler="main.my_handler")
    assert one.invoke({"n": 1}).result == {"one_argument": {"n": 1}}


def test_a_sync_supervisor_keeps_one_deadline_sweep_however_many_invocations_arm_it() -> None:
    """Each invocation with a deadline arms the sweep: one timer at a time on the supervisor's poll loop, not one
    per invocation (each re-arming itself every 50 ms, the loop's work per wake-up grew with every request)."""
    rt = runtime_module()
    loop = rt._PollLoop()
    try:
        config = rt.Config(
            handler="main.handler",
            code_dir=".",
            deps_dir=".",
            socket_dir=".",
            function="f",
            revision="1",
            concurrency=8,
            payload_limit=1024,
            output_limit=1024,
            log_limit=1024,
        )
        server = rt.Server(config, rt.Handler(lambda event: None), loop)
        for _ in range(3):
            server.arm_sweep()
        assert len(loop.timers) == 1
        server.sweep()  # nothing waits for a deadline: not re-armed
        server.arm_sweep()
        assert len(loop.timers) == 2  # the first, still queued (the loop never ran), and the new one
    finally:
        os.close(signal.set_wakeup_fd(-1))
        os.close(loop.wake_in)
