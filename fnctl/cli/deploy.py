"""Commands on the live state: diff, plan, apply, rollback, delete, status, history, get, logs.

Thin like `cli`: parse, call one function of `apply` or `ops`, render with `render_deploy`.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fnctl.cli.options import LockOpt, PathsArg, StateOpt, deploy_options, parse_timeout
from fnctl.cli.render import Output, OutputOpt, Progress, console, print_json
from fnctl.cli.render_rollout import LiveView, RolloutOutput, RolloutOutputOpt
from fnctl.cli.rollout import watchers
from fnctl.errors import BadInput, ExitCode

app = typer.Typer()


@app.command("diff")
def diff_command(
    paths: PathsArg = None,
    state: StateOpt = None,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Count functions no longer in the manifests as changes (as `apply --prune` would delete them).",
        ),
    ] = False,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Show what apply would change: per function and per Collection create / update / delete / unchanged, field by field, and drift.

    Exit 0 when nothing would change, 1 when something would, 2 on bad input. A function no longer in the
    manifests is shown as a delete, which counts as a change only with --prune (apply keeps it otherwise).

    Example: fnctl diff -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.cli.render_deploy import render_diff
    from fnctl.commands.apply import compute_diff
    from fnctl.deploy.diff import has_changes
    from fnctl.manifest.project import load_project

    changes, live, collections = compute_diff(load_project(), deploy_options(state), paths)
    render_diff(changes, live, output, prune=prune, collections=collections)
    raise typer.Exit(
        ExitCode.FAILED if has_changes(changes, live, prune=prune, collections=collections) else ExitCode.OK
    )


@app.command("plan")
def plan_command(
    paths: PathsArg = None,
    state: StateOpt = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-f", help="Write the plan here, for `fnctl apply PLAN.json`.")
    ] = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Plan to delete functions no longer in the manifests.")
    ] = False,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Show the ordered steps apply would take, and save them for review.

    Example: fnctl plan -f plan.json && fnctl apply plan.json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.cli.render_deploy import render_plan
    from fnctl.commands.apply import make_plan_file
    from fnctl.manifest.project import load_project

    document = make_plan_file(load_project(), deploy_options(state, prune=prune), paths)
    if out is not None:
        try:
            out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:  # a missing directory, a read-only place: the user's path, not a bug
            raise BadInput(f"cannot write the plan {out}: {exc.strerror or exc}") from None
    if output is Output.JSON:
        print_json(document)
    else:
        render_plan(document, out)


@app.command("apply")
def apply_command(
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(help="Manifests, or one plan file made by `fnctl plan -f`.", show_default=False),
    ] = None,
    state: StateOpt = None,
    lock_timeout: LockOpt = 60.0,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Delete deployed functions and drop collections that are no longer in the manifests (a collection that holds documents also needs --force).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Deploy a spec even though it was rolled back (quarantined); with --prune, drop collections that still hold documents.",
        ),
    ] = False,
    allow_dirty: Annotated[
        bool,
        typer.Option("--allow-dirty", help="Deploy from a git work tree with uncommitted changes (recorded as dirty)."),
    ] = False,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait", help="Start rollouts and return: `fnctl serve` or `fnctl rollout status -w` carries them on."
        ),
    ] = False,
    timeout: Annotated[
        Optional[str],
        typer.Option(
            "--timeout", help="Stop following rollouts after this long (e.g. 15m): exit 1.", show_default=False
        ),
    ] = None,
    output: RolloutOutputOpt = RolloutOutput.TEXT,
) -> None:
    """Deploy the manifests: build images, start and health-check new revisions, roll them out, stop the old.

    Collections are created or updated (indexes added or dropped; a schema change applies to new writes) before
    any function deploys; one that is no longer declared is kept unless --prune, and one that still holds
    documents is dropped only with --prune --force (else exit 2, nothing changed).
    Idempotent: unchanged functions are left alone; drift (dead or altered instances, removed images) is healed.
    A function with a canary, blueGreen or abTest rollout is followed until it completes, rolls back or pauses
    at a gate (a live view on a terminal; `-o ndjson` prints every rollout event as a JSON line for CI logs).
    In a git work tree every revision records the commit; uncommitted changes under the project are refused
    unless --allow-dirty. Exit 0 on success, 1 when a function failed (its traffic stayed on the previous revision), 2 on bad input
    or a stale plan, 3 when a rollout was rolled back, 4 when one waits at a gate for `fnctl promote`.
    With engine = "swarm" in fnctl.toml a revision's instances are a Swarm service; every node needs its image
    (docs/swarm.md).

    \b
    Examples:
      fnctl apply
      fnctl apply --no-wait && fnctl rollout status hello -w
      fnctl plan -f plan.json && fnctl apply plan.json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.cli.render_deploy import render_apply
    from fnctl.commands.apply import apply
    from fnctl.manifest.project import load_project

    plan_file = None
    if paths and len(paths) == 1 and paths[0].suffix == ".json":
        plan_file = _read_plan(paths[0])
        paths = [Path(p) for p in plan_file["paths"]] if plan_file.get("paths") else None
        prune = bool(plan_file.get("prune", prune))
    options = replace(
        deploy_options(state, lock_timeout, prune, force),
        wait=not no_wait,
        timeout=parse_timeout(timeout),
        allow_dirty=allow_dirty,
    )
    plain = output is not RolloutOutput.TEXT
    with Progress(quiet=plain) as progress, LiveView(not plain and not no_wait) as view:
        on_event, on_tick = watchers(output, view)
        report = apply(
            load_project(),
            options,
            paths,
            progress,
            plan_file,
            on_event=on_event if output is RolloutOutput.NDJSON else None,
            on_tick=on_tick,
        )
    render_apply(report, Output.JSON if plain else Output.TEXT, one_line=output is RolloutOutput.NDJSON)
    raise typer.Exit(report.exit_code)


def _read_plan(path: Path) -> dict[str, Any]:
    from fnctl.deploy.plan import is_plan_file  # in the command, as the CLI's other imports: start-up time

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the plan {path}: {exc}") from None
    if not is_plan_file(document):
        raise BadInput(f"{path} is not a plan made by `fnctl plan -f`")
    return document


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="The function.")],
    to: Annotated[
        Optional[int], typer.Option("--to", help="The revision to go back to (default: the previous healthy one).")
    ] = None,
    state: StateOpt = None,
    lock_timeout: LockOpt = 60.0,
) -> None:
    """Switch a function back to an earlier healthy revision at once: no build, no steps.

    The revision rolled away from is quarantined: apply refuses the same spec again unless --force.

    Example: fnctl rollback hello --to 3
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.rollback import rollback as do_rollback
    from fnctl.manifest.project import load_project

    with Progress() as progress:
        old, new = do_rollback(load_project(), deploy_options(state, lock_timeout), name, to, progress)
    console().print(f"{name}: rolled back from revision {old} to {new}; revision {old} is quarantined")


@app.command()
def delete(
    name: Annotated[str, typer.Argument(help="The function.")], state: StateOpt = None, lock_timeout: LockOpt = 60.0
) -> None:
    """Stop a function's instances and remove it from routing (its history stays).

    Example: fnctl delete hello
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.rollback import delete as do_delete
    from fnctl.manifest.project import load_project

    with Progress() as progress:
        do_delete(load_project(), deploy_options(state, lock_timeout), name, progress)


@app.command()
def status(state: StateOpt = None, output: OutputOpt = Output.TEXT) -> None:
    """Every deployed function: live revision, weights, instances and their health, last deploy.

    Example: fnctl status -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.cli.render_deploy import render_status
    from fnctl.commands.functions import status as read_status
    from fnctl.manifest.project import load_project

    render_status(read_status(load_project(), state), output)
    from fnctl.cli.triggers import warn_disabled  # the triggers that disabled themselves, on stderr

    warn_disabled(state)


@app.command()
def history(
    name: Annotated[str, typer.Argument(help="The function.")], state: StateOpt = None, output: OutputOpt = Output.TEXT
) -> None:
    """A function's revisions: status, when, by whom, from which commit, and why they failed.

    Example: fnctl history hello
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.cli.render_deploy import render_history
    from fnctl.commands.functions import history as read_history
    from fnctl.manifest.project import load_project

    render_history(read_history(load_project(), state, name), output)


@app.command()
def get(
    what: Annotated[str, typer.Argument(help="functions or revisions.")],
    state: StateOpt = None,
    output: Annotated[str, typer.Option("--output", "-o", help="json or yaml.")] = "json",
) -> None:
    """Deployed functions or revisions as data.

    Example: fnctl get revisions -o yaml
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.functions import get as read
    from fnctl.manifest.project import load_project

    data = read(load_project(), state, what)
    if output == "yaml":
        # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
        import yaml

        typer.echo(yaml.safe_dump(data, sort_keys=False), nl=False)
    elif output == "json":
        print_json(data)
    else:
        raise BadInput("--output must be json or yaml")


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="The function.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    revision: Annotated[Optional[int], typer.Option("--revision", help="Only this revision's instances.")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="Only lines newer than this (e.g. 10m).")] = None,
    state: StateOpt = None,
) -> None:
    """Print the logs of a function's instances (under engine = "swarm": its services' tasks on every node,
    read through the manager, each line named `<service>.<slot>@<node>`; docs/swarm.md).

    Example: fnctl logs hello --since 10m
    """

    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.functions import logs as read_logs
    from fnctl.manifest.project import load_project
    from fnctl.manifest.units import parse_duration

    try:
        start = time.time() - parse_duration(since) if since else None
    except ValueError as exc:
        raise BadInput(f"--since: {exc}") from None
    for line in read_logs(load_project(), state, name, revision, start, follow):
        typer.echo(line)
