"""Read-mostly operations on deployed functions: status, history, get, logs, and invoking a live revision
through its instances.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fnctl.engine import dockerio, instances
from fnctl.errors import BadInput, FnctlError
from fnctl.manifest.project import Project
from fnctl.rollout.weights import stable_revision
from fnctl.state import rolloutstore
from fnctl.state.store import InstanceState, Revision, RevisionStatus, Store, connect


@dataclass(frozen=True)
class InstanceStatus:
    id: str
    revision: int
    container: str
    state: str  # the engine's view: running / exited / missing
    healthy: bool  # answered a ping just now
    inflight: int
    orphan: str | None = None  # why it is no instance of a routed revision (see `live.orphan_reasons`)


@dataclass(frozen=True)
class FunctionStatus:
    name: str
    live_revision: int | None
    weights: dict[int, int]
    instances: list[InstanceStatus]
    last_deploy: float | None
    last_deploy_by: str | None
    last_commit: str | None
    rollout: str | None = None  # a rollout under way, in words: "canary of r3: paused at step 2/3"
    last_subject: str | None = None  # of the live revision's commit
    deployed: bool = True  # False: not in the routing table, listed for its orphan containers


def open_store(project: Project, state: Path | None) -> Store:
    from fnctl.deploy.session import state_path

    path = state_path(project, state)
    if not path.exists():
        raise FnctlError(f"nothing is deployed yet: no state store at {path} (run `fnctl apply`)")
    return connect(path)


def status(project: Project, state: Path | None) -> list[FunctionStatus]:
    """Every deployed function, then every running or stopped container fnctl owns in this project and store
    that is no instance of a routed revision, flagged orphan (with why), under its function's name."""
    from fnctl.deploy.live import orphan_reasons

    store = open_store(project, state)
    try:
        listed = dockerio.list_containers({"io.fnctl.project": project.name, "io.fnctl.store": store.id})
        rows, routes, revisions = store.instances(), store.routes(), store.revisions()
        orphans = orphan_reasons(listed, rows, routes)
        recorded = {row.id: row.container_id for row in rows}
        containers: dict[str, dockerio.ContainerInfo] = {}
        for c in listed:  # an instance's own container, when copies carry its label
            instance = c.labels.get("io.fnctl.instance", "")
            if instance not in containers or c.id == recorded.get(instance):
                containers[instance] = c
        shown: dict[str, list[InstanceStatus]] = {}
        for row in rows:
            container = containers.get(row.id)
            reason = orphans.get(container.id) if container is not None else None
            if reason is None and row.function not in routes:
                reason = f"{row.function} is not deployed (deleted)"
            shown.setdefault(row.function, []).append(replace(_instance_status(row, container), orphan=reason))
        accounted = {row.container_id for row in rows} | {containers[r.id].id for r in rows if r.id in containers}
        for c in listed:
            if c.id not in accounted:  # unknown to the store: named only by its labels
                revision = c.labels.get("io.fnctl.revision", "")
                shown.setdefault(c.labels.get("io.fnctl.function") or "?", []).append(InstanceStatus(
                    c.labels.get("io.fnctl.instance", "?"), int(revision) if revision.isdigit() else 0, c.id[:12],
                    c.status, False, 0, orphans.get(c.id, "unknown to the state store")))
        result = []
        for name, weights in routes.items():
            live = stable_revision(weights)
            current = next((r for r in revisions if r.function == name and r.number == live), None)
            result.append(FunctionStatus(name, live, weights, shown.pop(name, []),
                                         current.created_at if current else None,
                                         current.created_by if current else None,
                                         current.git_commit if current else None, _rollout_words(store, name),
                                         current.git_subject if current else None))
        result += [FunctionStatus(name, None, {}, found, None, None, None, deployed=False)
                   for name, found in sorted(shown.items())]
        return result
    finally:
        store.close()


def _rollout_words(store: Store, name: str) -> str | None:
    from fnctl.rollout.machine import ACTIVE

    rows = rolloutstore.rollouts(store, name, states=ACTIVE)
    if not rows:
        return None
    row = rows[-1]
    return f"{row.strategy} of r{row.canary}: {row.state} at step {row.step + 1} (fnctl rollout status {name})"


def _instance_status(row: Any, container: Any) -> InstanceStatus:
    state = container.status if container is not None else "missing"
    healthy, inflight = False, 0
    if state == "running" and row.state is InstanceState.READY:
        transport = instances.host_transport(row.socket_dir, row.container_id or "")
        try:
            transport.connect(timeout=1.0)
            inflight, healthy = transport.ping(timeout=1.0), True
        except FnctlError:
            pass
        finally:
            transport.close()
    return InstanceStatus(row.id, row.revision, (row.container_id or "")[:12], state, healthy, inflight)


def history(project: Project, state: Path | None, name: str) -> list[Revision]:
    store = open_store(project, state)
    try:
        revisions = store.revisions(name)
    finally:
        store.close()
    if not revisions:
        raise BadInput(f"{name} has no revisions")
    return revisions


def get(project: Project, state: Path | None, what: str) -> list[dict[str, Any]]:
    store = open_store(project, state)
    try:
        if what in ("functions", "function"):
            return [{"name": s.name, "liveRevision": s.live_revision, "weights": {str(k): v for k, v in s.weights.items()},
                     "instances": [instance_json(i) for i in s.instances]} for s in status(project, state)]
        if what in ("revisions", "revision"):
            return [revision_json(r) for r in store.revisions()]
    finally:
        store.close()
    raise BadInput(f"unknown resource {what!r}: use functions or revisions")


def instance_json(instance: InstanceStatus) -> dict[str, Any]:
    """`get functions -o json`'s instance: its keys are an interface (scripts read them), not field names."""
    return {"id": instance.id, "revision": instance.revision, "container": instance.container, "state": instance.state,
            "healthy": instance.healthy, "inflight": instance.inflight, "orphan": instance.orphan}


def revision_json(revision: Revision) -> dict[str, Any]:
    return {"function": revision.function, "number": revision.number, "status": revision.status.value,
            "specHash": revision.spec_hash, "image": revision.image, "gitCommit": revision.git_commit,
            "gitAuthor": revision.git_author, "gitSubject": revision.git_subject, "createdAt": revision.created_at, "createdBy": revision.created_by,
            "reason": revision.reason}


def logs(project: Project, state: Path | None, name: str, revision: int | None, since: float | None,
         follow: bool) -> Iterator[str]:
    """Lines of the function's instances' logs, each prefixed with its instance."""
    store = open_store(project, state)
    try:
        rows = [r for r in store.instances(name) if revision is None or r.revision == revision]
    finally:
        store.close()
    if not rows:
        raise FnctlError(f"{name} has no running instances{'' if revision is None else f' of revision {revision}'}")
    for row in rows:
        if row.container_id:
            for line in dockerio.stream_logs(row.container_id, since=since, follow=follow and len(rows) == 1):
                yield f"[{row.id} r{row.revision}] {line}"


def invoke_live(project: Project, state: Path | None, name: str, event: Any, payload_size: int,
                revision: int | None) -> tuple[int, Any]:
    """Invoke a deployed function through one of its ready instances (weighted like the routing table, or
    pinned to `revision`). Returns (revision, instances.Outcome)."""
    from fnctl.deploy.revisionspec import function_from_spec
    from fnctl.engine import instances

    store = open_store(project, state)
    try:
        weights = store.routes().get(name)
        if not weights:
            raise FnctlError(f"{name} is not deployed (run `fnctl apply`)")
        chosen = revision if revision is not None else _pick(weights)
        target = store.revision(name, chosen)
        if target is None or target.status is RevisionStatus.FAILED:
            raise BadInput(f"{name} has no usable revision {chosen}")
        rows = [r for r in store.instances(name) if r.revision == chosen and r.state is InstanceState.READY]
    finally:
        store.close()
    if not rows:
        raise FnctlError(f"{name} revision {chosen} has no ready instance (minInstances 0 or drift: run `fnctl apply`)")
    row = random.choice(rows)
    function = function_from_spec(name, target.spec, project.default_limits)
    instance = instances.connect_existing(function, row.container_id or "", Path(row.socket_dir), row.id)
    if instance is None:
        raise FnctlError(f"instance {row.id} of {name} does not answer (run `fnctl apply` to heal)")
    started = time.monotonic()
    outcome = None
    try:
        outcome = instances.invoke(instance, event, payload_size=payload_size)
        return chosen, outcome
    finally:
        instance.transport.close()
        _audit_direct(project, state, name, chosen, outcome, time.monotonic() - started)


def _audit_direct(project: Project, state: Path | None, name: str, revision: int, outcome: Any,
                  seconds: float) -> None:
    """An invocation that bypassed the gateway (`fnctl invoke --direct`, or no gateway running) skips its
    authentication, never its audit: one row, with the operator (fnctl.deploy.actor) as the principal."""
    from fnctl.deploy.actor import actor
    from fnctl.deploy.session import state_path
    from fnctl.gateway.audit import AuditLog
    from fnctl.gateway.httpevent import FAILURE_STATUS, audit_outcome
    from fnctl.gateway.request import new_request_id
    from fnctl.invocation.outcome import Failure

    if outcome is None:  # the invocation itself raised (the instance went away)
        word, status = "error", 502
    else:
        word = audit_outcome(outcome)
        status = 200 if outcome.ok else FAILURE_STATUS.get(outcome.failure or Failure.HANDLER_ERROR, 500)
    audit = AuditLog(state_path(project, state))
    try:
        audit.record(request_id=new_request_id(), principal=f"operator:{actor()}", function=name, revision=revision,
                     outcome=word, status=status, duration_ms=seconds * 1000, source="cli --direct")
    finally:
        audit.close()


def _pick(weights: dict[int, int]) -> int:
    revisions = [r for r, w in weights.items() if w > 0]
    return random.choices(revisions, weights=[weights[r] for r in revisions])[0]


def age(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = time.time() - timestamp
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"
