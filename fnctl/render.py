"""Rendering of results: rich on a terminal, plain lines otherwise, JSON with `-o json`. Core code never prints."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from fnctl.validate import ValidationResult


class Output(StrEnum):
    TEXT = "text"
    JSON = "json"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="Output format.", case_sensitive=False)]


@cache
def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


@cache
def err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def render_validation(result: ValidationResult, output: Output) -> None:
    state = result.state
    counts = {"functions": len(state.functions), "triggers": len(state.triggers),
              "views": len(state.views), "policies": len(state.policies)}
    if output is Output.JSON:
        print_json({"valid": result.ok, "files": len(result.files), **counts,
                    "errors": [d.as_json() for d in result.diagnostics]})
        return
    for diagnostic in result.diagnostics:
        err_console().print(diagnostic.render(), markup=False)
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    if result.ok:
        console().print(f"[green]valid[/green]: {len(result.files)} files, {summary}")
    else:
        n = len(result.diagnostics)
        err_console().print(f"[red]invalid[/red]: {n} problem{'s' if n != 1 else ''} in {len(result.files)} files")
