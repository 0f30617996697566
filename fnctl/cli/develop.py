"""The inner loop of a function's author: init, validate, invoke (locally or deployed) and sandbox check."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from fnctl.cli.options import GatewayKeyOpt, PathsArg, StateOpt
from fnctl.cli.render import (
    Output,
    OutputOpt,
    Progress,
    console,
    render_invoke_error,
    render_outcome,
    render_sandbox_checks,
    render_validation,
)
from fnctl.errors import BadInput, ExitCode, FnctlError

if TYPE_CHECKING:
    from fnctl.commands.local import DataCalls
    from fnctl.engine.images import ImageRef
    from fnctl.manifest.model import DesiredState
    from fnctl.manifest.project import Project
    from fnctl.manifest.validate import ValidationResult
    from fnctl.state.location import StateLocation

app = typer.Typer()


@app.command()
def validate(paths: PathsArg = None, output: OutputOpt = Output.TEXT) -> None:
    """Check manifests against the schemas and the semantic rules, and each Node.js or TypeScript function's code
    (type and syntax errors, the handler's export, package.json and its lock); report every problem at once.

    Exit 0 when valid, 2 when not. Each problem reads FILE:LINE:COL: $.json.path: message (a problem in a code
    file: FILE:LINE:COL: message).

    Example: fnctl validate manifests/ -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.manifest.project import find_root, load_project
    from fnctl.runtimes.validation import validate_project

    # The project (its root, its defaults) is the one around the first path given, not the working directory's.
    hint = paths[0] if paths and find_root(paths[0]) else None
    result = validate_project(load_project(hint), paths)
    render_validation(result, output)
    raise typer.Exit(ExitCode.OK if result.ok else ExitCode.BAD_INPUT)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the project.")] = Path("."),
    name: Annotated[Optional[str], typer.Option(help="Project name (default: the directory's name).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write even into a directory that has files.")] = False,
    runtime: Annotated[
        str, typer.Option("--runtime", "-r", help="The function's runtime: python3.11, nodejs22 or typescript.")
    ] = "python3.11",
) -> None:
    """Scaffold a project: fnctl.toml, one function (Python, Node.js or TypeScript), its manifest and an HTTP
    trigger.

    Example: fnctl init my-project && cd my-project && fnctl validate

    Example: fnctl init my-api --runtime typescript && fnctl invoke --local hello -d '{"name": "you"}'
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.init import scaffold

    created = scaffold(directory, name, force=force, runtime=runtime)
    for path in created:
        console().print(f"created {path}")
    console().print(f"\nNext: cd {directory} && fnctl validate")


@app.command()
def invoke(
    target: Annotated[
        str, typer.Argument(metavar="NAME|PATH", help="A function name, or a manifest file with one function.")
    ],
    local: Annotated[
        bool, typer.Option("--local", help="Build and run the function in a fresh local sandbox.")
    ] = False,
    data: Annotated[
        Optional[str],
        typer.Option("--data", "-d", help="The event: JSON, or @file.json; default: stdin when piped, else {}."),
    ] = None,
    logs: Annotated[bool, typer.Option("--logs", help="Print the invocation's captured output.")] = False,
    keep_warm: Annotated[bool, typer.Option("--keep-warm", help="Keep the sandbox for the next --local call.")] = False,
    revision: Annotated[
        Optional[int], typer.Option("--revision", help="Invoke this revision, even one with 0% of traffic.")
    ] = None,
    state: StateOpt = None,
    key: GatewayKeyOpt = None,
    direct: Annotated[
        bool, typer.Option("--direct", help="Go straight to an instance even when the gateway is running.")
    ] = False,
    data_from: Annotated[
        Optional[str],
        typer.Option(
            "--data-from",
            metavar="STATE",
            help="With --local: context.db uses this state store's data, its SQLite file or a postgresql:// URL "
            "(default: the project's local data file).",
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Invoke a function and print its result; exit 0 on success, 1 on a function error or limit.

    Without --local, the deployed function is invoked through the gateway when `fnctl serve` runs for this
    project at its gateway address (authentication, routing, metrics and the audit apply), else straight
    through one of its instances.

    \b
    Examples:
      fnctl invoke --local hello --data '{"name": "you"}' --logs
      echo '{"name": "ci"}' | fnctl invoke --local manifests/demo/hello.yaml --keep-warm
      fnctl invoke hello --revision 3 -d @event.json --key "$FNCTL_KEY"
      fnctl invoke --local orders-report --data-from ~/.local/state/fnctl/shop.db
      fnctl invoke --local orders-report --data-from 'postgresql:///shop?host=/run/postgresql'
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.local import invoke_local
    from fnctl.invocation.payload import read_event
    from fnctl.manifest.project import load_project

    try:
        event, size = read_event(data)
        if data_from is not None and not local:
            raise BadInput("--data-from is for --local: a deployed function uses its gateway's data")
        if not local:
            # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
            from fnctl.commands.invoke import invoke_deployed

            outcome, warm = invoke_deployed(
                load_project(), state, target, event, size, revision, key=key, logs=logs, direct=direct
            )
        else:
            with Progress(quiet=output is Output.JSON) as progress:
                result = invoke_local(
                    load_project(),
                    target,
                    event,
                    size,
                    keep_warm=keep_warm,
                    on_progress=progress,
                    open_data=_open_local_data,
                    validate=_validate_project,
                    ensure_image=_ensure_image,
                    data_from=_state_location(data_from),
                )
            outcome, warm = result.outcome, result.warm
    except FnctlError as exc:
        if output is Output.JSON:  # a script reads stdout: one JSON object whatever failed (stderr says it too)
            render_invoke_error(exc)
        raise
    render_outcome(outcome, output=output, show_logs=logs, warm=warm)
    raise typer.Exit(ExitCode.OK if outcome.ok else ExitCode.FAILED)


def _validate_project(project: Project, paths: list[Path] | None) -> ValidationResult:
    """`invoke --local`'s validation, when the record of the last passing one does not stand."""
    # Imported here, only then: the YAML parser, the schemas and the checks are imports (start-up time) that a
    # warm `invoke --local` with a standing record never needs.
    from fnctl.runtimes.validation import validate_project

    return validate_project(project, paths)


def _ensure_image(
    project: str, function: str, source: Path, base_image: str, on_line: Callable[[str], None], *, runtime_name: str
) -> ImageRef:
    """`invoke --local`'s image, when no kept-warm instance answered."""
    # Imported here, only then: image hashing and building (dependencies, the base's platform, the build
    # context's archive) are imports (start-up time) that a kept-warm invocation never needs.
    from fnctl.engine.images import ensure_image

    return ensure_image(project, function, source, base_image, on_line, runtime_name=runtime_name)


def _state_location(text: str | None) -> StateLocation | None:
    """--data-from's state store: a postgresql:// URL, or a path (`~` expanded)."""
    if text is None:
        return None
    # imported when --data-from is given: the other invocations skip it (start-up time)
    from fnctl.state.location import is_postgres_url, parse

    return parse(text if is_postgres_url(text) else str(Path(text).expanduser()))


def _open_local_data(
    project: Project, data_from: StateLocation | None, state: DesiredState | None
) -> AbstractContextManager[DataCalls]:
    """`context.db` of `invoke --local`, opened on the handler's first call."""
    # Imported here, when a handler calls context.db: the data plane is ~70 ms of imports (start-up time)
    # that an invocation making no call never needs.
    from fnctl.commands.localdata import LocalData

    return LocalData.open(project, data_from, state)


sandbox_app = typer.Typer(
    help="Inspect the sandboxes of running instances.\n\nExample: fnctl sandbox check hello", no_args_is_help=True
)
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("check")
def sandbox_check(
    name: Annotated[Optional[str], typer.Argument(help="Only this function's instances.")] = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Print each hardening property of every running instance as pass/fail; exit 1 on any fail.

    With engine = "swarm" in fnctl.toml: the Swarm tasks of this machine's node (swarm.node), with the rows a
    service can hold (docs/swarm.md).

    Example: fnctl sandbox check hello
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.engine.inspection import check_instances
    from fnctl.engine.swarm import NodeAgent
    from fnctl.manifest.project import load_project

    project = load_project()
    if project.engine == "swarm":  # the task containers of this machine's node, from its own engine
        reports = NodeAgent(project.swarm.node, project.swarm.instance_root).check(project.name, name)
    else:
        reports = check_instances(project.name, name)
    render_sandbox_checks(reports, output)
    failed = not reports or any(not c.ok for r in reports for c in r.checks)
    raise typer.Exit(ExitCode.FAILED if failed else ExitCode.OK)
