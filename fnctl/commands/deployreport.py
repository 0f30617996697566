"""What an apply or a sync came to: one outcome per function or collection changed (`FunctionOutcome`), the
report with its exit code (`ApplyReport`), and the record of which commit it made live (`record_deploy`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fnctl.commands.rollouts import Snapshot
from fnctl.deploy import executor
from fnctl.deploy.plan import Plan
from fnctl.errors import ExitCode
from fnctl.gitops import deploys


@dataclass
class FunctionOutcome:
    function: str
    action: str
    ok: bool
    revision: int | None = None
    message: str = ""
    detail: str | None = None
    kind: str = "function"  # or "collection" (then `function` holds the collection's name)


@dataclass
class ApplyReport:
    plan: Plan
    outcomes: list[FunctionOutcome] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    rollouts: list[Snapshot] = field(default_factory=list)  # as they settled (or stood, with --no-wait)

    @property
    def failed(self) -> bool:
        return any(not o.ok for o in self.outcomes)

    @property
    def exit_code(self) -> ExitCode:
        """Failed beats rolled back beats waiting at a gate (the exit codes of docs/ci.md)."""
        codes = {s.exit_code for s in self.rollouts}
        if self.failed:
            return ExitCode.FAILED
        return next((c for c in (ExitCode.ROLLED_BACK, ExitCode.WAITING) if c in codes), ExitCode.OK)


_OUTCOMES = {
    ExitCode.OK: "ok",
    ExitCode.FAILED: "failed",
    ExitCode.ROLLED_BACK: "rolled-back",
    ExitCode.WAITING: "waiting",
}


def record_deploy(
    ctx: executor.Context,
    report: ApplyReport,
    started: float,
    *,
    source: str,
    ref: str | None,
    dirty: bool,
    preview: bool = False,
) -> None:
    """Record which commit this apply or sync made live (what the next sync compares with)."""
    if ctx.git is not None:
        deploys.record(
            ctx.store,
            at=started,
            actor=ctx.actor,
            command=ctx.command,
            source=source,
            ref=ref,
            commit=ctx.git,
            dirty=dirty,
            preview=preview,
            outcome=_OUTCOMES.get(report.exit_code, "failed"),
        )
