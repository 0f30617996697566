"""fnctl's own error types and the exit codes of the CLI contract (README.md "Exit codes", docs/ci.md).

Boundary modules translate library errors into these; the CLI maps them to exit codes.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # also: `diff` found changes
    BAD_INPUT = 2
    ROLLED_BACK = 3
    WAITING = 4
    INTERNAL = 5
    INTERRUPTED = 130


class FnctlError(Exception):
    """An expected failure with a message meant for the user (no traceback)."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail  # extra output (a build log, a failing check's output)


class BadInput(FnctlError):
    exit_code = ExitCode.BAD_INPUT


class UnknownName(BadInput):
    """The command names something that does not exist (a function, a trigger, an API key, a revision): bad
    input (exit 2) whichever command it is, in one shape: what is missing, then how to see what exists."""

    def __init__(self, what: str, name: str, missing: str, listing: str) -> None:
        super().__init__(f"{what} {name!r} {missing} ({listing})")


def not_deployed(name: str) -> UnknownName:
    """A function that takes no traffic: never applied, or deleted."""
    return UnknownName("function", name, "is not deployed", "see `fnctl get functions`")


class EngineUnavailable(FnctlError):
    """No Docker engine answers, or it lacks something fnctl needs (a runtime, the base image)."""


class BuildFailed(FnctlError):
    """An image build failed: `detail` holds the failing step and the pip or Docker output."""
