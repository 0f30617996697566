"""Options and arguments that several commands share, and the values built from them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from fnctl.errors import BadInput
from fnctl.state import location
from fnctl.state.location import StateLocation

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from fnctl.deploy.lock import Holder, OnWait
    from fnctl.deploy.session import Options

PathsArg = Annotated[
    Optional[list[Path]],
    typer.Argument(help="Manifest files or directories (default: the project's manifests).", show_default=False),
]
StateOpt = Annotated[
    Optional[StateLocation],
    typer.Option(
        "--state",
        parser=location.parse,
        metavar="PATH|URL",
        help="State store: a SQLite file or a postgresql:// URL (default: $FNCTL_STATE, fnctl.toml, or "
        "~/.local/state/fnctl/<project>/state.db).",
        show_default=False,
    ),
]
GatewayKeyOpt = Annotated[
    Optional[str],
    typer.Option("--key", envvar="FNCTL_KEY", help="API key for the gateway (or $FNCTL_KEY).", show_default=False),
]
LockOpt = Annotated[float, typer.Option("--lock-timeout", help="Seconds to wait for another fnctl command to finish.")]


def deploy_options(
    state: StateLocation | None, lock_timeout: float = 60.0, prune: bool = False, force: bool = False
) -> Options:
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.deploy.session import Options

    return Options(
        state=state, lock_timeout=lock_timeout, prune=prune, force=force, on_lock_wait=_lock_wait_display(lock_timeout)
    )


def _lock_wait_display(timeout: float) -> OnWait:
    """Every command that takes the lock (apply, rollback, delete, retry, sync, the push hook) says at once
    whom it waits for, on stderr; the display's code is loaded only when a command does wait."""

    def on_wait(holder: Holder) -> AbstractContextManager[object]:
        # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
        from fnctl.cli.render_deploy import lock_waiting

        return lock_waiting(holder, timeout)

    return on_wait


def parse_timeout(text: str | None) -> float | None:
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.manifest.units import parse_duration

    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise BadInput(f"--timeout: {exc}") from None
