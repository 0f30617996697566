"""The in-container runtime as a local process (no Docker) for tests: `Runtime`, the `start_runtime` fixture's
starter (tests/invocation/conftest.py) and a background caller.

As in production, the host listens in the instance's directory and the runtime connects out; the peer check
accepts exactly the runtime's process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from polling import wait_until as poll

from fnctl.invocation.protocol import InvocationResult
from fnctl.invocation.transport import CallHandler, UnixSocketTransport

RUNTIME = Path(__file__).resolve().parents[1] / "runtime-image" / "fnctl_runtime.py"
T = TypeVar("T")


def runtime_module() -> Any:
    """The runtime's module imported into the test process, for its pure parts (and its loop, unstarted)."""
    spec = importlib.util.spec_from_file_location("fnctl_runtime_under_test", RUNTIME)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its classes look their module up there
    spec.loader.exec_module(module)
    return module


def wait_until(condition: Callable[[], T | None], *, what: str, timeout: float = 10.0) -> T:
    return poll(condition, what=what, timeout=timeout, interval=0.01)


@dataclass
class Runtime:
    process: subprocess.Popen[bytes]
    socket_dir: Path
    output_path: Path
    transport: UnixSocketTransport = field(init=False)

    def invoke(
        self,
        event: Any,
        caller: dict[str, Any] | None = None,
        timeout: float | None = None,
        invocation_id: str = "inv-1",
    ) -> InvocationResult:
        return self.transport.invoke(
            event, invocation_id=invocation_id, deadline=time.time() + 30, caller=caller, timeout=timeout
        )

    def exit_code(self) -> int:
        wait_until(lambda: self.process.poll() is not None, what="the runtime process to exit")
        return self.process.returncode

    def output(self) -> str:
        return self.output_path.read_text()


class InBackground:
    """Runs `fn` in a thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the background call never returned"


StartRuntime = Callable[..., Runtime]


def runtime_starter(tmp_path: Path) -> Iterator[StartRuntime]:
    """Yields a starter of runtimes in `tmp_path`; stops every one afterwards."""
    started: list[Runtime] = []
    # AF_UNIX paths are limited to ~108 bytes: pytest's tmp_path can be longer.
    socket_dir = Path(tempfile.mkdtemp(prefix="fnrt-"))

    def start(
        files: dict[str, str],
        handler: str = "main.handler",
        *,
        connect: bool = True,
        on_call: CallHandler | None = None,
        **env: str,
    ) -> Runtime:
        code = tmp_path / "code"
        for name, source in files.items():
            (code / name).parent.mkdir(parents=True, exist_ok=True)
            (code / name).write_text(textwrap.dedent(source))
        instance_dir = socket_dir / str(len(started))  # one directory per instance, as in production
        instance_dir.mkdir()
        # Listening before the runtime starts, as `instances.start` does; nobody is accepted until it runs.
        transport = UnixSocketTransport(str(instance_dir), peer=lambda pid: False, on_call=on_call)
        transport.listen()
        environment = {
            **os.environ,
            "FNCTL_HANDLER": handler,
            "FNCTL_CODE_DIR": str(code),
            "FNCTL_DEPS_DIR": str(tmp_path / "deps"),
            "FNCTL_SOCKET_DIR": str(instance_dir),
            "FNCTL_FUNCTION": "hello",
            "FNCTL_REVISION": "r1",
            **env,
        }
        output_path = tmp_path / f"runtime-output-{len(started)}.log"
        with output_path.open("wb") as out:
            process = subprocess.Popen([sys.executable, str(RUNTIME)], env=environment, stdout=out, stderr=out)
        runtime = Runtime(process, instance_dir, output_path)
        runtime.transport = transport
        transport.peer = lambda pid: pid == process.pid
        started.append(runtime)
        if connect:
            runtime.transport.connect(timeout=15)
        return runtime

    yield start
    for runtime in started:
        runtime.transport.close()
        if runtime.process.poll() is None:
            runtime.process.kill()
        runtime.process.wait(timeout=10)
    shutil.rmtree(socket_dir, ignore_errors=True)


def parent_of(pid: int) -> int:
    """The parent of process `pid` (a runtime's workers are children of its first process)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


@contextlib.contextmanager
def unhosted_runtime(tmp_path: Path, source: str, concurrency: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A runtime process running `source` as main.py, connecting to whatever host the test makes listen in the
    yielded directory (an `AsyncTransport` of its own); (directory, process). Killed and cleaned up afterwards,
    woken first if the test stopped it."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.py").write_text(source)
    directory = Path(tempfile.mkdtemp(prefix="fnrh-"))  # AF_UNIX paths are short
    env = {
        **os.environ,
        "FNCTL_HANDLER": "main.handler",
        "FNCTL_CODE_DIR": str(code),
        "FNCTL_SOCKET_DIR": str(directory),
        "FNCTL_CONCURRENCY": str(concurrency),
    }
    process = subprocess.Popen([sys.executable, str(RUNTIME)], env=env)
    try:
        yield str(directory), process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a test that stopped it and failed
        process.kill()
        process.wait(timeout=10)
        shutil.rmtree(directory)
