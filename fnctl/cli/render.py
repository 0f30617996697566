"""Rendering of results: rich on a terminal, plain lines otherwise, JSON with `-o json`. Core code never prints."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from fnctl.errors import FnctlError
    from fnctl.manifest.validate import ValidationResult


class Output(StrEnum):
    TEXT = "text"
    JSON = "json"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="Output format.", case_sensitive=False)]


@cache
def console() -> Console:
    from rich.console import Console  # imported when first needed: `fnctl validate` in CI never needs it

    return Console(highlight=False, soft_wrap=True)


@cache
def err_console() -> Console:
    # rich's renderer only when it draws: `fnctl --help` and plain output never load it
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _plain(stderr: bool) -> bool:
    """True when the stream is not a terminal: rich would print the text as is there, so rich (~40 ms of
    imports) is not loaded at all."""
    stream: TextIO = sys.stderr if stderr else sys.stdout
    try:
        return not stream.isatty() and "FORCE_COLOR" not in os.environ
    except (AttributeError, ValueError):
        return True


def _line(text: str, *, stderr: bool = False, styled: str | None = None) -> None:
    """One line: as is when the stream is not a terminal, else through rich, with `styled` (rich markup)
    when given."""
    if _plain(stderr):
        (sys.stderr if stderr else sys.stdout).write(text + "\n")
    else:
        (err_console() if stderr else console()).print(styled or text, markup=styled is not None, emoji=False)


def _rule(title: str = "") -> None:
    """A horizontal rule on stderr, with `title` in its middle."""
    if not _plain(stderr=True):
        err_console().rule(title, style="dim")
        return
    utf = (getattr(sys.stderr, "encoding", None) or "").lower().replace("-", "") == "utf8"
    bar, width = ("\u2500" if utf else "-"), 80  # rich's width for a stream that is not a terminal
    label = f" {title} " if title else ""
    left = (width - len(label)) // 2
    sys.stderr.write(bar * left + label + bar * (width - left - len(label)) + "\n")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def render_validation(result: ValidationResult, output: Output) -> None:
    state = result.state
    counts = {
        "functions": len(state.functions),
        "triggers": len(state.triggers),
        "views": len(state.views),
        "policies": len(state.policies),
    }
    if state.collections:  # counted only where there are some: other projects' output keeps its shape
        counts["collections"] = len(state.collections)
    if output is Output.JSON:
        print_json(
            {
                "valid": result.ok,
                "files": len(result.files),
                **counts,
                "errors": [d.as_json() for d in result.diagnostics],
                # only when there are some: the output of projects without any keeps its shape
                **({"warnings": [d.as_json() for d in result.warnings]} if result.warnings else {}),
            }
        )
        return
    for diagnostic in result.diagnostics:
        _line(diagnostic.render(), stderr=True)  # verbatim, never markup or emoji: `[b]`, `:smile:` are user text
    for diagnostic in result.warnings:
        _line(f"warning: {diagnostic.render()}", stderr=True)
    files = _count(len(result.files), "file", "files")
    if result.ok:
        singular = {
            "functions": "function",
            "triggers": "trigger",
            "views": "view",
            "policies": "policy",
            "collections": "collection",
        }
        summary = ", ".join(_count(n, singular[k], k) for k, n in counts.items())
        _line(f"valid: {files}, {summary}", styled=f"[green]valid[/green]: {files}, {summary}")
    else:
        problems = _count(len(result.diagnostics), "problem", "problems")
        _line(f"invalid: {problems} in {files}", stderr=True, styled=f"[red]invalid[/red]: {problems} in {files}")


def _count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


class Progress:
    """Live progress of long work: a spinner with the latest line on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool = False) -> None:
        self._status: Any = None
        self._quiet = quiet

    def __enter__(self) -> Progress:
        # Not a terminal: plain lines, without loading rich (the kept-warm invoke path never prints one)
        if not self._quiet and not _plain(stderr=True) and err_console().is_terminal:
            self._status = err_console().status("working")
            self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(None, None, None)

    def __call__(self, line: str) -> None:
        if self._status is not None:
            self._status.update(line[:120])
        elif not self._quiet:
            _line(line, stderr=True)


def render_outcome(outcome: Any, *, output: Output, show_logs: bool, warm: bool) -> None:
    """An invocation's result (stdout) and its logs, duration and error (stderr)."""
    if output is Output.JSON:
        print_json(
            {
                "ok": outcome.ok,
                "result": outcome.result,
                "error": None
                if outcome.ok
                else {"kind": outcome.failure.value, "message": outcome.message, "traceback": outcome.traceback},
                "logs": outcome.logs,
                "durationMs": round(outcome.duration_ms, 3),
                "warm": warm,
            }
        )
        return
    if show_logs and outcome.logs:
        _rule("logs")
        _line(outcome.logs.rstrip("\n"), stderr=True)
        _rule()
    if outcome.ok:
        if _plain(stderr=False):
            sys.stdout.write(json.dumps(outcome.result) + "\n")
        else:
            console().print_json(json.dumps(outcome.result))
    else:
        _error_line(f"error ({outcome.failure.value}):", outcome.message)
        if outcome.traceback:
            _line(outcome.traceback.rstrip("\n"), stderr=True)
    duration = f"{outcome.duration_ms:.1f} ms{' (warm instance)' if warm else ''}"
    _line(duration, stderr=True, styled=f"[dim]{duration}[/dim]")


def render_invoke_error(error: FnctlError) -> None:
    """`invoke -o json` when no invocation happened (the event, the build, the start or the handler's import
    failed): the same object as an invocation's, its error named by fnctl's error type."""
    print_json(
        {
            "ok": False,
            "result": None,
            "error": {"kind": "fnctl error", "type": type(error).__name__, "message": error.message,
                      "detail": error.detail},
            "logs": "",
            "durationMs": None,
            "warm": False,
        }
    )  # fmt: skip


def _error_line(prefix: str, message: str) -> None:
    """`prefix` in red on a terminal, then `message` as written (it may hold `[b]`, which is not markup)."""
    if _plain(stderr=True):
        _line(f"{prefix} {message}", stderr=True)
    else:
        # rich's renderer only when it draws: `fnctl --help` and plain output never load it
        from rich.markup import escape

        _line(f"{prefix} {message}", stderr=True, styled=f"[red]{prefix}[/red] {escape(message)}")


def render_sandbox_checks(reports: list[Any], output: Output) -> None:
    if output is Output.JSON:
        print_json(
            [
                {
                    "function": r.function,
                    "instance": r.instance,
                    "container": r.container,
                    "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in r.checks],
                }
                for r in reports
            ]
        )
        return
    if not reports:
        err_console().print("no running instances")
        return
    # rich's renderer only when it draws: `fnctl --help` and plain output never load it
    from rich.table import Table

    for report in reports:
        table = Table(title=f"{report.function} · {report.container}", title_justify="left")
        table.add_column("property")
        table.add_column("result")
        table.add_column("detail", overflow="fold")
        for check in report.checks:
            table.add_row(check.name, "[green]pass[/green]" if check.ok else "[red]FAIL[/red]", check.detail)
        console().print(table)
