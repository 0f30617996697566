"""What one invocation came to, whichever way it went (an instance, the gateway, a local sandbox): its result,
or the typed failure that stopped it (timeout, out of memory, too large, process limit, disk full, crash)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fnctl.invocation.protocol import ErrorKind, InvocationResult


class Failure(StrEnum):
    """Why an invocation did not return a result; each has its own message and exit code 1."""

    HANDLER_ERROR = "handler error"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out of memory"
    PAYLOAD_TOO_LARGE = "payload too large"
    OUTPUT_TOO_LARGE = "output too large"
    NOT_SERIALISABLE = "result not JSON-serialisable"
    PROCESS_LIMIT = "process limit reached"
    DISK_FULL = "disk full in /tmp"
    CRASHED = "instance crashed"


# Failures after which the instance cannot be trusted (a thread still spinning, forked children, a dead
# process): it is killed and the next invocation gets a fresh one.
RECYCLE = {Failure.TIMEOUT, Failure.OUT_OF_MEMORY, Failure.PROCESS_LIMIT, Failure.CRASHED}


@dataclass(slots=True)  # made per request: a frozen one's __init__ costs ~5x (a setattr per field)
class Outcome:
    ok: bool
    result: Any
    failure: Failure | None
    message: str
    traceback: str
    logs: str
    duration_ms: float


_KINDS = {
    ErrorKind.OUTPUT_TOO_LARGE: Failure.OUTPUT_TOO_LARGE,
    ErrorKind.NOT_SERIALISABLE: Failure.NOT_SERIALISABLE,
    ErrorKind.PAYLOAD_TOO_LARGE: Failure.PAYLOAD_TOO_LARGE,
}


def outcome_of(result: InvocationResult) -> Outcome:
    """The typed Outcome of a runtime's reply (pure); a failure in RECYCLE means the instance must go."""
    if result.ok:
        return Outcome(True, result.result, None, "", "", result.logs, result.duration_ms)
    error = result.error
    assert error is not None
    failure = _KINDS.get(error.kind, Failure.HANDLER_ERROR)
    text = f"{error.type}: {error.message}"
    if failure is Failure.HANDLER_ERROR:
        failure = _classify_os_error(text)
    return Outcome(False, None, failure, text, error.traceback, result.logs, result.duration_ms)


def _classify_os_error(text: str) -> Failure:
    """Errors that mean a sandbox limit rather than a bug in the handler."""
    # Python's OSError texts, and Node's error codes (ENOSPC: no space left on device, EFBIG, spawn EAGAIN)
    if "[Errno 28]" in text or "No space left on device" in text or "File too large" in text:
        return Failure.DISK_FULL
    if text.startswith("Error: ENOSPC:") or text.startswith("Error: EFBIG:"):
        return Failure.DISK_FULL
    if "can't start new thread" in text or (text.startswith("BlockingIOError") and "[Errno 11]" in text):
        return Failure.PROCESS_LIMIT
    if text.startswith("Error: spawn") and "EAGAIN" in text:
        return Failure.PROCESS_LIMIT
    if text.startswith("ProcessLimit:"):  # Node's permission model refused a process or thread (the runtime says)
        return Failure.PROCESS_LIMIT
    if text.startswith("MemoryError"):
        return Failure.OUT_OF_MEMORY
    return Failure.HANDLER_ERROR
