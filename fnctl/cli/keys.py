"""`fnctl keys create|list|revoke`: API keys of the gateway (stored hashed, shown once)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from fnctl.cli.options import StateOpt
from fnctl.cli.render import Output, OutputOpt, console, err_console, print_json
from fnctl.errors import FnctlError
from fnctl.state.location import StateLocation

if TYPE_CHECKING:
    from fnctl.state.keystore import ApiKey
    from fnctl.state.store import Store

app = typer.Typer()


keys_app = typer.Typer(
    help="API keys for calling functions through the gateway (`fnctl serve`).\n\n"
    "Example: KEY=$(fnctl keys create ci --role deployer)",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


def _store(state: StateLocation | None, create: bool) -> Store:
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.manifest.project import load_project
    from fnctl.state.location import locate
    from fnctl.state.store import connect, exists

    path = locate(load_project(), state)
    if not create and not exists(path):
        raise FnctlError(f"no state store at {path}: no key was ever created there")
    return connect(path)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="What or who uses the key (e.g. ci, billing-service).")],
    role: Annotated[list[str], typer.Option("--role", "-r", help="A role the key holds (repeat for several).")],
    tenant: Annotated[Optional[str], typer.Option("--tenant", help="The tenant its callers act for.")] = None,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Create an API key and print it once: only its hash is kept, so copy it now.

    The key goes to stdout alone (the rest to stderr), so it can be captured. The audit log records who
    created it (never the key).

    Example: KEY=$(fnctl keys create ci --role service --tenant acme)
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.deploy.actor import actor
    from fnctl.gateway.keys import create as create_key

    store = _store(state, create=True)
    try:
        key, raw = create_key(store, name, tuple(role), tenant, actor())
    finally:
        store.close()
    if output is Output.JSON:
        print_json({**key.as_json(), "key": raw})
        return
    err_console().print(
        f"created API key [bold]{key.id}[/bold] ({key.name}; roles {', '.join(key.roles)}"
        + (f"; tenant {key.tenant}" if key.tenant else "")
        + "). It is shown only this once:"
    )
    typer.echo(raw)
    err_console().print(
        f"Send it as `Authorization: Bearer <key>` or `X-Api-Key: <key>`; revoke it with `fnctl keys revoke {key.id}`."
    )


@keys_app.command("list")
def list_command(
    all_keys: Annotated[bool, typer.Option("--all", "-a", help="Include revoked keys.")] = False,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """List API keys: id, name, roles, tenant, when and by whom created, revoked or not (never the keys).

    Example: fnctl keys list -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.gateway.keys import list_keys

    store = _store(state, create=False)
    try:
        keys = list_keys(store, include_revoked=all_keys)
    finally:
        store.close()
    if output is Output.JSON:
        print_json([k.as_json() for k in keys])
    elif not keys:
        console().print("no API keys" + ("" if all_keys else " (add --all to see revoked ones)"))
    elif console().is_terminal:
        _table(keys)
    else:
        for k in keys:
            typer.echo(
                "\t".join(
                    (
                        k.id,
                        k.name,
                        ",".join(k.roles),
                        k.tenant or "-",
                        _when(k.created_at),
                        k.created_by,
                        "active" if k.active else f"revoked {_when(k.revoked_at)}",
                    )
                )
            )


def _table(keys: list[ApiKey]) -> None:
    # rich's renderer only when it draws: `fnctl --help` and plain output never load it
    from rich.table import Table

    table = Table()
    for column in ("id", "name", "roles", "tenant", "created", "by", "status"):
        table.add_column(column)
    for k in keys:
        status = "[green]active[/green]" if k.active else f"[red]revoked {_when(k.revoked_at)}[/red]"
        table.add_row(k.id, k.name, ", ".join(k.roles), k.tenant or "-", _when(k.created_at), k.created_by, status)
    console().print(table)


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (as `fnctl keys list` shows it).")],
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Revoke an API key: the gateway refuses it from the next request on. Audited with who revoked it.

    Example: fnctl keys revoke 3f9a1c0b7e22
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.deploy.actor import actor
    from fnctl.gateway.keys import revoke as revoke_key

    store = _store(state, create=False)
    try:
        key, changed = revoke_key(store, key_id, actor())
    finally:
        store.close()
    if output is Output.JSON:
        print_json({**key.as_json(), "changed": changed})
    elif changed:
        console().print(f"revoked API key {key.id} ({key.name})")
    else:
        console().print(f"API key {key.id} ({key.name}) was already revoked at {_when(key.revoked_at)}")
