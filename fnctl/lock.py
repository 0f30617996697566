"""The one-mutating-command-at-a-time lock of a state store.

An exclusive `flock` on a file beside the store: the kernel releases it when its holder dies, even by
`kill -9`, so a dead holder never blocks anyone. The holder writes who it is (pid, host, command, since)
into the file so that a waiting command can name it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fnctl.errors import FnctlError

POLL = 0.05


class LockTimeout(FnctlError):
    """Another fnctl command holds the lock; the message names it."""


@contextmanager
def held(store_path: Path, timeout: float, command: str | None = None) -> Iterator[None]:
    """Hold the store's lock for the block; wait up to `timeout` seconds for it."""
    with _holding(store_path, command, lambda fd, path: _acquire(fd, path, timeout)):
        yield


@contextmanager
def attempt(store_path: Path, command: str | None = None) -> Iterator[bool]:
    """Hold the store's lock for the block if it is free now (True), else do without it (False)."""
    def try_once(fd: int, path: Path) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    with _holding(store_path, command, try_once) as got:
        yield got


@contextmanager
def _holding(store_path: Path, command: str | None, acquire: Callable[[int, Path], object]) -> Iterator[bool]:
    path = store_path.with_name(store_path.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if acquire(fd, path) is False:
            yield False
            return
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "command": command or " ".join(["fnctl", *sys.argv[1:]])[:200]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield True
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout(f"the state store is locked by {describe_holder(path)}; waited {timeout:g}s "
                                  "(raise --lock-timeout to wait longer)") from None
            time.sleep(POLL)


def describe_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "another fnctl command"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('command')!r}, since {since})"
