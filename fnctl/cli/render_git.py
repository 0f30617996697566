"""Output of the GitOps commands: a sync's report, pull mode's errors, and the hook's lines to the pusher."""

from __future__ import annotations

import json
from typing import Any

from fnctl.cli.render import Output, _line, print_json
from fnctl.cli.render_deploy import apply_json, render_apply
from fnctl.commands.sync import SyncReport
from fnctl.errors import FnctlError


def sync_json(report: SyncReport) -> dict[str, Any]:
    commit = report.commit
    return {
        "type": "sync",
        "repo": report.repo,
        "commit": {"sha": commit.sha, "author": commit.author, "subject": commit.subject},
        "decision": report.decision.value,
        "timings": {k: round(v, 3) for k, v in report.timings.items()},
        "apply": apply_json(report.apply) if report.apply is not None else None,
    }


def render_sync(report: SyncReport, output: Output, *, one_line: bool = False) -> None:
    """`one_line`: the JSON on one line (pull mode prints one object per line, as its errors are)."""
    if output is Output.JSON and one_line:
        print(json.dumps(sync_json(report), default=str), flush=True)
    elif output is Output.JSON:
        print_json(sync_json(report))
    elif report.apply is not None:
        render_apply(report.apply, output)


def render_watch_error(error: FnctlError, output: Output) -> None:
    """Pull mode goes on after an error (the next commit may fix it): said once, not every interval."""
    if output is Output.JSON:
        print(json.dumps({"type": "error", "exitCode": int(error.exit_code), "message": error.message}))
    else:
        _line(f"error: {error.message}", stderr=True, styled=f"[red]error:[/red] {error.message}")


def hook_line(text: str) -> None:
    """A line the pusher sees after `remote: `, on stdout so that it interleaves with the progress in order."""
    print(f"fnctl: {text}", flush=True)
