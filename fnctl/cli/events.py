"""`fnctl view get` (a view through the running gateway) and `fnctl events ls|replay|purge` (the onCommit
outbox). See docs/views.md and docs/events.md."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Annotated, Optional

import typer

from fnctl.cli.options import GatewayKeyOpt, StateOpt
from fnctl.cli.render import Output, OutputOpt, print_json

app = typer.Typer()
view_app = typer.Typer(
    help="Read views: cached function results (see docs/views.md).\n\n"
    "Example: fnctl view get orders-summary -p customer=ada",
    no_args_is_help=True,
)
events_app = typer.Typer(
    help="The onCommit outbox: list, replay and purge events (see docs/events.md).\n\n"
    "Example: fnctl events replay --trigger orders-notify",
    no_args_is_help=True,
)
app.add_typer(view_app, name="view")
app.add_typer(events_app, name="events")

TriggerOpt = Annotated[Optional[str], typer.Option("--trigger", "-t", help="Only this trigger's events.")]
SeqArg = Annotated[Optional[list[int]], typer.Argument(metavar="[SEQ]...", help="Only these events (by seq).")]


@view_app.command("get")
def get(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The view.")],
    param: Annotated[
        Optional[list[str]], typer.Option("--param", "-p", help="An argument NAME=VALUE (repeatable).")
    ] = None,
    key: GatewayKeyOpt = None,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """A view's result, through the project's running gateway (`fnctl serve`), cached there until what it
    read changes. Bad arguments (not matching the function's `parameters`) exit 2, a failed function 1.

    \b
    Examples:
      fnctl view get orders-summary -p customer=c-7
      fnctl view get orders-summary -p customer=c-7 --key "$FNCTL_KEY" -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.views import get_view
    from fnctl.manifest.project import load_project

    answer = get_view(load_project(), state, name, param or [], key)
    if output is Output.JSON:
        print_json({"result": answer.body, "revision": answer.revision, "cache": answer.cache})
    else:
        sys.stdout.write(json.dumps(answer.body, indent=2, ensure_ascii=False) + "\n")
        sys.stderr.write(f"revision {answer.revision}, cache {answer.cache or '-'}\n")


@events_app.command("ls")
def ls(
    which: Annotated[
        Optional[str], typer.Option("--status", "-s", help="Only events in this status: pending, delivered or dead.")
    ] = None,
    trigger: TriggerOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many events, by seq.")] = 100,
    after: Annotated[int, typer.Option("--after", help="Only events after this seq (paging).")] = 0,
    state: StateOpt = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """List onCommit events by seq: their trigger, document, state, attempts and last error.

    \b
    Examples:
      fnctl events ls
      fnctl events ls --status dead --trigger orders-notify -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.views import event_json, list_events
    from fnctl.manifest.project import load_project

    events = list_events(load_project(), state, which, trigger, limit, after)
    if output is Output.JSON:
        print_json([event_json(e) for e in events])
        return
    if not events:
        sys.stdout.write("no events\n")
        return
    for e in events:
        when = datetime.fromtimestamp(e.updated_at).astimezone().isoformat(timespec="seconds")
        error = f"  {e.last_error}" if e.last_error else ""
        sys.stdout.write(
            f"{e.seq:>8}  {e.trigger}  {e.collection}/{e.doc_id}  {e.op}  {e.state}  "
            f"attempts {e.attempts}  {when}{error}\n"
        )


@events_app.command("replay")
def replay(
    seq: SeqArg = None,
    trigger: TriggerOpt = None,
    delivered: Annotated[
        bool, typer.Option("--delivered", help="Replay delivered events instead of dead letters.")
    ] = False,
    state: StateOpt = None,
) -> None:
    """Deliver dead letters again (attempts counted afresh): all of them, a trigger's, or those named by seq.
    The running gateway picks them up within a second. Audited.

    \b
    Examples:
      fnctl events replay --trigger orders-notify
      fnctl events replay 1042 1043
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.views import replay as replay_events
    from fnctl.manifest.project import load_project

    count = replay_events(load_project(), state, trigger, seq or [], delivered)
    sys.stdout.write(f"{count} event(s) pending again\n")


@events_app.command("purge")
def purge(
    seq: SeqArg = None,
    which: Annotated[
        Optional[str], typer.Option("--status", "-s", help="Purge events in this status (default: dead).")
    ] = None,
    trigger: TriggerOpt = None,
    state: StateOpt = None,
) -> None:
    """Delete events: by default the dead letters (all, a trigger's, or those named by seq). Audited.

    \b
    Examples:
      fnctl events purge --trigger orders-notify
      fnctl events purge --status pending 1042
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.views import purge as purge_events
    from fnctl.manifest.project import load_project

    count = purge_events(load_project(), state, which, trigger, seq or [])
    sys.stdout.write(f"{count} event(s) purged\n")
