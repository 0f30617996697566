"""Rendering of diffs, plans, apply reports, status and history: rich tables on a terminal, plain lines
otherwise, JSON with `-o json`."""

from __future__ import annotations

import json
import socket
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from fnctl.cli.render import Output, console, err_console, print_json
from fnctl.cli.render_rollout import summary
from fnctl.commands.deployreport import ApplyReport
from fnctl.commands.functions import FunctionStatus, age, revision_json, status_json
from fnctl.commands.rollouts import snapshot_json
from fnctl.deploy.diff import Change, ChangeKind, CollectionChange, LiveState
from fnctl.deploy.lock import Holder, waiting_words
from fnctl.deploy.plan import change_to_json, collection_change_to_json
from fnctl.rollout.timeline import timeline_from_json, timeline_lines
from fnctl.state.revisions import Revision

_COLOURS = {
    ChangeKind.CREATE: "green",
    ChangeKind.UPDATE: "yellow",
    ChangeKind.DELETE: "red",
    ChangeKind.UNCHANGED: "dim",
}
_SIGNS = {ChangeKind.CREATE: "+", ChangeKind.UPDATE: "~", ChangeKind.DELETE: "-", ChangeKind.UNCHANGED: "="}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def render_diff(
    changes: list[Change],
    live: LiveState,
    output: Output,
    *,
    prune: bool = False,
    collections: list[CollectionChange] | None = None,
) -> None:
    collections = collections or []
    if output is Output.JSON:
        # `collections` only in projects that have some: the JSON other projects' CI reads keeps its shape.
        print_json(
            {
                "changes": [change_to_json(c) for c in changes],
                "orphans": list(live.orphans),
                "prune": prune,
                **({"collections": [collection_change_to_json(c) for c in collections]} if collections else {}),
            }
        )
        return
    out = console()
    for change in changes:
        colour, sign = _COLOURS[change.kind], _SIGNS[change.kind]
        where = f" (live revision {change.live_revision})" if change.live_revision else ""
        if change.kind is ChangeKind.DELETE and not prune:
            where += ": not in the manifests; kept unless --prune"
        out.print(f"[{colour}]{sign} {change.function}: {change.kind.value}{where}[/{colour}]")
        if change.kind is ChangeKind.UPDATE or (change.kind is ChangeKind.CREATE and out.is_terminal):
            for field in change.fields:
                out.print(
                    f"    {field.path}: [red]{_short(field.old)}[/red] → [green]{_short(field.new)}[/green]",
                    markup=True,
                    highlight=False,
                )
        for drift in change.drift:
            out.print(f"    [magenta]drift: {drift.kind.value}: {drift.detail}[/magenta]")
    for orphan in live.orphans:
        out.print(
            f"[magenta]drift: orphan container {orphan[:12]} (labelled for this project, unknown to the store)[/magenta]"
        )
    for coll in collections:
        colour, sign = _COLOURS[coll.kind], _SIGNS[coll.kind]
        held = f"{coll.documents} document{'s' if coll.documents != 1 else ''}"
        where = ""
        if coll.kind is ChangeKind.DELETE:
            where = f" ({held}): not in the manifests; " + (
                "kept unless --prune" if not prune else "dropped with --prune" + (" --force" if coll.documents else "")
            )
        out.print(f"[{colour}]{sign} collection {coll.name}: {coll.kind.value}{where}[/{colour}]", highlight=False)
        if coll.kind is ChangeKind.UPDATE or (coll.kind is ChangeKind.CREATE and out.is_terminal):
            for field in coll.fields:
                out.print(
                    f"    {field.path}: [red]{_short(field.old)}[/red] → [green]{_short(field.new)}[/green]",
                    markup=True,
                    highlight=False,
                )
    counts = {k: sum(1 for c in changes if c.kind is k) for k in ChangeKind}
    line = ", ".join(f"{n} {k.value}" for k, n in counts.items())
    if collections:
        kinds = {k: sum(1 for c in collections if c.kind is k) for k in ChangeKind}
        line += "; collections: " + ", ".join(f"{n} {k.value}" for k, n in kinds.items())
    out.print(line)


def render_plan(document: dict[str, Any], written: Path | None) -> None:
    out = console()
    if not document["steps"]:
        out.print("nothing to do: the live state matches the manifests")
    for index, step in enumerate(document["steps"], 1):
        name = step.get("collection") or step["function"]
        target = f"{name}: " if name else ""
        out.print(f"{index:>3}. {target}{step['kind']}" + (f" ({step['detail']})" if step["detail"] else ""))
    for name, data in document.get("timelines", {}).items():  # a plan file from an older fnctl has none
        found = timeline_from_json(data)
        out.print(f"[bold]{name}[/bold]: {found.strategy.value} timeline", highlight=False)
        for line in timeline_lines(found):
            out.print(f"    {line}", markup=False, highlight=False)
    if written is not None:
        out.print(f"plan written to {written}; apply it with `fnctl apply {written}`")


def render_apply(report: ApplyReport, output: Output, *, one_line: bool = False) -> None:
    """`one_line`: the JSON on one line (the last of an NDJSON stream)."""

    if output is Output.JSON:
        document = apply_json(report)
        if one_line:
            print(json.dumps(document, default=str))
        else:
            print_json(document)
        return
    for line in report.recovered:
        err_console().print(f"[yellow]recovered:[/yellow] {line}", highlight=False)
    if not report.outcomes:
        console().print("no changes: the live state matches the manifests")
    for outcome in report.outcomes:
        mark = "[green]✓[/green]" if outcome.ok else "[red]✗[/red]"
        console().print(f"{mark} {outcome.function}: {outcome.action}: {outcome.message}", highlight=False)
        if outcome.detail:
            err_console().print(outcome.detail, markup=False)
    for snapshot in report.rollouts:
        for line in summary(snapshot):
            console().print(line, markup=False, highlight=False)


def apply_json(report: ApplyReport) -> dict[str, Any]:
    return {
        "type": "apply",
        "ok": not report.failed,
        "exitCode": int(report.exit_code),
        "recovered": report.recovered,
        "results": [
            {
                "function": o.function,
                "action": o.action,
                "ok": o.ok,
                "revision": o.revision,
                "message": o.message,
                "detail": o.detail,
                "kind": o.kind,
            }
            for o in report.outcomes
        ],
        "rollouts": [snapshot_json(s) for s in report.rollouts],
    }


def render_status(statuses: list[FunctionStatus], output: Output) -> None:
    if output is Output.JSON:
        print_json(status_json(statuses))
        return
    if not statuses:
        console().print("nothing deployed")
        return
    # rich's renderer only when it draws: `fnctl --help` and plain output never load it
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    for column in ("function", "revision", "weights", "instances", "last deploy", "commit"):
        table.add_column(column)
    for s in statuses:
        serving = [i for i in s.instances if i.orphan is None]
        healthy = sum(1 for i in serving if i.healthy)
        colour = "green" if serving and healthy == len(serving) else "red" if serving else "dim"
        weights = ", ".join(f"r{r}: {w}%" for r, w in sorted(s.weights.items()))
        who = f" by {s.last_deploy_by}" if s.last_deploy_by else ""
        commit = f"{s.last_commit[:8]} {escape((s.last_subject or '')[:40])}" if s.last_commit else "-"
        counts = f"[{colour}]{healthy}/{len(serving)} healthy[/{colour}]" if s.deployed else ""
        for orphan in (i for i in s.instances if i.orphan is not None):  # each one, with why: to be removed
            counts += ("\n" if counts else "") + (
                f"[magenta]orphan {escape(orphan.container or orphan.id)} "
                f"({orphan.state}): {escape(orphan.orphan or '')}[/magenta]"
            )
        name = s.name if s.deployed else f"{escape(s.name)} [magenta](not deployed)[/magenta]"
        table.add_row(
            name,
            str(s.live_revision) if s.deployed else "-",
            weights + (f"\n[yellow]{s.rollout}[/yellow]" if s.rollout else ""),
            counts,
            f"{age(s.last_deploy)}{who}" if s.deployed else "-",
            commit,
        )
    console().print(table)
    if any(i.orphan is not None for s in statuses for i in s.instances):
        console().print(
            "orphans: fnctl's containers that serve no routed revision (the gateway's for pinned "
            "requests stop once idle); the next `fnctl apply` removes them"
        )


def render_history(revisions: list[Revision], output: Output) -> None:
    if output is Output.JSON:
        print_json([revision_json(r) for r in revisions])
        return
    # rich's renderer only when it draws: `fnctl --help` and plain output never load it
    from rich.table import Table

    table = Table()
    for column in ("revision", "status", "created", "by", "commit", "reason"):
        table.add_column(column, overflow="fold")
    for r in revisions:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
        reason = (r.reason or "").splitlines()[0] if r.reason else ""
        table.add_row(str(r.number), r.status.value, created, r.created_by, (r.git_commit or "")[:8], reason)
    console().print(table)


class _Waiting:
    """The spinner's text while waiting for the lock, worked out at each refresh so that the holder's age
    and the time waited keep counting."""

    def __init__(self, holder: Holder, timeout: float) -> None:
        self.holder, self.timeout, self.started = holder, timeout, time.monotonic()

    def __rich__(self) -> str:
        # rich's renderer only when it draws: `fnctl --help` and plain output never load it
        from rich.markup import escape

        waited = int(time.monotonic() - self.started)
        return escape(
            f"{waiting_words(self.holder, time.time(), socket.gethostname())}… "
            f"waited {waited}s of {self.timeout:g}s (--lock-timeout)"
        )


def lock_waiting(holder: Holder, timeout: float) -> AbstractContextManager[object]:
    """Shown on stderr while a command waits for the lock: a spinner counting the wait on a terminal, one
    line otherwise (logs and CI output must not fill with progress)."""
    if err_console().is_terminal:
        return err_console().status(_Waiting(holder, timeout))
    words = waiting_words(holder, time.time(), socket.gethostname())
    sys.stderr.write(f"{words}… (waiting up to {timeout:g}s, --lock-timeout)\n")
    sys.stderr.flush()
    return nullcontext()
