"""`fnctl triggers`, `fnctl enable TRIGGER`, `fnctl run TRIGGER`: the triggers and their health, enabling a
trigger that disabled itself, and running a manual trigger through the gateway."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from fnctl.cli.options import GatewayKeyOpt, StateOpt
from fnctl.cli.render import Output, OutputOpt, console, print_json
from fnctl.errors import ExitCode
from fnctl.state.location import StateLocation

if TYPE_CHECKING:
    from fnctl.commands.triggers import TriggerInfo

app = typer.Typer()
TriggerArg = Annotated[str, typer.Argument(metavar="TRIGGER", help="The Trigger's name.")]


def _when(at: float | None) -> str:
    return "" if at is None else datetime.datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")


def _render(infos: list[TriggerInfo], output: Output) -> None:
    if output is Output.JSON:
        print_json([t.as_json() for t in infos])
        return
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("TRIGGER", "TYPE", "FUNCTION", "ON", "FAULTS", "STATE"):
        table.add_column(column)
    for t in infos:
        state = f"[red]disabled {_when(t.disabled_at)}[/red]" if t.disabled_at is not None else "enabled"
        table.add_row(t.name, t.type, t.function, t.target, str(t.faults), state)
    console().print(table)
    for t in infos:
        if t.last_error and (t.faults or t.disabled_at is not None):
            console().print(f"{t.name}: last fault: {t.last_error}", markup=False, highlight=False)


@app.command("triggers")
def triggers_command(state: StateOpt = None, output: OutputOpt = Output.TEXT) -> None:
    """List the triggers the last apply published: type, function, what fires them, consecutive faults, and
    whether one disabled itself (after `disableAfter` faults; `fnctl enable` turns it back on).

    \b
    Examples:
      fnctl triggers
      fnctl triggers -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.triggers import triggers
    from fnctl.manifest.project import load_project

    _render(triggers(load_project(), state), output)


@app.command("enable")
def enable_command(name: TriggerArg, state: StateOpt = None, output: OutputOpt = Output.TEXT) -> None:
    """Enable a trigger that disabled itself, and reset its count of faults (audited).

    Example: fnctl enable orders-before-create
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.triggers import enable
    from fnctl.manifest.project import load_project

    _render([enable(load_project(), state, name)], output)


@app.command("run")
def run_command(
    name: TriggerArg,
    data: Annotated[
        Optional[str],
        typer.Option(
            "--data",
            "-d",
            help="The event: JSON or @file.json (default: the trigger's manual.event).",
            show_default=False,
        ),
    ] = None,
    key: GatewayKeyOpt = None,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Run a manual trigger now, through the project's running gateway, and print the result like `invoke`.

    The key's roles need a Policy granting `run` on the trigger. Exit 0 on success, 1 on a function error.

    \b
    Examples:
      fnctl run orders-price-check --key "$FNCTL_KEY"
      fnctl run orders-price-check -d '{"since": "2026-01-01"}'
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.cli.render import render_outcome
    from fnctl.commands.triggers import run
    from fnctl.invocation.payload import read_event
    from fnctl.manifest.project import load_project

    event = read_event(data)[0] if data is not None else None
    call = run(load_project(), state, name, event, key=key)
    render_outcome(call.outcome, output=output, show_logs=False, warm=not call.cold_start)
    raise typer.Exit(ExitCode.OK if call.outcome.ok else ExitCode.FAILED)


def warn_disabled(state: StateLocation | None) -> None:
    """`fnctl status`'s footer: the triggers that disabled themselves."""
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.cli.render import err_console
    from fnctl.commands.triggers import disabled
    from fnctl.manifest.project import load_project

    for t in disabled(load_project(), state):
        err_console().print(
            f"trigger {t.name} is DISABLED since {_when(t.disabled_at)} after {t.faults} faults "
            f"(last: {t.last_error}); `fnctl enable {t.name}` turns it back on",
            markup=False,
            highlight=False,
        )
