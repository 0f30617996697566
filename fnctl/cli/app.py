"""The command line: parse arguments, call one core function, render its result. No logic lives here.

Heavy libraries (docker, git, the HTTP stack) are imported inside the commands that need them, so that
`fnctl --help` stays fast.
"""

from __future__ import annotations

import copy
import sys
from typing import Annotated, NoReturn

import typer

from fnctl import __version__
from fnctl.cli import audit, data, deploy, develop, events, git, keys, rollout, serve, triggers
from fnctl.cli.render import console, err_console
from fnctl.errors import ExitCode, FnctlError

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


def _version(value: bool) -> None:
    if value:
        console().print(f"fnctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    global _debug
    _debug = debug


# Each part of the command line registers its commands on an app of its own; they are merged here, in the
# order `fnctl --help` lists them.
for part in (develop, deploy, rollout, git, keys, data, events, triggers, audit, serve):
    app.add_typer(part.app)


def _app_for(args: list[str]) -> typer.Typer:
    """`app`, or for a command named on the command line a copy of it holding that command alone: typer turns
    the signature of every command into click parameters before it runs one, ~50 ms for all of fnctl's."""
    position = 1 if args[:1] == ["--debug"] else 0  # the root's only option that comes before a command
    name = args[position] if len(args) > position else ""
    if not name or name.startswith("-"):
        return app  # the root's help, --version or a usage error: all the commands are needed
    # the parts merged in by add_typer without a name (typer leaves a placeholder, not a str, as their name)
    parts = [g.typer_instance for g in app.registered_groups if not isinstance(g.name, str) and g.typer_instance]
    commands = [c for a in (app, *parts) for c in a.registered_commands if _command_name(c) == name]
    groups = [g for a in (app, *parts) for g in a.registered_groups if g.name == name]
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
        err_console().print(
            f"[red]internal error (a bug in fnctl):[/red] {type(exc).__name__}: {exc}\n"
            "Run again with --debug for the traceback.",
            highlight=False,
        )
        sys.exit(ExitCode.INTERNAL)
    sys.exit(code if isinstance(code, int) else ExitCode.OK)
