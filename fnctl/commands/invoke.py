"""`fnctl invoke NAME`: through the project's running gateway when there is one (so that its metrics,
authentication, routing and audit apply), else straight to one of its instances (audited all the same)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from fnctl.commands.functions import open_store
from fnctl.deploy import secrets as secretref
from fnctl.deploy import swarmdeploy
from fnctl.deploy.actor import actor
from fnctl.deploy.revisionspec import function_from_spec
from fnctl.engine import instances
from fnctl.errors import BadInput, FnctlError, not_deployed
from fnctl.gateway.audit import AuditLog
from fnctl.gateway.client import find, invoke
from fnctl.gateway.httpevent import FAILURE_STATUS, audit_outcome
from fnctl.invocation.outcome import Failure, Outcome
from fnctl.invocation.requestid import new_request_id
from fnctl.manifest.model import Function
from fnctl.manifest.project import Project
from fnctl.state.location import StateLocation, locate
from fnctl.state.revisions import InstanceState, Revision, RevisionStatus
from fnctl.state.store import connect, exists


def invoke_deployed(
    project: Project,
    state: StateLocation | None,
    name: str,
    event: Any,
    payload_size: int,
    revision: int | None,
    *,
    key: str | None,
    logs: bool,
    direct: bool,
) -> tuple[Outcome, bool]:
    """`fnctl invoke NAME`: through the project's gateway when it runs (and not `direct`), else straight to an
    instance. Returns the outcome and whether a warm instance served it."""
    path = locate(project, state)
    if not direct and exists(path):
        store = connect(path)
        try:
            store_id = store.id
        finally:
            store.close()
        if find(project.gateway, project.name, store_id):
            call = invoke(project.gateway, name, event, key=key, revision=revision, logs=logs)
            return call.outcome, not call.cold_start
    _, outcome = invoke_live(project, state, name, event, payload_size, revision)
    return outcome, True


def invoke_live(
    project: Project, state: StateLocation | None, name: str, event: Any, payload_size: int, revision: int | None
) -> tuple[int, Any]:
    """Invoke a deployed function through one of its ready instances (weighted like the routing table, or
    pinned to `revision`). Returns (revision, instances.Outcome)."""
    store = open_store(project, state)
    try:
        weights = store.routes().get(name)
        if not weights:
            raise _not_live(name, store.revisions(name))
        chosen = revision if revision is not None else _pick(weights)
        target = store.revision(name, chosen)
        if target is None or target.status is RevisionStatus.FAILED:
            raise BadInput(f"{name} has no usable revision {chosen}")
        rows = [r for r in store.instances(name) if r.revision == chosen and r.state is InstanceState.READY]
    finally:
        store.close()
    if not rows:
        raise FnctlError(f"{name} revision {chosen} has no ready instance (minInstances 0 or drift: run `fnctl apply`)")
    function = function_from_spec(name, target.spec, project.default_limits)
    if project.engine == "swarm":
        instance = _swarm_task(project, function, chosen)
    else:
        row = random.choice(rows)
        local = instances.connect_existing(function, row.container_id or "", Path(row.socket_dir), row.id)
        if local is None:
            raise FnctlError(f"instance {row.id} of {name} does not answer (run `fnctl apply` to heal)")
        instance = local
    started = time.monotonic()
    outcome = None
    try:
        outcome = instances.invoke(instance, event, payload_size=payload_size)
        return chosen, outcome
    finally:
        instance.transport.close()
        _audit_direct(project, state, name, chosen, outcome, time.monotonic() - started)


def _swarm_task(project: Project, function: Function, revision: int) -> instances.Instance:
    """engine = "swarm": a task of the revision on this machine's node (swarm.node), over its socket, with the
    function's secrets (a task is configured by whoever connects to it)."""
    secrets = secretref.resolve(function, project.root)
    instance = swarmdeploy.connect_local(project.swarm, project.name, function, revision, secrets)
    if instance is None:
        raise FnctlError(
            f"{function.name} revision {revision} has no task answering on this machine's node (swarm.node): "
            "invoke it through a node's gateway (`fnctl invoke` without --direct, with gateway.address set to "
            "one; a gateway forwards to a node that has a task)"
        )
    return instance


def _not_live(name: str, revisions: list[Revision]) -> FnctlError:
    """Why `name` takes no traffic: its last revision failed (the deploy failed: exit 1, and why), or it was
    never applied or was deleted (a name that does not exist: exit 2)."""
    last = revisions[-1] if revisions else None
    if last is None or last.status is not RevisionStatus.FAILED:
        return not_deployed(name)
    reason = (last.reason or "no reason recorded").splitlines()[0]
    return FnctlError(
        f"{name} has no live revision: revision {last.number} failed: {reason} (see `fnctl history {name}`)"
    )


def _audit_direct(
    project: Project, state: StateLocation | None, name: str, revision: int, outcome: Any, seconds: float
) -> None:
    """An invocation that bypassed the gateway (`fnctl invoke --direct`, or no gateway running) skips its
    authentication, never its audit: one row, with the operator (fnctl.deploy.actor) as the principal."""
    if outcome is None:  # the invocation itself raised (the instance went away)
        word, status = "error", 502
    else:
        word = audit_outcome(outcome)
        status = 200 if outcome.ok else FAILURE_STATUS.get(outcome.failure or Failure.HANDLER_ERROR, 500)
    audit = AuditLog(locate(project, state))
    try:
        audit.record(
            request_id=new_request_id(),
            principal=f"operator:{actor()}",
            function=name,
            revision=revision,
            outcome=word,
            status=status,
            duration_ms=seconds * 1000,
            source="cli --direct",
        )
    finally:
        audit.close()


def _pick(weights: dict[int, int]) -> int:
    revisions = [r for r, w in weights.items() if w > 0]
    return random.choices(revisions, weights=[weights[r] for r in revisions])[0]
