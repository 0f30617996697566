"""The in-container runtime run as a local process (no Docker), driven through UnixSocketTransport.

As in production, the host listens in the instance's directory and the runtime connects out; the peer check
accepts exactly the runtime's process.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from runtime_helpers import InBackground, StartRuntime, wait_until

from fnctl.invocation.protocol import (
    ConnectionLost,
    EncodedJson,
    ErrorKind,
    FrameDecoder,
    InvocationResult,
    RuntimeStartFailed,
    TransportError,
    encode_frame,
)
from fnctl.invocation.rendezvous import cgroup_names_container
from fnctl.invocation.transport import Transport, TransportTimeout, UnixSocketTransport

# Blocks until the file named by event["release"] exists: lets a test hold an invocation in flight.
# Without "release" it answers at once, so a probe invocation never blocks.
SLOW_SYNC = """
import os, time
def handler(event, context):
    if "release" not in event:
        return "quick"
    if "started" in event:
        open(os.path.join(event["started"], context.invocation_id), "w").close()
    give_up = time.monotonic() + 30
    while not os.path.exists(event["release"]):
        if time.monotonic() > give_up:
            raise TimeoutError("never released")
        time.sleep(0.005)
    return "released"
"""
SLOW_ASYNC = """
import asyncio, os, time
async def handler(event, context):
    if "release" not in event:
        return "quick"
    give_up = time.monotonic() + 30
    while not os.path.exists(event["release"]):
        if time.monotonic() > give_up:
            raise TimeoutError("never released")
        await asyncio.sleep(0.005)
    return "released"
"""


def read_frame(stream: io.BytesIO, max_size: int | None = None) -> dict[str, Any] | None:
    """One message read from `stream` the way the blocking client reads its socket."""
    decoder = FrameDecoder() if max_size is None else FrameDecoder(max_size)
    return decoder.read_from(stream.read)


def test_frames_round_trip_and_reject_truncation() -> None:
    frame = encode_frame({"type": "ping", "id": 7, "text": "é"})
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert read_frame(io.BytesIO(frame)) == {"type": "ping", "id": 7, "text": "é"}
    assert read_frame(io.BytesIO(b"")) is None
    with pytest.raises(ConnectionLost):
        read_frame(io.BytesIO(frame[:-1]))
    with pytest.raises(TransportError, match="limit"):
        read_frame(io.BytesIO(frame), max_size=3)


def test_ready_message_describes_the_instance(start_runtime: StartRuntime) -> None:
    rt = start_runtime({"main.py": "def handler(event, context):\n    return 1\n"}, FNCTL_CONCURRENCY="3")
    transport: Transport = rt.transport  # mypy checks UnixSocketTransport against the one interface
    assert transport.ping() == 0
    assert rt.transport.ready == {
        "type": "ready",
        "protocol": 1,
        "function": "hello",
        "revision": "r1",
        "pid": rt.process.pid,
        "concurrency": 3,
    }
    # The runtime created nothing, and the host's listener went as soon as the runtime was connected.
    assert os.listdir(rt.socket_dir) == []


def test_two_argument_handler_sees_its_context(start_runtime: StartRuntime) -> None:
    rt = start_runtime(
        {
            "main.py": """
        def handler(event, context):
            return {"event": event, "function": context.function_name, "revision": context.revision,
                    "invocation_id": context.invocation_id, "remaining": context.remaining_time(),
                    "deadline": context.deadline, "caller": context.caller}
    """
        }
    )
    caller = {"subject": "alice", "roles": ["admin"], "tenant": "acme"}
    deadline = time.time() + 20
    reply = rt.transport.invoke({"n": 1}, invocation_id="inv-42", deadline=deadline, caller=caller)
    assert reply.ok and reply.error is None
    result = reply.result
    assert result["event"] == {"n": 1}
    assert (result["function"], result["revision"], result["invocation_id"]) == ("hello", "r1", "inv-42")
    assert result["caller"] == caller and result["deadline"] == deadline
    assert 0 < result["remaining"] <= 20
    assert rt.invoke({}).result["caller"] is None


def test_one_argument_and_async_handlers(start_runtime: StartRuntime) -> None:
    rt = start_runtime(
        {
            "main.py": """
        import asyncio
        def one(event):
            return event["n"] + 1
        async def two(event, context):
            await asyncio.sleep(0)
            return {"n": event["n"] * 2, "id": context.invocation_id}
    """
        },
        handler="main.one",
    )
    assert rt.invoke({"n": 1}).result == 2
    rt2 = start_runtime({}, handler="main.two")
    assert rt2.invoke({"n": 4}, invocation_id="a").result == {"n": 8, "id": "a"}


def test_path_form_handler_imports_its_siblings(start_runtime: StartRuntime) -> None:
    rt = start_runtime(
        {
            "handlers/entry.py": "from helpers import greet\ndef main(event):\n    return greet(event['name'])\n",
            "handlers/helpers.py": "def greet(name):\n    return f'hi {name}'\n",
        },
        handler="handlers/entry.py:main",
    )
    assert rt.invoke({"name": "probe"}).result == "hi probe"


@pytest.mark.parametrize("prefix", ["", "async "])
def test_raised_exception_is_a_handler_error_with_user_frames(start_runtime: StartRuntime, prefix: str) -> None:
    rt = start_runtime(
        {
            "main.py": f"""
        def check(event):
            raise ValueError(f"bad input: {{event['x']}}")

        {prefix}def handler(event, context):
            print("before failing")
            return check(event)
    """
        }
    )
    reply = rt.invoke({"x": 1})
    assert not reply.ok and reply.error is not None
    assert (reply.error.kind, reply.error.type, reply.error.message) == (
        ErrorKind.HANDLER_ERROR,
        "ValueError",
        "bad input: 1",
    )
    assert "main.py" in reply.error.traceback and "in check" in reply.error.traceback
    assert "raise ValueError" in reply.error.traceback
    assert "fnctl_runtime.py" not in reply.error.traceback
    assert reply.logs == "before failing\n"


@pytest.mark.parametrize("prefix,pause", [("", "time.sleep(0.002)"), ("async ", "await asyncio.sleep(0.002)")])
def test_logs_are_captured_per_invocation_under_concurrency(
    start_runtime: StartRuntime, prefix: str, pause: str
) -> None:
    rt = start_runtime(
        {
            "main.py": f"""
        import asyncio, sys, time
        print("<loading>")
        {prefix}def handler(event, context):
            for _ in range(5):
                print(f"<{{event}}>")
                sys.stderr.write(f"<{{event}}>\\n")
                context.logger.info("<%s>", event)
                {pause}
            return event
    """
        }
    )
    failures: list[str] = []

    def caller(worker: int) -> None:
        for n in range(4):
            marker = f"m{worker}-{n}"
            reply = rt.invoke(marker)
            seen = re.findall(r"<([^>]+)>", reply.logs)
            if reply.result != marker or seen != [marker] * 15 or reply.logs_truncated:
                failures.append(f"{marker}: {reply.result!r} {seen}")

    threads = [InBackground(functools.partial(caller, w)) for w in range(8)]
    for thread in threads:
        thread.join()
        assert thread.error is None
    assert failures == []
    assert "<loading>" in rt.output()  # output outside any invocation goes to the process's stderr


def test_log_capture_is_capped(start_runtime: StartRuntime) -> None:
    rt = start_runtime(
        {"main.py": "def handler(event):\n    print('é' * event)\n    return event\n"}, FNCTL_LOG_LIMIT="101"
    )
    reply = rt.invoke(200)
    assert reply.ok and reply.logs_truncated
    assert reply.logs == "é" * 50  # 101 bytes cut in the middle of a character keeps the whole ones
    small = rt.invoke(3)
    assert small.logs == "ééé\n" and not small.logs_truncated


def test_output_over_the_limit_is_refused(start_runtime: StartRuntime) -> None:
    rt = start_runtime(
        {"main.py": "def handler(event):\n    return event['c'] * event['n']\n"}, FNCTL_OUTPUT_LIMIT="1000"
    )
    assert rt.invoke({"c": "x", "n": 500}).result == "x" * 500
    for event in ({"c": "x", "n": 2000}, {"c": "é", "n": 600}):  # the second is short in characters only
        reply = rt.invoke(event)
        assert reply.error is not None and reply.error.kind == ErrorKind.OUTPUT_TOO_LARGE
        assert "1000" in reply.error.message


def test_results_that_are_not_json_are_refused(start_runtime: StartRuntime) -> None:
    rt = start_runtime(
        {
            "main.py": """
        def handler(event):
            return object() if event == "object" else float("nan")
    """
        }
    )
    for event, error_type in (("object", "TypeError"), ("nan", "ValueError")):
        reply = rt.invoke(event)
        assert reply.error is not None
        assert (reply.error.kind, reply.error.type) == (ErrorKind.NOT_SERIALISABLE, error_type)


def test_payload_over_the_limit_is_refused(start_runtime: StartRuntime) -> None:
    rt = start_runtime({"main.py": "def handler(event):\n    return len(event)\n"}, FNCTL_PAYLOAD_LIMIT="1000")
    assert rt.invoke("x" * 10).result == 10
    reply = rt.invoke("x" * 2000)
    assert reply.error is not None and reply.error.kind == ErrorKind.PAYLOAD_TOO_LARGE
    with pytest.raises(ConnectionLost):  # beyond limit + 64 KiB the frame is not even read
        rt.invoke("x" * 70_000)


def test_an_invoke_whose_event_is_not_json_fails_alone_and_the_instance_serves_on(start_runtime: StartRuntime) -> None:
    # The supervisor of a synchronous handler reads only an invoke's header; the worker decodes the event.
    rt = start_runtime({"main.py": "def handler(event):\n    return event\n"})
    reply = rt.transport.invoke(EncodedJson('{"a":'), invocation_id="inv-bad", deadline=time.time() + 30)
    assert reply.error is not None and reply.error.kind == ErrorKind.HANDLER_ERROR
    assert reply.error.message == "the invoke frame is not JSON"
    assert rt.invoke({"a": 1}).result == {"a": 1}


def test_syntax_error_at_import_is_reported_over_the_connection_then_exits_3(start_runtime: StartRuntime) -> None:
    rt = start_runtime({"main.py": "x = 1\ndef handler(event context):\n    return x\n"}, connect=False)
    with pytest.raises(RuntimeStartFailed) as failed:
        rt.transport.connect(timeout=15)
    report = failed.value.error
    assert report["type"] == "SyntaxError"
    assert "main.py" in report["traceback"] and "line 2" in report["traceback"]
    assert "def handler(event context)" in report["traceback"]
    assert "fnctl_runtime.py" not in report["traceback"] and "importlib" not in report["traceback"]
    assert "line 2" in (failed.value.detail or "")
    assert rt.exit_code() == 3  # once the host has hung up
    assert os.listdir(rt.socket_dir) == []  # no error file, no socket: the runtime writes nothing there
    assert "def handler(event context)" in rt.output()


@pytest.mark.parametrize(
    "source,handler,error_type",
    [
        ("import json\nraise RuntimeError('boom at import')\n", "main.handler", "RuntimeError"),
        ("def handler(event):\n    return 1\n", "main.nope", "AttributeError"),
        ("def handler(event):\n    return 1\n", "missing.handler", "ModuleNotFoundError"),
    ],
)
def test_failed_imports_exit_3(start_runtime: StartRuntime, source: str, handler: str, error_type: str) -> None:
    rt = start_runtime({"main.py": source}, handler=handler, connect=False)
    with pytest.raises(RuntimeStartFailed) as failed:
        rt.transport.connect(timeout=15)
    report = failed.value.error
    assert report["type"] == error_type and "fnctl_runtime.py" not in report["traceback"]
    if error_type == "RuntimeError":
        assert 'main.py", line 2' in report["traceback"] and report["message"] == "boom at import"
    assert rt.exit_code() == 3


def test_configured_secrets_reach_the_environment_only(start_runtime: StartRuntime) -> None:
    rt = start_runtime({"main.py": "import os\ndef handler(event):\n    return os.environ.get('API_TOKEN')\n"})
    assert rt.invoke({}).result is None
    rt.transport.configure({"API_TOKEN": "s3cr3t-value"})
    assert rt.invoke({}).result == "s3cr3t-value"
    rt.transport.drain()
    assert rt.exit_code() == 0
    assert "s3cr3t-value" not in rt.output()


CALLBACK_SYNC = """
from fnctl_runtime import CallbackError
def handler(event, context):
    reply = context.call("echo", {"n": event})
    try:
        context.call("fail", {})
    except CallbackError as exc:
        return {"reply": reply, "failed": [exc.type, exc.message]}
"""
CALLBACK_ASYNC = """
from fnctl_runtime import CallbackError
async def handler(event, context):
    reply = await context.acall("echo", {"n": event})
    try:
        await context.acall("fail", {})
    except CallbackError as exc:
        return {"reply": reply, "failed": [exc.type, exc.message]}
"""


@pytest.mark.parametrize("source", [CALLBACK_SYNC, CALLBACK_ASYNC], ids=["sync", "async"])
def test_callbacks_round_trip_to_the_host(start_runtime: StartRuntime, source: str) -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = []

    def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        calls.append((invocation_id, method, params))
        if method == "fail":
            raise LookupError("no such collection")
        return {"echo": params, "for": invocation_id}

    rt = start_runtime({"main.py": source}, on_call=on_call)
    results = [InBackground(functools.partial(rt.invoke, n, invocation_id=f"inv-{n}")) for n in range(8)]
    for n, background in enumerate(results):
        background.join()
        assert background.result.result == {
            "reply": {"echo": {"n": n}, "for": f"inv-{n}"},
            "failed": ["LookupError", "no such collection"],
        }
    assert sorted(calls) == sorted(
        [(f"inv-{n}", "echo", {"n": n}) for n in range(8)] + [(f"inv-{n}", "fail", {}) for n in range(8)]
    )


DB_SYNC = """
def handler(event, context):
    orders = context.db["orders"]
    made = orders.insert({"total": 3}, id="o1")
    page = orders.find({"total": {"$gt": 1}}, order=["total"], limit=5)
    orders.update("o1", {"total": 4}, if_version=1)
    orders.replace("o1", {"total": 5})
    orders.delete("o1", if_version=3)
    caught = []
    for kind in ("NotFound", "Conflict", "PreconditionFailed", "LimitExceeded", "Forbidden", "Invalid", "Odd"):
        try:
            orders.get(kind)
        except context.db.DataError as exc:
            caught.append([type(exc).__name__, exc.status, exc.violations,
                           isinstance(exc, (context.db.NotFound, context.db.Conflict, context.db.LimitExceeded,
                                            context.db.Forbidden, context.db.Invalid))])
    return {"made": made, "page": page, "caught": caught}
"""
DB_ASYNC = (
    DB_SYNC.replace("def handler", "async def handler")
    .replace("orders.", "await orders.a")
    .replace("await orders.afind", "await orders.afind")
)


@pytest.mark.parametrize("source", [DB_SYNC, DB_ASYNC], ids=["sync", "async"])
def test_context_db_sends_call_frames_and_raises_typed_errors(start_runtime: StartRuntime, source: str) -> None:
    from fnctl.invocation.protocol import CallFailed

    calls: list[tuple[str, dict[str, Any]]] = []
    statuses = {
        "NotFound": 404,
        "Conflict": 409,
        "PreconditionFailed": 412,
        "LimitExceeded": 429,
        "Forbidden": 403,
        "Invalid": 400,
        "Odd": 422,
    }

    def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        calls.append((method, params))
        if method == "db.get":
            kind = params["id"]
            problem = {"status": statuses[kind], "violations": [{"path": "$.total"}] if kind == "Invalid" else []}
            raise CallFailed(kind, f"{kind} happened", {"status": statuses[kind], "problem": problem})
        if method == "db.find":
            return {"items": [], "cursor": None}
        return {"id": "o1", "version": 1, "data": params.get("document")}

    rt = start_runtime({"main.py": source}, on_call=on_call)
    reply = rt.invoke({})
    assert reply.error is None, reply.error
    assert reply.result["made"] == {"id": "o1", "version": 1, "data": {"total": 3}}
    assert reply.result["page"] == {"items": [], "cursor": None}
    assert reply.result["caught"] == [
        ["NotFound", 404, [], True],
        ["Conflict", 409, [], True],
        ["Conflict", 412, [], True],
        ["LimitExceeded", 429, [], True],
        ["Forbidden", 403, [], True],
        ["Invalid", 400, [{"path": "$.total"}], True],
        ["Invalid", 422, [], True],
    ]
    assert calls[:5] == [
        ("db.insert", {"collection": "orders", "document": {"total": 3}, "id": "o1"}),
        ("db.find", {"collection": "orders", "filter": {"total": {"$gt": 1}}, "order": ["total"], "limit": 5}),
        ("db.update", {"collection": "orders", "id": "o1", "patch": {"total": 4}, "if_version": 1}),
        ("db.replace", {"collection": "orders", "id": "o1", "document": {"total": 5}}),
        ("db.delete", {"collection": "orders", "id": "o1", "if_version": 3}),
    ]


def test_uncaught_data_errors_name_their_type(start_runtime: StartRuntime) -> None:
    from fnctl.invocation.protocol import CallFailed

    def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Any:
        raise CallFailed("NotFound", "no document orders/x", {"status": 404})

    rt = start_runtime(
        {"main.py": "def handler(event, context):\n    return context.db['orders'].get('x')\n"}, on_call=on_call
    )
    reply = rt.invoke({})
    assert reply.error is not None
    assert (reply.error.kind, reply.error.type) == (ErrorKind.HANDLER_ERROR, "NotFound")
    assert "no document orders/x" in reply.error.message
    assert "fnctl_runtime.py" not in reply.error.traceback


def test_context_abort_is_reported_as_its_own_type_with_a_string_reason(start_runtime: StartRuntime) -> None:
    source = (
        "class Abort(Exception):\n    pass\n\n"
        "def handler(event, context):\n"
        "    if event['how'] == 'abort':\n        raise context.Abort('too small')\n"
        "    if event['how'] == 'own':\n        raise Abort('not a verdict')\n"
        "    raise context.Abort(42)\n"
    )
    rt = start_runtime({"main.py": source})
    aborted, own, bad = (rt.invoke({"how": how}).error for how in ("abort", "own", "int"))
    assert aborted is not None and (aborted.kind, aborted.type, aborted.message) == (
        ErrorKind.HANDLER_ERROR,
        "fnctl.Abort",
        "too small",
    )
    assert own is not None and own.type == "Abort"  # the handler's own class of that name is no verdict
    assert bad is not None and bad.type == "TypeError"
    assert "the reason must be a string, not int" in bad.message


def test_uncaught_callback_errors_and_missing_host_handler(start_runtime: StartRuntime) -> None:
    rt = start_runtime({"main.py": "def handler(event, context):\n    return context.call('db.get', {'k': 1})\n"})
    reply = rt.invoke({})
    assert reply.error is not None
    assert (reply.error.kind, reply.error.type) == (ErrorKind.HANDLER_ERROR, "CallbackError")
    assert "callbacks not supported" in reply.error.message
    assert "context.call('db.get'" in reply.error.traceback
    assert "fnctl_runtime.py" not in reply.error.traceback


@pytest.mark.parametrize("source", [SLOW_SYNC, SLOW_ASYNC], ids=["sync", "async"])
def test_ping_answers_while_a_slow_handler_runs(start_runtime: StartRuntime, tmp_path: Path, source: str) -> None:
    rt = start_runtime({"main.py": source})
    release = tmp_path / "release"
    slow = InBackground(lambda: rt.invoke({"release": str(release)}))
    wait_until(lambda: rt.transport.ping() == 1, what="the slow invocation to be in flight")
    assert rt.transport.ping() == 1 and slow.thread.is_alive()
    release.touch()
    slow.join()
    assert slow.result.result == "released"
    assert rt.transport.ping() == 0


# Both loops: a synchronous handler's supervisor runs on the runtime's own poll loop, an async one on asyncio's.
@pytest.mark.parametrize("source", [SLOW_SYNC, SLOW_ASYNC], ids=["sync", "async"])
def test_drain_waits_for_in_flight_invocations_then_exits_0(
    start_runtime: StartRuntime, tmp_path: Path, source: str
) -> None:
    rt = start_runtime({"main.py": source})
    release = tmp_path / "release"
    slow = InBackground(lambda: rt.invoke({"release": str(release)}))
    wait_until(lambda: rt.transport.ping() == 1, what="the slow invocation to be in flight")
    drain = InBackground(lambda: rt.transport.drain())
    refused = wait_until(lambda: _draining(rt.invoke({})), what="the drain to start")
    assert refused.error is not None and refused.error.type == "Draining"
    # The pong follows the drain request on the wire and still counts one in flight: no `drained` yet.
    assert rt.transport.ping() == 1
    assert drain.thread.is_alive() and rt.process.poll() is None
    release.touch()
    slow.join()
    drain.join()
    assert slow.result.result == "released" and drain.error is None
    assert rt.exit_code() == 0
    assert os.listdir(rt.socket_dir) == []


def _draining(reply: InvocationResult) -> InvocationResult | None:
    return reply if reply.error is not None and reply.error.kind == ErrorKind.DRAINING else None


@pytest.mark.parametrize("source", [SLOW_SYNC, SLOW_ASYNC], ids=["sync", "async"])
def test_sigterm_drains_then_exits_0(start_runtime: StartRuntime, tmp_path: Path, source: str) -> None:
    rt = start_runtime({"main.py": source})
    release = tmp_path / "release"
    slow = InBackground(lambda: rt.invoke({"release": str(release)}))
    wait_until(lambda: rt.transport.ping() == 1, what="the slow invocation to be in flight")
    rt.process.send_signal(signal.SIGTERM)
    wait_until(lambda: _draining(rt.invoke({})), what="SIGTERM to start the drain")
    assert rt.process.poll() is None
    release.touch()
    slow.join()
    assert slow.result.result == "released"
    assert rt.exit_code() == 0


def test_killed_runtime_fails_waiting_invocations_promptly(start_runtime: StartRuntime, tmp_path: Path) -> None:
    rt = start_runtime({"main.py": SLOW_SYNC})
    slow = [InBackground(lambda: rt.invoke({"release": str(tmp_path / "never")})) for _ in range(3)]
    wait_until(lambda: rt.transport.ping() == 3, what="three invocations in flight")
    rt.process.kill()
    for background in slow:
        background.join()  # bounded: join fails the test if the call hangs
        assert isinstance(background.error, ConnectionLost)
    with pytest.raises(ConnectionLost):
        rt.transport.ping()


def test_concurrency_limit_queues_the_excess(start_runtime: StartRuntime, tmp_path: Path) -> None:
    rt = start_runtime({"main.py": SLOW_SYNC}, FNCTL_CONCURRENCY="2")
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    event = {"release": str(release), "started": str(started)}
    calls = [InBackground(functools.partial(rt.invoke, event, invocation_id=f"inv-{n}")) for n in range(3)]
    wait_until(lambda: len(list(started.iterdir())) == 2, what="two invocations to start")
    wait_until(lambda: rt.transport.ping() == 3, what="the third to be queued")
    assert len(list(started.iterdir())) == 2  # the third waits for a slot: both running ones block
    release.touch()
    for call in calls:
        call.join()
        assert call.result.result == "released"
    assert sorted(p.name for p in started.iterdir()) == ["inv-0", "inv-1", "inv-2"]


def test_timeout_leaves_the_connection_usable(start_runtime: StartRuntime, tmp_path: Path) -> None:
    rt = start_runtime({"main.py": SLOW_SYNC})
    release = tmp_path / "release"
    with pytest.raises(TransportTimeout):
        rt.invoke({"release": str(release)}, timeout=0.2)
    assert rt.transport.ping() == 1
    release.touch()
    wait_until(lambda: rt.transport.ping() == 0, what="the abandoned invocation to finish")
    assert rt.invoke({"release": str(release)}).result == "released"


# ---- the way in: host listeners, the peer check, names the runtime must not follow ---------------------


def test_each_host_process_gets_its_own_connection_and_both_are_served(start_runtime: StartRuntime) -> None:
    rt = start_runtime({"main.py": "def handler(event):\n    return event\n"})
    second = UnixSocketTransport(str(rt.socket_dir), peer=lambda pid: pid == rt.process.pid)
    try:
        assert second.connect(timeout=10)["pid"] == rt.process.pid
        assert second.invoke("two", invocation_id="b", deadline=time.time() + 10).result == "two"
        assert rt.invoke("one").result == "one"  # the first connection is still served
        # One worker runs them all: each answer goes to the connection its invocation came on, however they
        # alternate (the worker is told which only when it changes).
        for n in range(2):
            assert rt.invoke(f"one-{n}", invocation_id=f"a{n}").result == f"one-{n}"
            assert second.invoke(f"two-{n}", invocation_id=f"b{n}", deadline=time.time() + 10).result == f"two-{n}"
        assert os.listdir(rt.socket_dir) == []
    finally:
        second.close()


def test_a_peer_that_fails_the_check_is_closed_unserved(start_runtime: StartRuntime) -> None:
    rt = start_runtime({"main.py": "def handler(event):\n    return event\n"})
    checked: list[int] = []

    def only_the_runtime(pid: int) -> bool:
        checked.append(pid)
        return pid == rt.process.pid

    transport = UnixSocketTransport(str(rt.socket_dir), peer=only_the_runtime)
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # this test process: not the runtime
    rt.process.send_signal(signal.SIGSTOP)  # the foreign connection is queued first, whatever the scan timing
    try:
        transport.listen()
        [name] = os.listdir(rt.socket_dir)
        foreign.connect(str(rt.socket_dir / name))
        rt.process.send_signal(signal.SIGCONT)
        transport.connect(timeout=10)
        foreign.settimeout(10)
        assert foreign.recv(1024) == b""  # closed without a byte: no ready, nothing served
        assert os.getpid() in checked and checked[-1] == rt.process.pid
        assert transport.ping() == 0
    finally:
        rt.process.send_signal(signal.SIGCONT)
        foreign.close()
        transport.close()


def test_the_runtime_never_follows_a_symlink_or_connects_to_a_non_socket(
    start_runtime: StartRuntime, tmp_path: Path
) -> None:
    rt = start_runtime({"main.py": "def handler(event):\n    return event\n"})
    elsewhere = Path(tempfile.mkdtemp(prefix="fnrt-x-"))
    decoy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # what a planted link would lead to
    try:
        decoy.bind(str(elsewhere / "decoy"))
        decoy.listen(4)
        decoy.setblocking(False)
        (rt.socket_dir / "h-1-1.sock").symlink_to(elsewhere / "decoy")
        (rt.socket_dir / "h-1-2.sock").write_text("not a socket")
        later = UnixSocketTransport(str(rt.socket_dir), peer=lambda pid: pid == rt.process.pid)
        try:
            later.connect(timeout=10)  # the runtime has scanned the directory with both names in it
            assert later.ping() == 0
        finally:
            later.close()
        with pytest.raises(BlockingIOError):
            decoy.accept()  # nobody ever connected to the decoy
    finally:
        decoy.close()
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_a_new_listener_removes_those_of_dead_host_processes_only(tmp_path: Path) -> None:
    directory = Path(tempfile.mkdtemp(prefix="fnrt-s-"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        stale, live = directory / f"h-{dead.pid}-00ff.sock", directory / f"h-{os.getppid()}-00ff.sock"
        for path in (stale, live):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(path))
            sock.close()  # the name stays behind, as after a kill -9
        with UnixSocketTransport(str(directory), peer=lambda pid: False) as transport:
            transport.listen()
            names = sorted(os.listdir(directory))
            assert stale.name not in names and live.name in names and len(names) == 2
        assert os.listdir(directory) == [live.name]  # its own name went with close
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_cgroup_check_matches_the_container_and_nothing_else() -> None:
    cid = "a" * 64
    cgroupfs = f"12:memory:/docker/{cid}\n0::/docker/{cid}\n"
    systemd = f"0::/system.slice/docker-{cid}.scope\n"
    assert cgroup_names_container(cgroupfs, cid) and cgroup_names_container(systemd, cid)
    assert cgroup_names_container(f"9:name=systemd:/docker/{cid}\n0::/\n", cid)  # runsc's gofer
    assert not cgroup_names_container(f"0::/docker/{'b' * 64}\n", cid)
    assert not cgroup_names_container("0::/user.slice/user-0.slice/session-1.scope\n", cid)
    assert not cgroup_names_container(f"0::/docker/{cid}x\n", cid)
    assert not cgroup_names_container(cgroupfs, cid[:12])  # an abbreviated ID is never enough
    assert not cgroup_names_container(cgroupfs, "")


def test_runtime_sets_no_new_privileges_before_the_handler_loads(start_runtime: StartRuntime) -> None:
    """What stands in for the engine's `no-new-privileges` where it cannot be asked for (a Swarm service,
    docs/swarm.md): the runtime sets it on itself before importing user code, so the module's import, the
    handler and every process they start run with it."""
    with open("/proc/self/status") as status:
        assert "NoNewPrivs:\t0" in status.read()  # this test's own process starts without it
    rt = start_runtime(
        {
            "main.py": """
            import subprocess
            AT_IMPORT = open("/proc/self/status").read()
            def handler(event, context):
                child = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
                return [s.split("NoNewPrivs:")[1].split()[0] for s in (AT_IMPORT, child)]
            """
        }
    )
    assert rt.invoke({}).result == ["1", "1"]
    with open(f"/proc/{rt.process.pid}/status") as status:
        assert "NoNewPrivs:\t1" in status.read()
