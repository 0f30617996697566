"""`fnctl audit` (list and filter the audit records) and `fnctl audit verify` (check the hash chains)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from fnctl.cli.options import StateOpt
from fnctl.cli.render import Output, OutputOpt
from fnctl.errors import BadInput, ExitCode
from fnctl.state.location import StateLocation

if TYPE_CHECKING:
    from fnctl.state.store import Store

app = typer.Typer()


audit_app = typer.Typer(invoke_without_command=True)
app.add_typer(audit_app, name="audit")


def _store(state: StateLocation | None) -> Store:
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.manifest.project import load_project
    from fnctl.state.location import locate
    from fnctl.state.store import connect, exists

    path = locate(load_project(), state)
    if not exists(path):
        raise BadInput(f"no state store at {path}: nothing was ever deployed or audited there")
    return connect(path)


@audit_app.callback()
def audit(
    ctx: typer.Context,
    since: Annotated[
        Optional[str], typer.Option("--since", help="Only records since: a duration back (1h, 30m) or an ISO time.")
    ] = None,
    function: Annotated[
        Optional[str], typer.Option("--function", "-f", help="Only records about this function (or API key id).")
    ] = None,
    actor: Annotated[
        Optional[str], typer.Option("--actor", help="Only records by this actor (the principal, with --invocations).")
    ] = None,
    invocations: Annotated[
        bool, typer.Option("--invocations", help="List the invocation audit instead of the deploy audit.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many records, newest first.")] = 100,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """List audit records, newest first: who changed what, when, from which commit (or, with --invocations,
    who invoked what). `fnctl audit verify` checks that none was changed, removed or reordered.

    \b
    Examples:
      fnctl audit --since 1h
      fnctl audit --function hello --actor ci:deploy-bot -o json
      fnctl audit --since 2024-05-01T00:00:00Z --invocations --limit 20
      fnctl audit verify --anchor 3f9a...   (exit 1 when the log was tampered with)
    """
    if ctx.invoked_subcommand is not None:
        return

    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.cli.render_audit import render_records
    from fnctl.commands.audit import parse_since, records
    from fnctl.state.auditlog import AuditFilter

    where = AuditFilter(since=parse_since(since, time.time()) if since else None, target=function, actor=actor)
    store = _store(state)
    try:
        rows = records(store, where, invocations=invocations, limit=limit)
    finally:
        store.close()
    render_records(rows, output)


@audit_app.command("verify")
def verify(
    anchor: Annotated[
        Optional[list[str]],
        typer.Option(
            "--anchor", help="A head hash recorded earlier, outside the store (repeat for several).", show_default=False
        ),
    ] = None,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Check the audit logs' hash chains: exit 0 when intact, 1 when a record was changed, removed or
    reordered, or the tail was cut (names the records), 2 on bad input.

    Prints each chain's head hash: keep it outside this host (a ticket, CI log, another machine) and pass it
    back with --anchor; only that shows a log truncated or rewritten whole by someone who could write the store.

    \b
    Examples:
      fnctl audit verify
      fnctl audit verify --anchor 5be1c0... -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.cli.render_audit import render_verification
    from fnctl.commands.audit import verify as verify_chains

    store = _store(state)
    try:
        result = verify_chains(store, tuple(anchor or ()))
    finally:
        store.close()
    render_verification(result, output)
    raise typer.Exit(ExitCode.OK if result.intact else ExitCode.FAILED)
