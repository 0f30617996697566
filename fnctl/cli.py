"""The command line: parse arguments, call one core function, render its result. No logic lives here.

Heavy libraries (docker, git, the HTTP stack) are imported inside the commands that need them, so that
`fnctl --help` stays fast.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from fnctl import __version__
from fnctl.errors import ExitCode, FnctlError
from fnctl.render import Output, OutputOpt, console, err_console

app = typer.Typer(
    name="fnctl",
    help="Validate, diff and roll out stored functions as hardened Docker sandboxes.\n\n"
    "Example: fnctl validate manifests/",
    no_args_is_help=True,
    add_completion=False,
    # Rich help costs ~0.1 s of imports: worth it on a terminal, not in a pipe or a CI log.
    rich_markup_mode="rich" if sys.stdout.isatty() else None,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
_debug = False

PathsArg = Annotated[Optional[list[Path]], typer.Argument(help="Manifest files or directories (default: the project's manifests).", show_default=False)]


def _version(value: bool) -> None:
    if value:
        console().print(f"fnctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    global _debug
    _debug = debug


@app.command()
def validate(paths: PathsArg = None, output: OutputOpt = Output.TEXT) -> None:
    """Check manifests against the schemas and the semantic rules; report every problem at once.

    Exit 0 when valid, 2 when not. Each problem reads FILE:LINE:COL: $.json.path: message.

    Example: fnctl validate manifests/ -o json
    """
    from fnctl.project import find_root, load_project
    from fnctl.render import render_validation
    from fnctl.validate import validate_paths

    # The project (its root, its defaults) is the one around the first path given, not the working directory's.
    hint = paths[0] if paths and find_root(paths[0]) else None
    result = validate_paths(load_project(hint), paths)
    render_validation(result, output)
    raise typer.Exit(ExitCode.OK if result.ok else ExitCode.BAD_INPUT)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the project.")] = Path("."),
    name: Annotated[Optional[str], typer.Option(help="Project name (default: the directory's name).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Write even into a directory that has files.")] = False,
) -> None:
    """Scaffold a project: fnctl.toml, one Python function, its manifest and an HTTP trigger.

    Example: fnctl init my-project && cd my-project && fnctl validate
    """
    from fnctl.scaffold import scaffold

    created = scaffold(directory, name, force=force)
    for path in created:
        console().print(f"created {path}")
    console().print(f"\nNext: cd {directory} && fnctl validate")


@app.command()
def invoke(
    target: Annotated[str, typer.Argument(metavar="NAME|PATH", help="A function name, or a manifest file with one function.")],
    local: Annotated[bool, typer.Option("--local", help="Build and run the function in a fresh local sandbox.")] = False,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="The event: JSON, or @file.json; default: stdin when piped, else {}.")] = None,
    logs: Annotated[bool, typer.Option("--logs", help="Print the invocation's captured output.")] = False,
    keep_warm: Annotated[bool, typer.Option("--keep-warm", help="Keep the sandbox for the next --local call.")] = False,
    revision: Annotated[Optional[int], typer.Option("--revision", help="Invoke this revision, even one with 0% of traffic.")] = None,
    state: Annotated[Optional[Path], typer.Option("--state", help="State store of deployed functions.", show_default=False)] = None,
    key: Annotated[Optional[str], typer.Option("--key", envvar="FNCTL_KEY", help="API key for the gateway (or $FNCTL_KEY).", show_default=False)] = None,
    direct: Annotated[bool, typer.Option("--direct", help="Go straight to an instance even when the gateway is running.")] = False,
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
    """
    from fnctl.events import read_event
    from fnctl.local import invoke_local
    from fnctl.project import load_project
    from fnctl.render import Progress, render_outcome

    event, size = read_event(data)
    if not local:
        from fnctl.gatewayclient import invoke_deployed

        outcome, warm = invoke_deployed(load_project(), state, target, event, size, revision, key=key,
                                        logs=logs, direct=direct)
        render_outcome(outcome, output=output, show_logs=logs, warm=warm)
        raise typer.Exit(ExitCode.OK if outcome.ok else ExitCode.FAILED)
    with Progress(quiet=output is Output.JSON) as progress:
        result = invoke_local(load_project(), target, event, size, keep_warm=keep_warm, on_progress=progress)
    render_outcome(result.outcome, output=output, show_logs=logs, warm=result.warm)
    raise typer.Exit(ExitCode.OK if result.outcome.ok else ExitCode.FAILED)


sandbox_app = typer.Typer(help="Inspect the sandboxes of running instances.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("check")
def sandbox_check(
    name: Annotated[Optional[str], typer.Argument(help="Only this function's instances.")] = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Print each hardening property of every running instance as pass/fail; exit 1 on any fail.

    Example: fnctl sandbox check hello
    """
    from fnctl.inspection import check_instances
    from fnctl.project import load_project
    from fnctl.render import render_sandbox_checks

    reports = check_instances(load_project().name, name)
    render_sandbox_checks(reports, output)
    failed = not reports or any(not c.ok for r in reports for c in r.checks)
    raise typer.Exit(ExitCode.FAILED if failed else ExitCode.OK)


from fnctl import cli_audit, cli_deploy, cli_git, cli_keys, cli_rollout, cli_serve  # noqa: E402,F401  (register their commands on `app`)


def _app_for(args: list[str]) -> typer.Typer:
    """`app`, or for a command named on the command line a copy of it holding that command alone: typer turns
    the signature of every command into click parameters before it runs one, ~50 ms for all of fnctl's."""
    position = 1 if args[:1] == ["--debug"] else 0  # the root's only option that comes before a command
    name = args[position] if len(args) > position else ""
    if not name or name.startswith("-"):
        return app  # the root's help, --version or a usage error: all the commands are needed
    commands = [c for c in app.registered_commands if _command_name(c) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if len(commands) + len(groups) != 1:
        return app  # an unknown name: click's error lists the commands, and suggests the closest
    only = copy.copy(app)  # `app` itself is left whole: tests run many commands in one process
    only.registered_commands, only.registered_groups = commands, groups
    return only


def _command_name(command: typer.models.CommandInfo) -> str:
    """The name typer gives the command (its function's, with dashes, unless named)."""
    callback = command.callback
    return command.name or (callback.__name__.lower().replace("_", "-") if callback else "")


def main() -> NoReturn:
    """Console entry point: maps fnctl's errors to the exit codes of the CLI contract."""
    try:
        code = _app_for(sys.argv[1:])(standalone_mode=False)
    except FnctlError as exc:
        err_console().print(f"[red]error:[/red] {exc.message}", highlight=False)
        if exc.detail:
            err_console().print(exc.detail, highlight=False, markup=False)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err_console().print("interrupted")
        sys.exit(ExitCode.INTERRUPTED)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # a bug: say so, and show the traceback only when asked
        show = getattr(exc, "show", None)
        if callable(show) and hasattr(exc, "exit_code"):  # click's usage errors (typer vendors click)
            show()
            sys.exit(ExitCode.BAD_INPUT)
        if _debug:
            raise
        err_console().print(f"[red]internal error (a bug in fnctl):[/red] {type(exc).__name__}: {exc}\n"
                            "Run again with --debug for the traceback.", highlight=False)
        sys.exit(ExitCode.INTERNAL)
    sys.exit(code if isinstance(code, int) else ExitCode.OK)
