"""What the `fnctl data` commands share: their common arguments and options, and the operator's session they run in
(`fnctl.cli.data` for reads and writes, `fnctl.cli.datatransfer` for import and export)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from fnctl.state.location import StateLocation

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from fnctl.commands.data import OperatorSession

CollectionArg = Annotated[str, typer.Argument(metavar="COLLECTION", help="The collection.")]
TenantOpt = Annotated[
    Optional[str],
    typer.Option("--tenant", help='Act in this tenant (default: the default tenant, "").', show_default=False),
]
LimitOpt = Annotated[int, typer.Option("--limit", help="At most this many documents (max 1000).")]
CursorOpt = Annotated[
    Optional[str], typer.Option("--cursor", help="Continue after the page that printed it.", show_default=False)
]
NoHooksOpt = Annotated[
    bool,
    typer.Option(
        "--no-hooks",
        help="Write to a collection with data hooks without running them (audited); without it such a write is "
        "refused: write through the gateway's REST API, which runs them.",
    ),
]


def operator_session(
    state: StateLocation | None, tenant: str | None, command: str, no_hooks: bool = False
) -> AbstractContextManager[OperatorSession]:
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.data import session
    from fnctl.manifest.project import load_project

    return session(load_project(), state, tenant, command, no_hooks=no_hooks)
