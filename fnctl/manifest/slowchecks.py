"""The checks that need a slow library, handed in by the program that runs the manifest checks.

Two libraries decide what fnctl's own compiled checks cannot: jsonschema (with referencing) explains why a
value fails a JSON Schema — the compiled checks of `manifest.fastschema` only say *that* it fails — and
croniter reads a cron expression. Importing them costs ~0.12 s and ~0.07 s (measured), which `fnctl
validate` and every command reading `fnctl.toml` would pay for valid input without a cron trigger. So the
manifest package never imports them: it asks the `SlowChecks` installed here, and only when it needs them.
`manifest.fullchecks` is the implementation; the CLI installs one that imports it on first use (the only
place a lazy import is allowed), a long-running program or a test installs it as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from fnctl.errors import FnctlError
from fnctl.manifest.diagnostics import JsonPath


class SlowChecks(Protocol):
    def kind_errors(self, kind: str, data: Any) -> Iterator[tuple[JsonPath, str]]:
        """(path, message) for every way `data` breaks the schema of `kind` (fnctl's own schemas)."""
        ...

    def schema_problem(self, schema: Any) -> str | None:
        """Why `schema` is not a valid JSON Schema (draft 2020-12), or None."""
        ...

    def value_errors(self, schema: Any, value: Any) -> Iterator[tuple[JsonPath, str]]:
        """(path, message) for every way `value` breaks `schema` (a user's JSON Schema), in jsonschema's order."""
        ...

    def cron_valid(self, schedule: str) -> bool:
        """Whether `schedule` is a cron expression the gateway's scheduler reads."""
        ...


_installed: list[SlowChecks] = []


def install(checks: SlowChecks) -> None:
    """Use `checks` from now on in this process (the last one installed wins)."""
    _installed[:] = [checks]


def slow_checks() -> SlowChecks:
    if not _installed:
        raise FnctlError(
            "internal: no slow checks installed (fnctl.manifest.slowchecks.install(fnctl.manifest.fullchecks.CHECKS))"
        )
    return _installed[0]
