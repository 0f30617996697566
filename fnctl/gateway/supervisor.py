"""`fnctl serve --workers N`: the parent process. It holds the port, starts N gateway processes on it
(SO_REUSEPORT: the kernel spreads connections between them), restarts one that dies (and logs it), and on
SIGTERM/SIGINT passes the signal on to every worker and waits for them all: the same drain as one gateway.

Worker 0 owns the instances (starts, scales, pauses and stops them, runs cron and the rollouts); the others
follow it (fnctl.gateway.crew). Each worker is a `fnctl serve` process of its own, in a session of its own (a
Ctrl-C on the terminal reaches the parent alone, which passes it on once).
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from fnctl.errors import BadInput

log = logging.getLogger("fnctl.serve")

POLL = 0.1  # seconds between the parent's looks at its workers
QUICK_DEATH = 2.0  # a worker that dies sooner than this after its start is restarted after `BACKOFF`
BACKOFF = 1.0


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen on) host:port with SO_REUSEPORT, for as long as the workers run: a port 0 becomes the
    one every worker binds, and the port stays this user's while a worker restarts. A socket that does not
    listen is handed no connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((host, port))
    return reserved


class Supervisor:
    """The worker processes: `command` + `--worker K/N --run-dir DIR` each."""

    def __init__(self, command: Sequence[str], workers: int) -> None:
        self.command = list(command)
        self.workers = workers
        self.run_dir = Path(tempfile.mkdtemp(prefix="fnctl-workers-"))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.signals: list[int] = []

    def run(self) -> bool:
        """Run the workers until a signal stops them; True when every worker exited 0 (drained)."""
        previous = {number: signal.signal(number, self._on_signal) for number in (signal.SIGTERM, signal.SIGINT)}
        try:
            for worker in range(self.workers):
                self._start(worker)
            while not self.signals:
                self._restart_the_dead()
                time.sleep(POLL)
            return self._wait_all()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            for process in self.processes.values():  # only after an error of the parent's own
                if process.poll() is None:
                    process.kill()
                    process.wait()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _start(self, worker: int) -> None:
        command = [*self.command, "--worker", f"{worker}/{self.workers}", "--run-dir", str(self.run_dir)]
        process = subprocess.Popen(command, start_new_session=True)
        self.processes[worker], self.started[worker] = process, time.monotonic()
        log.info("worker started", extra={"fields": {"worker": worker, "pid": process.pid}})

    def _restart_the_dead(self) -> None:
        for worker, process in list(self.processes.items()):
            code = process.poll()
            if code is None or self.signals:
                continue
            quick = time.monotonic() - self.started[worker] < QUICK_DEATH
            log.warning(
                "worker exited; restarting it",
                extra={
                    "fields": {"worker": worker, "pid": process.pid, "exit": code, "backoff": BACKOFF if quick else 0}
                },
            )
            if quick:
                time.sleep(BACKOFF)  # a worker that cannot start must not spin
                if self.signals:
                    return
            self._start(worker)

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        self.signals.append(number)
        for process in self.processes.values():  # the second signal too: it cuts the workers' drain short
            if process.poll() is None:
                process.send_signal(number)

    def _wait_all(self) -> bool:
        drained = True
        for worker, process in self.processes.items():
            code = process.wait()
            # killed by the signal itself: it came before the worker listened, so nothing was in flight
            drained = drained and code in (0, -signal.SIGTERM, -signal.SIGINT)
            log.info("worker stopped", extra={"fields": {"worker": worker, "pid": process.pid, "exit": code}})
        return drained and len(self.signals) < 2


def supervise(command: Sequence[str], workers: int, host: str, port: int) -> bool:
    """`fnctl serve --workers N`: reserve the port, run `command` (a `fnctl serve` line without `--workers`
    and `--address`) N times on it; True when every worker drained."""
    try:
        reserved = reserve_port(host, port)
    except OSError as exc:
        raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        bound = reserved.getsockname()[1]
        address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        return Supervisor([*command, "--address", address], workers).run()
    finally:
        reserved.close()
