"""Rendering of `fnctl audit` and `fnctl audit verify`: a rich table on a terminal, plain tab-separated lines
otherwise, JSON with `-o json`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer

from fnctl.cli.render import Output, _line, _plain, console, print_json
from fnctl.commands.audit import record_json

if TYPE_CHECKING:
    from fnctl.commands.audit import Verification
    from fnctl.state.auditlog import AuditEntry, InvocationEntry


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(at))


def render_records(rows: list[AuditEntry] | list[InvocationEntry], output: Output) -> None:
    """Newest first, as the store returns them."""
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.state.auditlog import AuditEntry

    if output is Output.JSON:
        print_json([record_json(r) for r in rows])
        return
    if not rows:
        _line("no audit records match")
        return
    header = (
        ("id", "time", "actor", "command", "action", "target", "outcome", "commit", "detail")
        if isinstance(rows[0], AuditEntry)
        else ("id", "time", "principal", "function", "revision", "trigger", "outcome", "status", "ms", "request")
    )
    cells = [_cells(r) for r in rows]
    if _plain(stderr=False):
        for row in cells:
            typer.echo("\t".join(row))
        return
    # rich's renderer only when it draws: `fnctl --help` and plain output never load it
    from rich.table import Table

    table = Table()
    for column in header:
        table.add_column(column, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console().print(table)


def _cells(row: AuditEntry | InvocationEntry) -> list[str]:
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.state.auditlog import AuditEntry

    if isinstance(row, AuditEntry):
        return [
            str(row.id),
            _when(row.at),
            row.actor,
            row.command,
            row.action,
            row.target or "-",
            row.outcome,
            (row.git_commit or "-")[:12],
            row.detail or "",
        ]
    return [
        str(row.id),
        _when(row.at),
        row.principal or "-",
        row.function,
        "-" if row.revision is None else str(row.revision),
        row.trigger or "-",
        row.outcome,
        str(row.status),
        f"{row.duration_ms:g}",
        row.request_id,
    ]


def render_verification(result: Verification, output: Output) -> None:
    if output is Output.JSON:
        print_json(result.as_json())
        return
    for chain in result.chains:
        state = "intact" if chain.intact else f"TAMPERED ({len(chain.findings)} finding(s))"
        styled = "[green]intact[/green]" if chain.intact else f"[red]{state}[/red]"
        head = f"head {chain.head_id} {chain.head_hash}" if chain.head_id else "empty"
        _line(
            f"{chain.table}: {chain.records} records, {state}; {head}",
            styled=f"{chain.table}: {chain.records} records, {styled}; {head}",
        )
        for finding in chain.findings:
            _line(
                f"  {chain.table} record {finding.record if finding.record is not None else '-'}: "
                f"{finding.problem.value}: {finding.message}"
            )
    for finding in result.anchors:
        _line(f"  {finding.problem.value}: {finding.message}")
    if result.intact:
        heads = " ".join(f"--anchor {c.head_hash}" for c in result.chains if c.head_id)
        _line(
            "Record the head hashes outside this host: a later `fnctl audit verify "
            + (heads or "--anchor HASH")
            + "` then also shows a truncated or rewritten log.",
            stderr=True,
        )
