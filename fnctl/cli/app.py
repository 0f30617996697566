"""The command line: parse arguments, call one core function, render its result. No logic lives here.

Heavy libraries (docker, git, the HTTP stack) are imported inside the commands that need them, so that
`fnctl --help` stays fast; and a command named on the command line imports only the part of the CLI that
defines it (`PARTS`): importing every part costs ~0.15 s of CPU (the deploy part alone pulls in the executor).
"""

from __future__ import annotations

import copy
import importlib
import sys
from functools import cache
from types import ModuleType
from typing import Annotated, NoReturn

import typer

from fnctl import __version__
from fnctl.cli.render import console, err_console
from fnctl.cli.slowchecks import install_on_first_use
from fnctl.errors import ExitCode, FnctlError

# Each part of the command line (a module of fnctl.cli) registers its commands on an app of its own, and
# they are merged in this order, the order `fnctl --help` lists them. The names each part defines are written
# here so that a command's part is found without importing the others (tests/cli/test_cli.py checks them).
PARTS: dict[str, tuple[str, ...]] = {
    "develop": ("validate", "init", "invoke", "sandbox"),
    "deploy": ("diff", "plan", "apply", "rollback", "delete", "status", "history", "get", "logs"),
    "rollout": ("promote", "abort", "retry", "rollout", "abtest"),
    "git": ("sync", "hook"),
    "keys": ("keys",),
    "data": ("data",),
    "events": ("view", "events"),
    "triggers": ("triggers", "enable", "run"),
    "audit": ("audit",),
    "state": ("state",),
    "serve": ("serve",),
}

root = typer.Typer(
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


@root.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    global _debug
    _debug = debug
    install_on_first_use()  # the manifest checks' jsonschema and croniter, imported only if needed


def _part(name: str) -> ModuleType:
    # Imported when named (start-up time: see the module's docstring).
    return importlib.import_module(f"fnctl.cli.{name}")


@cache
def full_app() -> typer.Typer:
    """The root with every part's commands: for the root's help, --version, a usage error, and tests."""
    whole = copy.copy(root)
    whole.registered_groups = list(root.registered_groups)
    for name in PARTS:
        whole.add_typer(_part(name).app)
    return whole


def __getattr__(name: str) -> typer.Typer:
    """`fnctl.cli.app.app`, the whole command line, built on first use (tests drive it with CliRunner)."""
    if name == "app":
        return full_app()
    raise AttributeError(name)


def _app_for(args: list[str]) -> typer.Typer:
    """The whole app, or for a command named on the command line the root holding that command alone, its
    part alone imported: typer turns the signature of every command into click parameters before it runs
    one, ~50 ms for all of fnctl's."""
    position = 1 if args[:1] == ["--debug"] else 0  # the root's only option that comes before a command
    name = args[position] if len(args) > position else ""
    part = next((p for p, names in PARTS.items() if name in names), None)
    if part is None:
        return full_app()  # the root's help, --version or a usage error: all the commands are needed
    defined = _part(part).app
    commands = [c for c in defined.registered_commands if _command_name(c) == name]
    groups = [g for g in defined.registered_groups if g.name == name]
    only = copy.copy(root)  # `root` itself is left as it is: tests run many commands in one process
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
