"""What one invocation came to, whichever way it went (an instance, the gateway, a local sandbox): its result,
or the typed failure that stopped it (timeout, out of memory, too large, process limit, disk full, crash)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


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


@dataclass(frozen=True)
class Outcome:
    ok: bool
    result: Any
    failure: Failure | None
    message: str
    traceback: str
    logs: str
    duration_ms: float
