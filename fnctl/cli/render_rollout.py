"""Rendering of rollouts: their state, their events (plain lines, or NDJSON for CI logs), a live view on a
terminal, and the A/B test report."""

from __future__ import annotations

import json
import sys
import time
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fnctl.cli.render import _line, _plain, err_console, print_json
from fnctl.commands.rollouts import event_json, snapshot_json

if TYPE_CHECKING:
    from fnctl.commands.rollouts import Snapshot
    from fnctl.rollout.abstats import AbReport
    from fnctl.state.rolloutstore import RolloutEventRow, RolloutRow


class RolloutOutput(StrEnum):
    TEXT = "text"
    JSON = "json"
    NDJSON = "ndjson"  # one JSON object per event as it happens, then the final state: for CI logs


RolloutOutputOpt = Annotated[
    RolloutOutput,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        help="Output format: text, json (the final state), ndjson (every event as it happens, then the final state).",
    ),
]


def print_event(event: RolloutEventRow, row: RolloutRow, output: RolloutOutput) -> None:
    if output is RolloutOutput.NDJSON:
        sys.stdout.write(json.dumps(event_json(event, row), default=str) + "\n")
        sys.stdout.flush()
    elif output is RolloutOutput.TEXT:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
        _line(f"{stamp} {row.function}: {event.message}")


def summary(snapshot: Snapshot) -> list[str]:
    """The state of one rollout in a few plain lines."""
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.rollout.machine import weights_text

    record, row = snapshot.record, snapshot.row
    where = (
        f"step {record.step + 1}/{len(snapshot.stages)} ({snapshot.stages[record.step].label})"
        if record.step < len(snapshot.stages)
        else "all steps done"
    )
    lines = [
        f"{row.function}: {row.strategy} of revision {row.canary} over revision {record.stable}: "
        f"{record.state.value}" + ("" if record.done or record.state.value == "completed" else f" at {where}"),
        f"  traffic: {weights_text(record.weights)}",
    ]
    if snapshot.last is not None:
        lines.append(f"  last analysis: {snapshot.last.message}")
    if record.reason:
        lines.append(f"  reason: {record.reason}")
    if record.state.value == "paused":
        lines.append(f"  waiting for `fnctl promote {row.function}` (or `fnctl abort {row.function}`)")
    if record.state.value == "completed" and not record.scaled_down and record.scale_down_at:
        lines.append(
            "  old revisions stay warm until " + time.strftime("%H:%M:%S", time.localtime(record.scale_down_at))
        )
    return lines


def render_snapshots(snapshots: list[Snapshot], output: RolloutOutput) -> None:
    if output is RolloutOutput.JSON:
        print_json(snapshot_json(snapshots[0]) if len(snapshots) == 1 else [snapshot_json(s) for s in snapshots])
        return
    if output is RolloutOutput.NDJSON:
        for snapshot in snapshots:
            sys.stdout.write(json.dumps(snapshot_json(snapshot), default=str) + "\n")
        return
    for snapshot in snapshots:
        for line in summary(snapshot):
            _line(line)


class LiveView:
    """On a terminal: a table of the rollouts (step, weights, the latest analysis) redrawn as they move.
    Elsewhere: nothing (events are printed as lines instead)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and not _plain(stderr=True) and err_console().is_terminal
        self._live: Any = None

    def __enter__(self) -> LiveView:
        if self.enabled:
            # rich's renderer only when it draws: `fnctl --help` and plain output never load it
            from rich.live import Live

            self._live = Live(console=err_console(), refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, snapshots: list[Snapshot]) -> None:
        if self._live is None:
            return
        # rich's renderer only when it draws: `fnctl --help` and plain output never load it
        from rich.table import Table

        table = Table(box=None, title="rollouts", title_justify="left")
        for column in ("function", "state", "step", "traffic", "latest analysis"):
            table.add_column(column)
        for snapshot in snapshots:
            lines = summary(snapshot)
            record = snapshot.record
            step = f"{min(record.step + 1, len(snapshot.stages))}/{len(snapshot.stages)}"
            table.add_row(
                snapshot.row.function,
                record.state.value,
                step,
                lines[1].split(": ", 1)[1],
                snapshot.last.message.split(": ", 2)[-1] if snapshot.last else "",
            )
        self._live.update(table)


def render_abtest(report: AbReport, output: RolloutOutput, function: str) -> None:
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.rollout.abstats import report_to_json

    if output is not RolloutOutput.TEXT:
        print_json({"function": function, **report_to_json(report)})
        return

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    _line(
        f"{function}: A/B test at {report.confidence:.0%} confidence (at least {report.min_samples} requests per variant)"
    )
    _line(
        f"  {'variant':<12} {'revision':>8} {'requests':>9} {'errors':>7} {'error %':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    )
    for v in report.variants:
        _line(
            f"  {v.name:<12} {v.revision:>8} {v.requests:>9} {v.errors:>7} {v.error_rate:>8.2%} {ms(v.p50_ms):>8} "
            f"{ms(v.p95_ms):>8} {ms(v.p99_ms):>8}"
        )
    for c in report.comparisons:
        _line(f"  {c.variant} vs {c.control}: {c.verdict}")
