"""`fnctl data ...`: the collections' documents, as the operator (every write in the change log)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from fnctl.cli import datatransfer
from fnctl.cli.dataopts import CollectionArg, CursorOpt, LimitOpt, NoHooksOpt, TenantOpt, operator_session
from fnctl.cli.options import StateOpt
from fnctl.cli.render import Output, OutputOpt, print_json
from fnctl.errors import BadInput, ExitCode

if TYPE_CHECKING:
    from fnctl.data.documents import DataDocument

app = typer.Typer()
data_app = typer.Typer(
    help="Read and write the collections' documents as the operator (every write is in the "
    'change log). See docs/data.md.\n\nExample: fnctl data find orders \'{"customer": "ada"}\' -o json',
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

IdArg = Annotated[str, typer.Argument(metavar="ID", help="The document's id.")]
IfMatchOpt = Annotated[
    Optional[int],
    typer.Option(
        "--if-match", help="The version the document must be at (else exit 1, nothing written).", show_default=False
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Act on an existing document without --if-match (last writer wins).")
]
DataOpt = Annotated[
    Optional[str],
    typer.Option("--data", "-d", help="JSON, @file.json, or standard input when absent.", show_default=False),
]


def _body(data: str | None, what: str) -> Any:
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.invocation.payload import read_event

    if data is None and (sys.stdin is None or sys.stdin.isatty()):
        raise BadInput(f"give the {what} with --data JSON, --data @file.json, or on standard input")
    value, _ = read_event(data)
    return value


def _show(doc: DataDocument, output: Output) -> None:
    if output is Output.JSON:
        print_json(doc.as_json())
    else:
        sys.stdout.write(
            f"{doc.id}  version {doc.version}  updated {doc.updated_at} by {doc.updated_by}\n"
            + json.dumps(doc.data, indent=2, ensure_ascii=False)
            + "\n"
        )


@data_app.command("ls")
def ls(
    collection: Annotated[
        Optional[str],
        typer.Argument(
            metavar="[COLLECTION]",
            help="List this collection's documents (ids and versions) instead of the collections.",
            show_default=False,
        ),
    ] = None,
    limit: LimitOpt = 100,
    cursor: CursorOpt = None,
    tenant: TenantOpt = None,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """List the collections (documents, indexes), or the ids and versions of one collection's documents.

    \b
    Examples:
      fnctl data ls
      fnctl data ls orders --limit 20 -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.data import collections, find

    with operator_session(state, tenant, "ls") as s:
        if collection is None:
            infos = collections(s)
            if output is Output.JSON:
                print_json([i.as_json() for i in infos])
                return
            if not infos:
                sys.stdout.write("no collections\n")
            for info in infos:
                indexes = "; ".join(("unique " if u else "") + ", ".join(f) for f, u in info.indexes) or "none"
                sys.stdout.write(f"{info.name}  {info.documents} documents  indexes: {indexes}\n")
            return
        page = find(s, collection, None, ["id"], limit, cursor)
    if output is Output.JSON:
        print_json(
            {
                "documents": [{"id": d.id, "version": d.version, "updatedAt": d.updated_at} for d in page.documents],
                "cursor": page.cursor,
            }
        )
        return
    for doc in page.documents:
        sys.stdout.write(f"{doc.id}  version {doc.version}  updated {doc.updated_at}\n")
    if page.cursor:
        sys.stderr.write(f"more: fnctl data ls {collection} --cursor {page.cursor}\n")


@data_app.command("get")
def get(
    collection: CollectionArg,
    id: IdArg,
    tenant: TenantOpt = None,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Print one document: its id, version, who changed it when, and its data.

    Exit 1 when there is no such document, 2 for an unknown collection or a bad id.

    Example: fnctl data get orders o-1001 -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.data import get as read

    with operator_session(state, tenant, "get") as s:
        doc = read(s, collection, id)
    _show(doc, output)


@data_app.command("find")
def find(
    collection: CollectionArg,
    filter: Annotated[
        Optional[str],
        typer.Argument(
            metavar="[FILTER]",
            help='A JSON filter, e.g. \'{"total": {"$gt": 10}}\' (docs/data.md).',
            show_default=False,
        ),
    ] = None,
    order: Annotated[
        Optional[str],
        typer.Option(
            "--order", help="Indexed fields, comma-separated; '-' before one for descending.", show_default=False
        ),
    ] = None,
    limit: LimitOpt = 100,
    cursor: CursorOpt = None,
    tenant: TenantOpt = None,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Find documents with the filter language; one page at a time (the next page's cursor goes to stderr).

    \b
    Examples:
      fnctl data find orders '{"status": {"$in": ["new", "paid"]}}' --order -createdAt --limit 10
      fnctl data find orders '{"customer.id": "c-7"}' -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.data import find as search

    with operator_session(state, tenant, "find") as s:
        page = search(s, collection, filter, [o for o in (order or "").split(",") if o], limit, cursor)
    if output is Output.JSON:
        print_json(page.as_json())
        return
    for doc in page.documents:
        sys.stdout.write(
            f"{doc.id}  version {doc.version}  {json.dumps(doc.data, ensure_ascii=False, separators=(',', ':'))}\n"
        )
    if page.cursor:
        sys.stderr.write(f"more: --cursor {page.cursor}\n")


@data_app.command("put")
def put(
    collection: CollectionArg,
    id: Annotated[
        Optional[str], typer.Argument(metavar="[ID]", help="The id (default: a new UUIDv7).", show_default=False)
    ] = None,
    data: DataOpt = None,
    if_match: IfMatchOpt = None,
    force: ForceOpt = False,
    no_hooks: NoHooksOpt = False,
    tenant: TenantOpt = None,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Insert a document, or replace an existing one (which needs --if-match VERSION or --force).

    The document is checked against the collection's schema (every violation with its JSON path, exit 2).

    \b
    Examples:
      fnctl data put orders o-1001 -d '{"customer": "c-7", "items": [{"sku": "a", "qty": 1}]}'
      fnctl data put orders o-1001 -d @order.json --if-match 3
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.data import put as write

    body = _body(data, "document")
    with operator_session(state, tenant, "put", no_hooks) as s:
        doc = write(s, collection, id, body, if_match=if_match, force=force)
    _show(doc, output)


@data_app.command("patch")
def patch(
    collection: CollectionArg,
    id: IdArg,
    data: DataOpt = None,
    if_match: IfMatchOpt = None,
    force: ForceOpt = False,
    no_hooks: NoHooksOpt = False,
    tenant: TenantOpt = None,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Change a document with a JSON merge patch (RFC 7396: null removes a field); needs --if-match or --force.

    Example: fnctl data patch orders o-1001 -d '{"status": "paid", "note": null}' --if-match 2
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.data import patch as change

    body = _body(data, "merge patch")
    with operator_session(state, tenant, "patch", no_hooks) as s:
        doc = change(s, collection, id, body, if_match=if_match, force=force)
    _show(doc, output)


@data_app.command("rm")
def rm(
    collection: CollectionArg,
    id: IdArg,
    if_match: IfMatchOpt = None,
    force: ForceOpt = False,
    no_hooks: NoHooksOpt = False,
    tenant: TenantOpt = None,
    state: StateOpt = None,
) -> None:
    """Delete a document; needs --if-match VERSION or --force.

    Example: fnctl data rm orders o-1001 --if-match 4
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.data import remove

    with operator_session(state, tenant, "rm", no_hooks) as s:
        remove(s, collection, id, if_match=if_match, force=force)
    sys.stderr.write(f"deleted {collection}/{id}\n")


data_app.command("import")(datatransfer.import_command)
data_app.command("export")(datatransfer.export_command)


@data_app.command("check")
def check(collection: CollectionArg, state: StateOpt = None, output: OutputOpt = Output.TEXT) -> None:
    """List the documents (all tenants) that no longer conform to the collection's schema: exit 1 when any.

    A schema change applies to new writes; this finds the documents written before it.

    Example: fnctl data check orders -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.data import check as run_check

    with operator_session(state, None, "check") as s:
        found = run_check(s, collection)
    if output is Output.JSON:
        print_json({"collection": collection, "nonconforming": [n.as_json() for n in found]})
    else:
        for item in found:
            where = f"{item.tenant}/" if item.tenant else ""
            for path, message in item.violations:
                sys.stdout.write(f"{where}{item.id}: {path}: {message}\n")
        sys.stderr.write(
            f"{len(found)} document{'s' if len(found) != 1 else ''} of {collection} "
            f"do{'es' if len(found) == 1 else ''} not conform to its schema\n"
        )
    raise typer.Exit(ExitCode.FAILED if found else ExitCode.OK)
