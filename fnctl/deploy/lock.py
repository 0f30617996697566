"""The one-mutating-command-at-a-time lock of a state store.

An exclusive `flock` on a file beside the store: the kernel releases it when its holder dies, even by
`kill -9`, so a dead holder never blocks anyone. A state on PostgreSQL is shared by hosts: there the command
then also takes a session advisory lock in the database, which the server releases when the holder's
connection dies. The holder writes who it is (pid, host, command, since)
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
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from fnctl.errors import FnctlError
from fnctl.state.backends import database_lock
from fnctl.state.location import StateLocation

POLL = 0.05
RECHECK = 1.0  # seconds between looks at who holds the lock while waiting (the holder may change)


class LockTimeout(FnctlError):
    """Another fnctl command holds the lock; the message names it."""


@dataclass(frozen=True)
class Holder:
    """Who holds the lock, as it wrote itself into the lock file; None fields when it could not be read
    (the holder is between taking the lock and writing its name, or is not fnctl)."""

    pid: int | None = None
    host: str | None = None
    command: str | None = None
    since: float | None = None


# Called once the lock is found held, with its holder; the context it returns is entered while this
# command waits (a spinner, a line) and left when the wait ends, by getting the lock or by timing out.
# Entered again with the new holder when the lock changes hands meanwhile. Core code never prints: the CLI
# passes the display.
OnWait = Callable[[Holder], AbstractContextManager[object]]


@contextmanager
def held(
    store_path: StateLocation, timeout: float, command: str | None = None, on_wait: OnWait | None = None
) -> Iterator[None]:
    """Hold the store's lock for the block; wait up to `timeout` seconds for it, telling `on_wait` whom
    it waits for."""
    deadline = time.monotonic() + timeout
    with _holding(store_path, command, lambda fd, path: _acquire(fd, path, timeout, on_wait)):
        # then the database's lock, on PostgreSQL: another host's command holds it
        with database_lock(store_path, max(0.0, deadline - time.monotonic())) as got:
            if not got:
                raise LockTimeout(
                    f"the state store is locked by a command on another host (the database lock of {store_path}); "
                    f"waited {timeout:g}s (raise --lock-timeout to wait longer)"
                )
            yield


@contextmanager
def attempt(store_path: StateLocation, command: str | None = None) -> Iterator[bool]:
    """Hold the store's lock for the block if it is free now (True), else do without it (False)."""

    def try_once(fd: int, path: Path) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    with _holding(store_path, command, try_once) as got:
        if not got:
            yield False
            return
        with database_lock(store_path, None) as free:
            yield free


@contextmanager
def _holding(store_path: StateLocation, command: str | None, acquire: Callable[[int, Path], object]) -> Iterator[bool]:
    # beside the SQLite file, or on PostgreSQL beside the host-local anchor (this host's commands; those of
    # other hosts meet at the database's lock, taken next)
    path = store_path.path.with_name(store_path.path.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if acquire(fd, path) is False:
            yield False
            return
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "command": command or " ".join(["fnctl", *sys.argv[1:]])[:200],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield True
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, timeout: float, on_wait: OnWait | None = None) -> None:
    deadline = time.monotonic() + timeout
    with ExitStack() as display:  # the waiting display, left however the wait ends
        shown: Holder | None = None
        looked = float("-inf")
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                now = time.monotonic()
                if now >= deadline:
                    display.close()  # the display goes before the error is shown
                    raise LockTimeout(
                        f"the state store is locked by {describe_holder(path)}; waited {timeout:g}s "
                        "(raise --lock-timeout to wait longer)"
                    ) from None
                if on_wait is not None and now - looked >= RECHECK:
                    looked = now
                    holder = read_holder(path)
                    if holder != shown:  # at once on the first miss, then whenever the lock changed hands
                        display.close()
                        display.enter_context(on_wait(holder))
                        shown = holder
                time.sleep(POLL)


def read_holder(path: Path) -> Holder:
    """The lock file's holder record (empty fields when it cannot be read)."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}

    pid, host, command, since = (data.get(k) for k in ("pid", "host", "command", "since"))
    return Holder(
        pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        host if isinstance(host, str) else None,
        command if isinstance(command, str) else None,
        float(since) if isinstance(since, (int, float)) and not isinstance(since, bool) else None,
    )


def describe_holder(path: Path) -> str:
    holder = read_holder(path)
    if holder.pid is None:
        return "another fnctl command"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.since or 0))
    return f"pid {holder.pid} on {holder.host} ({holder.command!r}, since {since})"


def waiting_words(holder: Holder, now: float, local_host: str | None = None) -> str:
    """What a waiting command says, e.g. "waiting for the lock held by pid 42 (`fnctl apply`, since
    10:04:05, 12s ago)"; the holder's host only when it is not `local_host`. Pure, for the CLI to render."""
    if holder.pid is None:
        return "waiting for the lock held by another fnctl command"
    where = "" if holder.host in (None, local_host) else f" on {holder.host}"
    parts = [f"`{holder.command}`"] if holder.command else []
    if holder.since is not None:
        ago = max(int(now - holder.since), 0)
        parts.append(f"since {time.strftime('%H:%M:%S', time.localtime(holder.since))}, {ago}s ago")
    return f"waiting for the lock held by pid {holder.pid}{where}" + (f" ({', '.join(parts)})" if parts else "")
