"""Progress of a long data command (import, export): a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fnctl.commands.datatransfer import OnProgress


class Meter:
    """A progress bar on a terminal (stderr), else a plain line every ~10% (or every 10 batches)."""

    def __init__(self, verb: str, unit: str) -> None:
        self.verb, self.unit = verb, unit
        self.bar: Any = None
        self.calls = 0
        self.shown = -1

    def __enter__(self) -> OnProgress:
        if sys.stderr.isatty():
            # rich.progress only when a bar is drawn: a pipe or a CI log never pays for it
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

            self.bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                TaskProgressColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.verb, total=None)
        return self.update

    def update(self, done: int, total: int) -> None:
        self.calls += 1
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total or None)
            return
        step = done * 10 // total if total else self.calls // 10
        if step != self.shown:
            self.shown = step
            sys.stderr.write(f"{self.verb}: {done}{f' of {total}' if total else ''} {self.unit}\n")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
