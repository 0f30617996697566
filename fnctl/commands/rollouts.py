"""The rollout commands end to end: following rollouts until they settle (driving them whenever this
process holds the lock), `promote`, `abort`, `retry`, `rollout status` and `abtest report`.

A request (promote, abort) is an event appended to the rollout: the process driving it (this one, an
`fnctl apply` elsewhere, or `fnctl serve`) acts on it at its next look, within a fraction of a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fnctl.commands.functions import weights_of
from fnctl.commands.rollback import restart_revision
from fnctl.deploy import executor, lock, repair, rolloutdriver
from fnctl.deploy.actor import actor
from fnctl.deploy.session import Options, session
from fnctl.errors import BadInput, ExitCode, FnctlError
from fnctl.manifest.project import Project
from fnctl.manifest.stages import Stage, stages
from fnctl.rollout import machine
from fnctl.rollout.abstats import AbReport, Sample, report
from fnctl.rollout.machine import EventKind
from fnctl.rollout.record import ACTIVE, Record, State
from fnctl.state import rolloutstore
from fnctl.state.location import locate
from fnctl.state.metricstore import totals
from fnctl.state.rolloutstore import RolloutEventRow, RolloutRow
from fnctl.state.store import Store, connect

POLL = 0.2  # seconds between looks at a rollout: how soon a request from elsewhere is acted on
OnEvent = Callable[[RolloutEventRow, RolloutRow], None]
OnTick = Callable[[list["Snapshot"]], None]


class NoRollout(FnctlError):
    """The function has no rollout (under way, or at all)."""


class TimedOut(FnctlError):
    """`--timeout` passed before the rollout settled."""


@dataclass(frozen=True)
class Snapshot:
    """A rollout as status shows it."""

    row: RolloutRow
    record: Record
    stages: tuple[Stage, ...]
    last: RolloutEventRow | None = None  # the latest measurement, for the live view

    @property
    def settled(self) -> bool:
        """Nothing will happen without a request: completed, aborted, or at a gate."""
        return self.record.state in (State.COMPLETED, State.ABORTED, State.PAUSED)

    @property
    def exit_code(self) -> ExitCode:
        return {State.ABORTED: ExitCode.ROLLED_BACK, State.PAUSED: ExitCode.WAITING}.get(self.record.state, ExitCode.OK)


def event_json(event: RolloutEventRow, row: RolloutRow) -> dict[str, Any]:
    """An event as `-o ndjson` prints it (and the dashboard's event stream sends it): its keys are an interface."""
    return {
        "type": "event",
        "function": row.function,
        "rollout": row.id,
        "revision": row.canary,
        "id": event.id,
        "at": round(event.at, 3),
        "event": event.kind,
        "step": event.step + 1,
        "message": event.message,
        "data": event.data,
    }


def snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    """A rollout as `rollout status -o json` prints it (and `/v1/functions/NAME/rollout` answers)."""
    record, row = snapshot.record, snapshot.row
    stage = snapshot.stages[record.step].label if record.step < len(snapshot.stages) else None
    return {
        "type": "rollout",
        "function": row.function,
        "rollout": row.id,
        "strategy": row.strategy,
        "state": record.state.value,
        "stable": record.stable,
        "canary": record.canary,
        "step": min(record.step + 1, len(snapshot.stages)),
        "steps": len(snapshot.stages),
        "stage": stage,
        "weights": {str(r): w for r, w in record.weights.items()},
        "winner": record.winner,
        "scaleDownAt": record.scale_down_at,
        "scaledDown": record.scaled_down,
        "reason": record.reason or None,
        "startedAt": row.started_at,
        "updatedAt": row.updated_at,
        "lastMeasurement": None if snapshot.last is None else {"message": snapshot.last.message, **snapshot.last.data},
        "exitCode": int(snapshot.exit_code),
    }


def snapshot(store: Store, row: RolloutRow) -> Snapshot:
    measured = [e for e in rolloutstore.events(store, row.id) if e.kind == EventKind.MEASUREMENT.value]
    plan = stages(rolloutdriver.spec_of(store, row.function, row.canary))
    return Snapshot(row, rolloutdriver.record_of(row), plan, measured[-1] if measured else None)


@dataclass
class Follower:
    """Watches rollouts until they settle, reporting their events; drives them when it can take the lock
    (or always, with `held`: the caller holds it)."""

    project: Project
    options: Options
    ids: list[int]
    on_event: OnEvent = lambda event, row: None
    on_tick: OnTick = lambda snapshots: None
    held: executor.Context | None = None
    waiting_for: dict[int, int] = field(default_factory=dict)  # rollout → request event that must be handled
    seen: dict[int, int] = field(default_factory=dict)  # rollout → last event reported

    def run(self, timeout: float | None, *, settle: bool = True) -> list[Snapshot]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._drive()
            snapshots = self._look()
            # A finished rollout has no driver left to answer a request that raced its end.
            handled = all(
                s.record.handled >= self.waiting_for.get(s.row.id, 0)
                or s.record.state in (State.ABORTED, State.COMPLETED)
                for s in snapshots
            )
            if handled and (not settle or all(s.settled for s in snapshots)):
                return snapshots
            if deadline is not None and time.monotonic() >= deadline:
                raise TimedOut(
                    f"timed out after {timeout:g}s: "
                    + "; ".join(
                        f"{s.row.function} is {s.record.state.value} at step {s.record.step + 1}" for s in snapshots
                    )
                )
            time.sleep(POLL)

    def _drive(self) -> None:
        if self.held is not None:
            self._advance(self.held)
            return
        with lock.attempt(locate(self.project, self.options.state), "rollout: drive") as got:
            if got:
                with session(self.project, self.options, "rollout", lambda line: None, locked=True) as ctx:
                    self._advance(ctx)

    def _advance(self, ctx: executor.Context) -> None:
        for rollout_id in self.ids:
            row = rolloutstore.rollout(ctx.store, rollout_id)
            if row is not None and not rolloutdriver.record_of(row).done:
                rolloutdriver.advance(ctx, row)

    def _look(self) -> list[Snapshot]:
        with _store(self.project, self.options) as store:
            snapshots = []
            for rollout_id in self.ids:
                row = rolloutstore.rollout(store, rollout_id)
                assert row is not None
                for event in rolloutstore.events(store, rollout_id, after=self.seen.get(rollout_id, 0)):
                    self.on_event(event, row)
                    self.seen[rollout_id] = event.id
                snapshots.append(snapshot(store, row))
        self.on_tick(snapshots)
        return snapshots


@contextmanager
def _store(project: Project, options: Options) -> Iterator[Store]:
    store = connect(locate(project, options.state))
    try:
        yield store
    finally:
        store.close()


def current(store: Store, name: str, *, active: bool = False) -> RolloutRow:
    """The function's latest rollout (one under way, with `active`)."""
    row = rolloutdriver.latest(store, name)
    if row is None:
        weights_of(store, name)  # a function that does not exist is bad input, one without rollouts is not
        raise NoRollout(f"{name} has no rollout (a function's first deploy is immediate; see `fnctl history`)")
    if active and row.state not in ACTIVE:
        raise NoRollout(f"{name} has no rollout under way: its latest (revision {row.canary}) is {row.state}")
    return row


def status(
    project: Project,
    options: Options,
    name: str,
    *,
    watch: bool,
    timeout: float | None,
    on_event: OnEvent,
    on_tick: OnTick,
) -> Snapshot:
    """`fnctl rollout status`: the latest rollout; with `watch`, followed (and driven) until it settles."""
    with _store(project, options) as store:
        row = current(store, name)
        if not watch:
            return snapshot(store, row)
    follower = Follower(project, options, [row.id], on_event, on_tick, seen={row.id: 0})
    return follower.run(timeout)[0]


def request(
    project: Project,
    options: Options,
    name: str,
    kind: EventKind,
    data: dict[str, Any],
    *,
    wait: bool,
    timeout: float | None,
    on_event: OnEvent,
    on_tick: OnTick,
) -> Snapshot:
    """`fnctl promote` / `abort`: record the request, see it acted on, and (with `wait`) follow the rollout
    until it settles again."""
    who = options.actor or actor()
    with _store(project, options) as store:
        row = current(store, name, active=True)
        _check_request(row, kind, data)
        words = (
            "promote"
            + (" fully" if data.get("full") else "")
            + (f" variant {data['variant']}" if data.get("variant") else "")
            if kind is EventKind.PROMOTE_REQUESTED
            else "abort"
        )
        with store.transaction():  # the request and its audit record land together
            request_id = rolloutdriver.request(store, row.id, kind, f"{words} requested by {who}", {**data, "by": who})
            store.audit(
                actor=who,
                command="promote" if kind is EventKind.PROMOTE_REQUESTED else "abort",
                action=f"{words} requested",
                target=name,
                outcome="ok",
                detail=f"rollout {row.id} of revision {row.canary} at step {row.step}",
            )
        seen = max((e.id for e in rolloutstore.events(store, row.id) if e.id < request_id), default=0)
    follower = Follower(
        project, options, [row.id], on_event, on_tick, waiting_for={row.id: request_id}, seen={row.id: seen}
    )
    return follower.run(timeout, settle=wait)[0]


def _check_request(row: RolloutRow, kind: EventKind, data: dict[str, Any]) -> None:
    if kind is not EventKind.PROMOTE_REQUESTED:
        return
    variants = rolloutdriver.record_of(row).variants
    if row.strategy == "abTest" and data.get("variant") not in variants:
        raise BadInput(
            f"{row.function} is an A/B test: name the variant to promote with --variant ({', '.join(variants)})"
        )
    if row.strategy != "abTest" and data.get("variant"):
        raise BadInput(f"{row.function}'s rollout is a {row.strategy}, not an A/B test: --variant does not apply")


def retry(project: Project, options: Options, name: str, progress: Callable[[str], None]) -> tuple[RolloutRow, int]:
    """`fnctl retry`: roll an aborted revision out again from the first step (its instances restarted from
    its image, its quarantine lifted: the user asked for it by name). Returns the rollout and its last event
    before the retry."""
    with session(project, options, "retry", progress) as ctx:
        repair.recover(ctx, orphans=())
        row = current(ctx.store, name)
        record = rolloutdriver.record_of(row)
        if record.state is not State.ABORTED:
            raise BadInput(f"{name}'s latest rollout is {record.state.value}: only an aborted one can be retried")
        weights = ctx.store.routes().get(name, {})
        if weights != {record.stable: 100}:
            raise BadInput(
                f"{name}'s traffic moved since the rollout was aborted ({machine.weights_text(weights)}); "
                "deploy again with `fnctl apply` instead"
            )
        target = ctx.store.revision(name, record.canary)
        assert target is not None
        restart_revision(ctx, project, target)
        before = max((e.id for e in rolloutstore.events(ctx.store, row.id)), default=0)
        rolloutdriver.restart(ctx, row)
        found = rolloutstore.rollout(ctx.store, row.id)
        assert found is not None
        return found, before


def abtest_report(project: Project, options: Options, name: str) -> AbReport:
    """`fnctl abtest report`: each variant's traffic over the test (from its start until it ended, or now),
    compared with the first variant's."""
    with _store(project, options) as store:
        rows = [row for row in rolloutstore.rollouts(store, name) if row.strategy == "abTest"]
        if not rows:
            weights_of(store, name)
            raise NoRollout(f"{name} has had no A/B test")
        row, record = rows[-1], rolloutdriver.record_of(rows[-1])
        spec = rolloutdriver.spec_of(store, name, row.canary)
        ended = [
            e.at
            for e in rolloutstore.events(store, row.id)
            if e.kind in (EventKind.COMPLETED.value, EventKind.ABORTED.value)
        ]
        end = ended[-1] if ended else time.time()
        samples = []
        for variant in spec.variants:
            revision = record.variants[variant.name]
            requests, errors, histogram = totals(store, name, revision, int(row.started_at), int(end))
            samples.append((variant.name, revision, Sample(requests, errors, histogram)))
    return report(samples, confidence=spec.confidence, min_samples=spec.min_samples)
