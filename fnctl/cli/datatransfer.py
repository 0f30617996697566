"""`fnctl data import` / `export`: a collection's documents as NDJSON, in and out (registered on `fnctl data` by
`fnctl.cli.data`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from fnctl.cli.dataopts import CollectionArg, NoHooksOpt, TenantOpt, operator_session
from fnctl.cli.options import StateOpt
from fnctl.cli.progress import Meter
from fnctl.cli.render import Output, OutputOpt, print_json
from fnctl.errors import BadInput


def import_command(
    collection: CollectionArg,
    file: Annotated[
        Optional[Path], typer.Argument(metavar="[FILE]", help="NDJSON (default: standard input).", show_default=False)
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="Documents per transaction.")] = 1000,
    bare: Annotated[
        bool, typer.Option("--bare", help="Each line is a document, even one shaped like an exported envelope.")
    ] = False,
    check_first: Annotated[
        bool,
        typer.Option(
            "--check-first/--no-check-first",
            help="Check every line before writing any (default); without: one pass, each batch all or nothing, stopping at the first bad one.",
        ),
    ] = True,
    no_hooks: NoHooksOpt = False,
    tenant: TenantOpt = None,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Import NDJSON: one document per line, or the envelopes `export` writes (their id and data are kept).

    Every line is checked first (JSON object, id, schema, size, id already taken or repeated): any bad line
    → exit 2 listing the bad lines by number, nothing imported. Then each --batch lines are one transaction.

    \b
    Examples:
      fnctl data import orders orders.ndjson --tenant acme
      fnctl data export orders | fnctl data import orders-copy
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.datatransfer import import_ndjson

    with operator_session(state, tenant, "import", no_hooks) as s, Meter("importing", "bytes") as progress:
        report = import_ndjson(
            s,
            collection,
            None if file is None or str(file) == "-" else file,
            batch=batch,
            bare=bare,
            check_first=check_first,
            on_progress=progress,
        )
    if output is Output.JSON:
        print_json({"collection": collection, "imported": report.imported, "batches": report.batches})
    else:
        sys.stderr.write(
            f"imported {report.imported} documents into {collection} in {report.batches} "
            f"transaction{'s' if report.batches != 1 else ''}\n"
        )


def export_command(
    collection: CollectionArg,
    file: Annotated[
        Optional[Path],
        typer.Argument(metavar="[FILE]", help="Write here (default: standard output).", show_default=False),
    ] = None,
    filter: Annotated[
        Optional[str], typer.Option("--filter", help="Only the documents this JSON filter matches.", show_default=False)
    ] = None,
    tenant: TenantOpt = None,
    state: StateOpt = None,
) -> None:
    """Export a tenant's documents as NDJSON envelopes ({id, version, createdAt, ..., data}), by id.

    \b
    Examples:
      fnctl data export orders orders.ndjson
      fnctl data export orders --filter '{"status": "paid"}' --tenant acme > paid.ndjson
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.datatransfer import export_ndjson

    with operator_session(state, tenant, "export") as s, Meter("exporting", "documents") as progress:
        if file is None or str(file) == "-":
            count = export_ndjson(s, collection, sys.stdout, filter_text=filter, on_progress=progress)
        else:
            try:
                handle = file.open("w", encoding="utf-8")
            except OSError as exc:
                raise BadInput(f"cannot write {file}: {exc.strerror or exc}") from None
            with handle:
                count = export_ndjson(s, collection, handle, filter_text=filter, on_progress=progress)
    sys.stderr.write(f"exported {count} documents of {collection}\n")
