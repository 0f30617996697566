"""Commands on progressive rollouts: rollout status, promote, abort, retry, abtest report.

Thin like `cli`: parse, call one function of `rollouts`, render with `render_rollout`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from fnctl.cli.options import LockOpt, StateOpt, deploy_options, parse_timeout
from fnctl.cli.render import Progress
from fnctl.cli.render_rollout import (
    LiveView,
    RolloutOutput,
    RolloutOutputOpt,
    print_event,
    render_abtest,
    render_snapshots,
)
from fnctl.errors import ExitCode
from fnctl.state.location import StateLocation

if TYPE_CHECKING:
    from fnctl.commands.rollouts import OnEvent, OnTick, Snapshot
    from fnctl.rollout.machine import EventKind

app = typer.Typer()
rollout_app = typer.Typer(
    help="Follow progressive rollouts (canary, blue-green, A/B).\n\nExample: fnctl rollout status hello -w",
    no_args_is_help=True,
)
abtest_app = typer.Typer(help="Read A/B tests.\n\nExample: fnctl abtest report checkout", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")
app.add_typer(abtest_app, name="abtest")

NameArg = Annotated[str, typer.Argument(help="The function.", show_default=False)]
TimeoutOpt = Annotated[
    Optional[str],
    typer.Option("--timeout", help="Give up after this long (e.g. 90s, 10m): exit 1.", show_default=False),
]
NoWaitOpt = Annotated[
    bool, typer.Option("--no-wait", help="Return once the request is acted on, without following the rollout.")
]


def watchers(output: RolloutOutput, view: object | None = None) -> tuple[OnEvent, OnTick]:
    """Event printing (a line or an NDJSON object each) and the live view's update."""

    def on_event(event: object, row: object) -> None:
        if not (isinstance(view, LiveView) and view.enabled and output is RolloutOutput.TEXT):
            print_event(event, row, output)  # type: ignore[arg-type]

    def on_tick(snapshots: list[Snapshot]) -> None:
        if isinstance(view, LiveView):
            view.update(snapshots)

    return on_event, on_tick


def _finish(snapshot: Snapshot, output: RolloutOutput, *, exit_code: ExitCode | None = None) -> None:

    render_snapshots([snapshot], output)
    raise typer.Exit(snapshot.exit_code if exit_code is None else exit_code)


@rollout_app.command("status")
def status_command(
    name: NameArg,
    state: StateOpt = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Follow the rollout until it completes, rolls back or pauses at a gate (driving it when no other fnctl process does).",
        ),
    ] = False,
    timeout: TimeoutOpt = None,
    output: RolloutOutputOpt = RolloutOutput.TEXT,
) -> None:
    """Show a function's latest rollout: strategy, state, step, traffic weights, latest analysis.

    Exit 0 when it completed (or is progressing, without -w), 3 when it was rolled back (aborted), 4 when it
    waits at a gate for `fnctl promote`, 1 when --timeout passed first.

    \b
    Examples:
      fnctl rollout status hello
      fnctl rollout status hello -w --timeout 15m -o ndjson
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.rollouts import status
    from fnctl.manifest.project import load_project

    with LiveView(watch and output is RolloutOutput.TEXT) as view:
        on_event, on_tick = watchers(output, view)
        snapshot = status(
            load_project(),
            deploy_options(state),
            name,
            watch=watch,
            timeout=parse_timeout(timeout),
            on_event=on_event,
            on_tick=on_tick,
        )
    _finish(snapshot, output)


@app.command()
def promote(
    name: NameArg,
    state: StateOpt = None,
    full: Annotated[
        bool, typer.Option("--full", help="Skip the remaining steps: the new revision takes 100% now.")
    ] = False,
    variant: Annotated[
        Optional[str],
        typer.Option("--variant", help="A/B test: the variant that wins and takes 100%.", show_default=False),
    ] = None,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = None,
    output: RolloutOutputOpt = RolloutOutput.TEXT,
) -> None:
    """Move a rollout past its current pause, gate or analysis (--full: past all of them), then follow it.

    Blue-green: the preview takes 100% in one change. A/B test: --variant names the winner.
    Exit codes as `fnctl rollout status -w`.

    \b
    Examples:
      fnctl promote hello
      fnctl promote hello --full
      fnctl promote checkout --variant b
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.rollout.machine import EventKind

    _request(name, state, EventKind.PROMOTE_REQUESTED, {"full": full, "variant": variant}, not no_wait, timeout, output)


@app.command()
def abort(name: NameArg, state: StateOpt = None, output: RolloutOutputOpt = RolloutOutput.TEXT) -> None:
    """Abort a rollout: all traffic back on the stable revision in one change, the new revision quarantined.

    Exit 0 once traffic is back on the stable revision.

    Example: fnctl abort hello
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.rollout.machine import EventKind

    _request(name, state, EventKind.ABORT_REQUESTED, {}, False, None, output, exit_code=ExitCode.OK)


def _request(
    name: str,
    state: StateLocation | None,
    kind: EventKind,
    data: dict[str, object],
    wait: bool,
    timeout: str | None,
    output: RolloutOutput,
    exit_code: ExitCode | None = None,
) -> None:
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.rollouts import request
    from fnctl.manifest.project import load_project

    with LiveView(wait and output is RolloutOutput.TEXT) as view:
        on_event, on_tick = watchers(output, view)
        snapshot = request(
            load_project(),
            deploy_options(state),
            name,
            kind,
            data,
            wait=wait,
            timeout=parse_timeout(timeout),
            on_event=on_event,
            on_tick=on_tick,
        )
    _finish(snapshot, output, exit_code=exit_code)


@app.command()
def retry(
    name: NameArg,
    state: StateOpt = None,
    lock_timeout: LockOpt = 60.0,
    no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = None,
    output: RolloutOutputOpt = RolloutOutput.TEXT,
) -> None:
    """Roll an aborted revision out again from the first step (lifting its quarantine), then follow it.

    Example: fnctl retry hello
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.rollouts import Follower
    from fnctl.commands.rollouts import retry as retry_rollout
    from fnctl.manifest.project import load_project

    project, options = load_project(), deploy_options(state, lock_timeout)
    with Progress(quiet=output is not RolloutOutput.TEXT) as progress:
        row, before = retry_rollout(project, options, name, progress)
    with LiveView(output is RolloutOutput.TEXT and not no_wait) as view:
        on_event, on_tick = watchers(output, view)
        follower = Follower(project, options, [row.id], on_event, on_tick, seen={row.id: before})
        snapshot = follower.run(parse_timeout(timeout), settle=not no_wait)[0]
    _finish(snapshot, output)


@abtest_app.command("report")
def abtest_report(name: NameArg, state: StateOpt = None, output: RolloutOutputOpt = RolloutOutput.TEXT) -> None:
    """Per-variant requests, error rate and latency percentiles of a function's latest A/B test, and whether
    each variant differs significantly from the first (two-proportion z-test for errors, Mann-Whitney U for
    latency), once every variant has the manifest's minSamples.

    Example: fnctl abtest report checkout -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.rollouts import abtest_report as report
    from fnctl.manifest.project import load_project

    render_abtest(report(load_project(), deploy_options(state), name), output, name)
