"""Read-mostly operations on deployed functions: status, history, get, logs, and invoking a live revision
through its instances.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fnctl import dockerio
from fnctl.errors import BadInput, FnctlError
from fnctl.project import Project
from fnctl.store import InstanceState, Revision, RevisionStatus, Store, connect
from fnctl.transport import UnixSocketTransport


@dataclass(frozen=True)
class InstanceStatus:
    id: str
    revision: int
    container: str
    state: str  # the engine's view: running / exited / missing
    healthy: bool  # answered a ping just now
    inflight: int


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


def open_store(project: Project, state: Path | None) -> Store:
    from fnctl.apply import state_path

    path = state_path(project, state)
    if not path.exists():
        raise FnctlError(f"nothing is deployed yet: no state store at {path} (run `fnctl apply`)")
    return connect(path)


def status(project: Project, state: Path | None) -> list[FunctionStatus]:
    store = open_store(project, state)
    try:
        containers = {c.labels.get("io.fnctl.instance"): c for c in dockerio.list_containers(
            {"io.fnctl.project": project.name, "io.fnctl.store": store.id})}
        revisions = store.revisions()
        result = []
        for name, weights in store.routes().items():
            live = max(weights, key=lambda r: (weights[r], r)) if weights else None
            current = next((r for r in revisions if r.function == name and r.number == live), None)
            rows = [_instance_status(row, containers.get(row.id)) for row in store.instances(name)]
            result.append(FunctionStatus(name, live, weights, rows, current.created_at if current else None,
                                         current.created_by if current else None,
                                         current.git_commit if current else None, _rollout_words(store, name),
                                         current.git_subject if current else None))
        return result
    finally:
        store.close()


def _rollout_words(store: Store, name: str) -> str | None:
    from fnctl.rollout import ACTIVE

    rows = store.rollouts(name, states=ACTIVE)
    if not rows:
        return None
    row = rows[-1]
    return f"{row.strategy} of r{row.canary}: {row.state} at step {row.step + 1} (fnctl rollout status {name})"


def _instance_status(row: Any, container: Any) -> InstanceStatus:
    state = container.status if container is not None else "missing"
    healthy, inflight = False, 0
    if state == "running" and row.state is InstanceState.READY:
        transport = UnixSocketTransport(f"{row.socket_dir}/sock")
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
                     "instances": [asdict(i) for i in s.instances]} for s in status(project, state)]
        if what in ("revisions", "revision"):
            return [revision_json(r) for r in store.revisions()]
    finally:
        store.close()
    raise BadInput(f"unknown resource {what!r}: use functions or revisions")


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
    from fnctl import instances
    from fnctl.revisionspec import function_from_spec

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
    try:
        return chosen, instances.invoke(instance, event, payload_size=payload_size)
    finally:
        instance.transport.close()


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
