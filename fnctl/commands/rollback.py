"""`fnctl rollback` and `fnctl delete`: taking traffic back to an earlier revision in one routing change
(quarantining the one left, so that no apply or sync redeploys it unasked), and removing a function.
"""

from __future__ import annotations

import time

from fnctl.commands.functions import weights_of
from fnctl.deploy import executor, repair, rolloutdriver
from fnctl.deploy.revisionspec import function_from_spec
from fnctl.deploy.session import Options, Progress, desired_specs, session
from fnctl.engine import dockerio
from fnctl.errors import BadInput, FnctlError
from fnctl.manifest.project import Project
from fnctl.rollout import machine
from fnctl.rollout.record import ACTIVE
from fnctl.rollout.weights import stable_revision
from fnctl.state import rolloutstore
from fnctl.state.revisions import Revision, RevisionStatus
from fnctl.state.store import Store


def rollback(project: Project, options: Options, name: str, to: int | None, progress: Progress) -> tuple[int, int]:
    """Switch `name` back to an earlier healthy revision (restarting its instances if needed); the current
    one is quarantined. Returns (from, to)."""
    with session(project, options, "rollback", progress) as ctx:
        repair.recover(ctx, orphans=())  # orphans never reach traffic: the next apply removes them
        store = ctx.store
        weights = weights_of(store, name)
        under_way = _abort_rollout(ctx, name)
        if under_way is not None:
            return under_way
        current = stable_revision(weights)
        assert current is not None  # `weights` is not empty
        target = _rollback_target(store, name, current, to)
        if not [r for r in store.instances(name) if r.revision == target.number]:
            restart_revision(ctx, project, target)
        reason = f"rolled back by {ctx.actor} at {time.strftime('%Y-%m-%d %H:%M:%S')} (fnctl rollback)"

        def quarantine() -> None:  # with the switch, in one transaction: a crash cannot leave one without the other
            rolloutdriver.retire(ctx, name, f"rolled back to revision {target.number}")  # no scale-down of the target
            store.set_revision_status(name, current, RevisionStatus.QUARANTINED, reason)
            store.audit(
                actor=ctx.actor,
                command="rollback",
                action="quarantine",
                target=name,
                outcome="ok",
                **ctx.git_fields,
                detail=f"revision {current}: {reason}",
            )

        executor.switch(ctx, name, {target.number: 100}, f"rollback from revision {current}", also=quarantine)
        executor.stop_other_revisions(ctx, name, keep={target.number})
        return current, target.number


def _abort_rollout(ctx: executor.Context, name: str) -> tuple[int, int] | None:
    """A rollback during a rollout is its abort: all traffic back on the stable revision in one change, the
    canary quarantined. Returns (from, to), or None when no rollout is under way."""
    rows = rolloutstore.rollouts(ctx.store, name, states=ACTIVE)
    if not rows:
        return None
    record = rolloutdriver.record_of(rows[-1])
    rolloutdriver.carry_out(ctx, record, machine.abort(record, f"rolled back by {ctx.actor} (fnctl rollback)"))
    return record.canary, record.stable


def restart_revision(ctx: executor.Context, project: Project, target: Revision) -> None:
    """Start the instances of `target` again, from its image (never built here), checked like a deploy's."""
    if dockerio.image_id(target.image) is None:  # one inspect: listing every image costs more
        raise FnctlError(
            f"the image {target.image} of revision {target.number} is gone; rollback never builds: "
            "deploy the old manifests with `fnctl apply` instead"
        )
    # Secret values are never stored: an old revision that needs them reads them as apply would.
    secrets = desired_specs(project, ctx.store, None)[1] if target.spec.get("secrets", {}).get("names") else {}
    function = function_from_spec(target.function, target.spec, project.default_limits)
    executor.start_checked(
        ctx,
        function,
        target.number,
        target.image,
        secrets.get(target.function, {}),
        max(1, function.scaling.min_instances),
    )


def _rollback_target(store: Store, name: str, current: int, to: int | None) -> Revision:
    revisions = store.revisions(name)
    if to is not None:
        chosen = next((r for r in revisions if r.number == to), None)
        if chosen is None:
            raise BadInput(f"{name} has no revision {to}")
        if chosen.status is not RevisionStatus.READY or chosen.number == current:
            raise BadInput(
                f"revision {to} of {name} is {'live' if chosen.number == current else chosen.status.value}; "
                "pick a healthy earlier revision (see `fnctl history`)"
            )
        return chosen
    earlier = [r for r in revisions if r.number < current and r.status is RevisionStatus.READY]
    if not earlier:
        raise FnctlError(f"{name} has no healthy revision before {current} to roll back to")
    return earlier[-1]


def delete(project: Project, options: Options, name: str, progress: Progress) -> None:
    with session(project, options, "delete", progress) as ctx:
        repair.recover(ctx)
        weights_of(ctx.store, name)
        with ctx.store.transaction():
            rolloutdriver.retire(ctx, name, "the function was deleted")
        executor.delete(ctx, name)
