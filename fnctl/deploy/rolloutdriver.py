"""Driving rollouts: whoever holds the store's lock (`fnctl apply`, `promote`, `rollout status -w`, or the
controller loop of `fnctl serve`) carries out what `fnctl.rollout.machine` decides, one transaction per transition.

Crash safety: a transition's weights, progress and events land together; what follows it (stopping
instances) is redone by `repair.recover` if the process dies first. So a new driver resumes exactly where
the last one stopped: a finished step never runs again and traffic never rests on a half-applied weight.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from fnctl.deploy import executor, lock, repair, swarmdeploy
from fnctl.deploy import secrets as secretref
from fnctl.deploy.actor import actor
from fnctl.deploy.revisionspec import function_from_spec
from fnctl.engine import instances
from fnctl.errors import FnctlError
from fnctl.gitops.commit import Commit
from fnctl.manifest.kinds import parse_rollout
from fnctl.manifest.model import Function, HealthCheck, Limits, Rollout
from fnctl.manifest.project import Project, SwarmSettings
from fnctl.manifest.stages import stages
from fnctl.rollout import machine
from fnctl.rollout.analysis import Verdict, evaluate
from fnctl.rollout.machine import EventKind, Measure, Transition, Wait
from fnctl.rollout.record import ACTIVE, Record, State, record_from
from fnctl.state import metricstore, rolloutstore
from fnctl.state.location import StateLocation
from fnctl.state.revisions import InstanceState, RevisionStatus
from fnctl.state.rolloutstore import RolloutRow
from fnctl.state.store import Store, connect

MAX_TRANSITIONS = 100  # per call of `advance`: a loop of instant transitions is a bug, not a rollout
# Rows that still need a driver: under way, or completed with the old revisions still warm.
UNFINISHED = (*ACTIVE, State.COMPLETED.value)


def record_of(row: RolloutRow) -> Record:
    return record_from(
        row.id, row.function, row.stable, row.canary, row.strategy, row.step, row.state, row.detail, row.started_at
    )


def spec_of(store: Store, function: str, revision: int) -> Rollout:
    found = store.revision(function, revision)
    return parse_rollout((found.spec if found else {}).get("rollout") or {"strategy": "immediate"})


def unfinished(store: Store, function: str | None = None) -> list[RolloutRow]:
    return [row for row in rolloutstore.rollouts(store, function, states=UNFINISHED) if not record_of(row).done]


def latest(store: Store, function: str) -> RolloutRow | None:
    rows = rolloutstore.rollouts(store, function)
    return rows[-1] if rows else None


def begin(ctx: executor.Context, function: Function, stable: int, canary: int) -> RolloutRow:
    """Start rolling `canary` out over `stable` (both running and checked): the canary at 0% (reachable by
    pinning), recorded in one transaction with the rollout's first events. A rollout still under way for
    the function is superseded (its canary was not proven bad: it is not quarantined)."""
    store, now = ctx.store, time.time()
    plan = stages(function.rollout)
    superseded = [record_of(row) for row in rolloutstore.rollouts(store, function.name, states=ACTIVE)]
    variants = {
        v.name: (canary if v.revision == "new" else stable if v.revision == "stable" else int(v.revision))
        for v in function.rollout.variants
    }
    record = Record(
        0,
        function.name,
        stable,
        canary,
        function.rollout.strategy,
        State.PROGRESSING,
        0,
        now,
        now,
        {stable: 100, canary: 0},
        variants,
    )
    with store.transaction():
        for old in superseded:
            _write(ctx, old, machine.abort(old, f"superseded by revision {canary}", quarantine=False))
        store.set_revision_status(function.name, canary, RevisionStatus.READY, None)
        store.set_route(function.name, record.weights)
        rollout_id = rolloutstore.add(
            store,
            function.name,
            stable,
            canary,
            function.rollout.strategy.value,
            State.PROGRESSING.value,
            record.detail(),
            now,
        )
        record = replace(record, id=rollout_id)
        started = machine.Event(
            EventKind.STARTED,
            0,
            f"{function.rollout.strategy.value} of revision {canary} over "
            f"revision {stable}: " + " → ".join(s.label for s in plan),
            {"stages": len(plan)},
        )
        for event in (started, *machine.entering(plan, record)):
            rolloutstore.add_event(store, rollout_id, event.kind.value, event.step, event.message, event.data)
        ctx.audit("rollout start", function.name, "ok", started.message[:4000])
    ctx.progress(f"{function.name}: {started.message}")
    if superseded:  # their canaries leave with one stop: nothing but stable and the new canary stays
        executor.stop_other_revisions(ctx, function.name, keep={stable, canary})
    row = rolloutstore.rollout(store, rollout_id)
    assert row is not None
    return row


def restart(ctx: executor.Context, row: RolloutRow) -> None:
    """`fnctl retry`: the aborted rollout again from its first step, its canary's instances already running."""
    store, now = ctx.store, time.time()
    old = record_of(row)
    plan = stages(spec_of(store, row.function, row.canary))
    # Requests made before the retry (even ones that arrived after the abort) are not for the new attempt.
    handled = max((e.id for e in rolloutstore.events(store, row.id)), default=old.handled)
    record = replace(
        old,
        state=State.PROGRESSING,
        step=0,
        started_at=now,
        step_started=now,
        weights={old.stable: 100, old.canary: 0},
        failures=0,
        next_measure=None,
        winner=None,
        scale_down_at=None,
        scaled_down=False,
        reason="",
        handled=handled,
    )
    with store.transaction():
        store.set_revision_status(row.function, row.canary, RevisionStatus.READY, None)
        store.set_route(row.function, record.weights)
        rolloutstore.update(store, row.id, step=0, state=record.state.value, detail=record.detail())
        retried = machine.Event(EventKind.RETRIED, 0, f"retried by {ctx.actor}: revision {row.canary} from step 1")
        for event in (retried, *machine.entering(plan, record)):
            rolloutstore.add_event(store, row.id, event.kind.value, event.step, event.message, event.data)
        ctx.audit("rollout retry", row.function, "ok", retried.message)
    ctx.progress(f"{row.function}: {retried.message}")


def retire(ctx: executor.Context, function: str, why: str) -> None:
    """Inside the caller's transaction (which moves the traffic itself): the function's unfinished rollouts
    end without touching the routes: under way ones are aborted, completed ones keep their revisions."""
    for row in unfinished(ctx.store, function):
        record = record_of(row)
        ended = replace(
            record,
            state=State.ABORTED if record.state.value in ACTIVE else record.state,
            scaled_down=True,
            reason=why,
        )
        rolloutstore.update(ctx.store, row.id, step=ended.step, state=ended.state.value, detail=ended.detail())
        rolloutstore.add_event(
            ctx.store,
            row.id,
            EventKind.ABORTED.value if ended.state is State.ABORTED else EventKind.SCALED_DOWN.value,
            ended.step,
            why,
        )


def request(store: Store, rollout_id: int, kind: EventKind, message: str, data: dict[str, Any]) -> int:
    """Record a request (promote, abort) for the driver: an appended event, so it never races its updates."""
    return rolloutstore.add_event(store, rollout_id, kind.value, 0, message, data)


def advance(
    ctx: executor.Context, row: RolloutRow, *, now: Callable[[], float] = time.time
) -> tuple[Record, Wait | None]:
    """Act on a rollout until it has to wait: pending requests first, then its steps. Returns the record and
    what it waits for (None: done)."""
    record = record_of(row)
    if ctx.git is None:  # driven by `fnctl serve` or a watcher: the audit names the commit being rolled out
        ctx = replace(ctx, git=_commit_of(ctx.store, record.function, record.canary))
    plan_rollout = spec_of(ctx.store, record.function, record.canary)
    plan = stages(plan_rollout)
    delay = plan_rollout.scale_down_delay
    for event in rolloutstore.events(ctx.store, record.id, after=record.handled):
        if event.kind in machine.REQUESTS:
            record = carry_out(
                ctx, record, machine.on_request(record, plan, event.kind, event.data, delay, now()), handled=event.id
            )
    for _ in range(MAX_TRANSITIONS):
        decided = machine.step(record, plan, delay, now())
        if decided is None or isinstance(decided, Wait):
            return record, decided
        if isinstance(decided, Measure):
            verdict = measure(ctx, record, decided, now())
            decided = machine.on_measurement(record, plan, verdict, now())
        record = carry_out(ctx, record, decided)
    raise FnctlError(f"{record.function}: rollout {record.id} made {MAX_TRANSITIONS} steps without waiting (a bug)")


def _commit_of(store: Store, function: str, number: int) -> Commit | None:
    revision = store.revision(function, number)
    if revision is None or revision.git_commit is None:
        return None
    return Commit(revision.git_commit, revision.git_author or "", revision.git_subject or "")


def advance_all(ctx: executor.Context, names: Iterable[str] | None = None) -> list[tuple[Record, Wait | None]]:
    wanted = set(names) if names is not None else None
    return [advance(ctx, row) for row in unfinished(ctx.store) if wanted is None or row.function in wanted]


def carry_out(ctx: executor.Context, before: Record, transition: Transition, *, handled: int | None = None) -> Record:
    """Commit a transition (marking the request it answers handled), then stop what it leaves unrouted."""
    record = transition.record if handled is None else replace(transition.record, handled=handled)
    transition = replace(transition, record=record)
    with ctx.store.transaction():
        _write(ctx, before, transition)
    for event in transition.events:
        ctx.progress(f"{record.function}: {event.message}")
        executor.checkpoint(f"rollout-{event.kind.value}")
    if transition.stop:
        executor.stop_other_revisions(ctx, record.function, keep=set(record.weights))
    return record


def _write(ctx: executor.Context, before: Record, transition: Transition) -> None:
    """A transition's writes, inside the caller's transaction."""
    store, record = ctx.store, transition.record
    if record.weights != before.weights:
        store.set_route(record.function, record.weights)
        ctx.audit(
            "route",
            record.function,
            "ok",
            f"rollout {record.id}: {machine.weights_text(record.weights)}",
        )
    if transition.quarantine:
        store.set_revision_status(record.function, record.canary, RevisionStatus.QUARANTINED, record.reason[:4000])
        ctx.audit("quarantine", record.function, "ok", f"revision {record.canary}: {record.reason}"[:4000])
    rolloutstore.update(store, record.id, step=record.step, state=record.state.value, detail=record.detail())
    for event in transition.events:
        rolloutstore.add_event(store, record.id, event.kind.value, event.step, event.message, event.data)
    if record.state is not before.state and record.state in (State.ABORTED, State.COMPLETED):
        ctx.audit(
            f"rollout {record.state.value}",
            record.function,
            "ok",
            (transition.events[-1].message if transition.events else "")[:4000],
        )


def tick(project: Project, store_path: StateLocation, progress: executor.Progress, store: Store | None = None) -> int:
    """One pass of `fnctl serve`'s controller loop: advance the rollouts that need a driver, if the lock is
    free (else the process holding it drives them). Returns how many it advanced. `store`: the loop's own
    connection, kept across passes (a pass every half second must not connect anew each time); without it
    the pass opens and closes one."""
    own = store is None
    store = connect(store_path) if store is None else store
    try:
        return drive(project, store_path, progress, store) or 0
    finally:
        if own:
            store.close()


def drive(project: Project, store_path: StateLocation, progress: executor.Progress, store: Store) -> int | None:
    """`tick` on a connection of the caller's: how many rollouts it advanced; None when there was nothing to
    drive (no unfinished rollout, no stale instances), so that nothing will be until the state changes."""
    stale = _stale_instances(store)
    if not stale and not unfinished(store):
        return None
    with lock.attempt(store_path, "fnctl serve: rollouts") as got:
        if not got:
            return 0
        ctx = executor.Context(
            store,
            project.name,
            project.base_image,
            actor(),
            "serve",
            None,
            progress,
            swarm=executor.engine_settings(project),
            root=project.root,
        )
        if stale:  # a process killed between an abort's routing change and its clean-up left them
            repair.recover(ctx, orphans=())
        return len(advance_all(ctx))


def _stale_instances(store: Store) -> bool:
    """Whether instances run of quarantined revisions that nothing routes to: an aborted canary whose driver
    died before stopping it. Only quarantined ones: the gateway starts instances of other unrouted revisions
    for pinned requests, and those are not stale."""
    routes = store.routes()
    for row in store.instances():
        if row.revision not in routes.get(row.function, {}):
            revision = store.revision(row.function, row.revision)
            if revision is not None and revision.status is RevisionStatus.QUARANTINED:
                return True
    return False


# ---- analysis ------------------------------------------------------------------------------------


def measure(ctx: executor.Context, record: Record, due: Measure, now: float) -> Verdict:
    """The canary's and stable's traffic over the window, as the gateway recorded it, and the checks."""
    seconds = max(now - due.since, 1.0)
    canary = metricstore.window(ctx.store, record.function, record.canary, seconds, now=now)
    stable = metricstore.window(ctx.store, record.function, record.stable, seconds, now=now)
    problems = run_checks(ctx.store, record, due.analysis.checks, swarm=ctx.swarm, project=ctx.project, root=ctx.root)
    return evaluate(due.analysis, canary, stable, problems)


def run_checks(
    store: Store,
    record: Record,
    checks: tuple[HealthCheck, ...],
    *,
    swarm: SwarmSettings | None = None,
    project: str = "",
    root: Path | None = None,
) -> tuple[str, ...]:
    """Synthetic invocations of the canary, straight to one of its instances (under `swarm`, a task of its
    service on this node, configured with the function's secrets read from the project at `root`, as the
    gateway configures it): what went wrong, in words."""
    if not checks:
        return ()
    revision = store.revision(record.function, record.canary)
    rows = [
        r
        for r in store.instances(record.function)
        if r.revision == record.canary and r.container_id and r.state is not InstanceState.PAUSED  # frozen: mute
    ]
    if revision is None or not rows:
        return (f"no running instance of revision {record.canary} to check",)
    function = function_from_spec(record.function, revision.spec, Limits())  # the spec has every limit
    if swarm is not None:
        try:
            secrets = secretref.resolve(function, root) if root is not None and function.secrets else {}
        except FnctlError as exc:
            return (f"revision {record.canary}'s secrets: {exc.message}",)
        instance = swarmdeploy.connect_local(swarm, project, function, record.canary, secrets)
        if instance is None:
            return (f"no task of revision {record.canary} on this node answers",)
    else:
        instance = instances.connect_existing(
            function, rows[0].container_id or "", Path(rows[0].socket_dir), rows[0].id
        )
    if instance is None:
        return (f"instance {rows[0].id} of revision {record.canary} does not answer",)
    try:
        return tuple(
            p.message + (f" ({p.detail})" if p.detail else "") for p in executor.check_problems(instance, checks)
        )
    finally:
        instance.transport.close()
