"""The gateway's transport (`AsyncTransport`) answering a handler's calls: at once from the frame's read callback
when the call handler returns `Answered` (no task per call), else in a task; an error either way becomes the
handler's CallbackError. The runtime runs as a local process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from runtime_helpers import RUNTIME

from fnctl.invocation.aiotransport import Answered, AsyncTransport
from fnctl.invocation.protocol import CallFailed

HANDLERS = """
from fnctl_runtime import CallbackError

def _calls(context):
    out = []
    for method in ("now", "later", "refused", "refused_later"):
        try:
            out.append(context.call(method, {"m": method}))
        except CallbackError as exc:
            out.append([exc.type, exc.message])
    return out

def handler(event, context):
    return _calls(context)

async def ahandler(event, context):
    out = []
    for method in ("now", "later", "refused", "refused_later"):
        try:
            out.append(await context.acall(method, {"m": method}))
        except CallbackError as exc:
            out.append([exc.type, exc.message])
    return out
"""


async def _run(directory: str, pid: int) -> tuple[Any, list[tuple[str, bool]]]:
    seen: list[tuple[str, bool]] = []

    async def later(value: Any) -> Any:
        await asyncio.sleep(0)
        if value == "refused_later":
            raise CallFailed("Refused", "not later either")
        return {"later": value}

    def on_call(invocation_id: str, method: str, params: dict[str, Any]) -> Awaitable[Any] | Answered:
        seen.append((method, asyncio.current_task() is None))  # None: called from the read callback itself
        if method == "now":
            return Answered({"now": params["m"]})
        if method == "refused":
            raise CallFailed("Refused", "not now")
        return later(method)

    transport = AsyncTransport(directory, peer=lambda peer: peer == pid, on_call=on_call)
    await transport.connect(timeout=15)
    try:
        result = await transport.invoke({}, invocation_id="inv-1", deadline=time.time() + 30)
        return result.result, seen
    finally:
        await transport.close()


@pytest.mark.parametrize("handler", ["main.handler", "main.ahandler"])
def test_calls_answered_at_once_or_later_and_refusals_reach_the_handler(handler: str, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.py").write_text(HANDLERS)
    directory = Path(tempfile.mkdtemp(prefix="fnac-"))  # AF_UNIX paths are short
    env = {**os.environ, "FNCTL_HANDLER": handler, "FNCTL_CODE_DIR": str(code), "FNCTL_SOCKET_DIR": str(directory)}
    process = subprocess.Popen([sys.executable, str(RUNTIME)], env=env)
    try:
        result, seen = asyncio.run(_run(str(directory), process.pid))
    finally:
        process.kill()
        process.wait(timeout=10)
        directory.rmdir()
    assert result == [
        {"now": "now"},
        {"later": "later"},
        ["Refused", "not now"],
        ["Refused", "not later either"],
    ]
    # Every call handler ran in the frame's read callback, not in a task made for it.
    assert seen == [(m, True) for m in ("now", "later", "refused", "refused_later")]
