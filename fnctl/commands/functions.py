"""Read-mostly operations on deployed functions: status, history, get, logs (invoking a live revision
through its instances is in fnctl.commands.invoke).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from fnctl.deploy import swarmdeploy
from fnctl.deploy.live import orphan_reasons
from fnctl.engine import dockerio, instances
from fnctl.errors import BadInput, FnctlError, UnknownName, not_deployed
from fnctl.manifest.project import Project
from fnctl.rollout.record import ACTIVE
from fnctl.rollout.weights import stable_revision
from fnctl.state import rolloutstore
from fnctl.state.location import StateLocation, locate
from fnctl.state.revisions import InstanceRow, InstanceState, Revision
from fnctl.state.store import Store, connect, exists


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


def open_store(project: Project, state: StateLocation | None) -> Store:
    path = locate(project, state)
    if not exists(path):
        raise FnctlError(f"nothing is deployed yet: no state store at {path} (run `fnctl apply`)")
    return connect(path)


def weights_of(store: Store, name: str) -> dict[int, int]:
    """The routing weights (revision → percent) of the function every command that names one looks up;
    `not_deployed` (exit 2: a name that does not exist is bad input) when it takes no traffic."""
    weights = store.routes().get(name)
    if not weights:
        raise not_deployed(name)
    return weights


def status(project: Project, state: StateLocation | None) -> list[FunctionStatus]:
    """Every deployed function, then every running or stopped container fnctl owns in this project and store
    that is no instance of a routed revision, flagged orphan (with why), under its function's name."""
    store = open_store(project, state)
    try:
        rows, routes, revisions = store.instances(), store.routes(), store.revisions()
        if project.engine == "swarm":  # the services' tasks, as the manager lists them
            shown = _swarm_tasks(project, rows)
        else:
            shown = _local_instances(project, store, rows, routes)
        result = []
        for name, weights in routes.items():
            live = stable_revision(weights)
            current = next((r for r in revisions if r.function == name and r.number == live), None)
            result.append(
                FunctionStatus(
                    name,
                    live,
                    weights,
                    shown.pop(name, []),
                    current.created_at if current else None,
                    current.created_by if current else None,
                    current.git_commit if current else None,
                    _rollout_words(store, name),
                    current.git_subject if current else None,
                )
            )
        result += [
            FunctionStatus(name, None, {}, found, None, None, None, deployed=False)
            for name, found in sorted(shown.items())
        ]
        return result
    finally:
        store.close()


def _local_instances(
    project: Project, store: Store, rows: list[InstanceRow], routes: dict[str, dict[int, int]]
) -> dict[str, list[InstanceStatus]]:
    """Each function's instances and the orphan containers of the local engine."""
    listed = dockerio.list_containers({"io.fnctl.project": project.name, "io.fnctl.store": store.id})
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
            shown.setdefault(c.labels.get("io.fnctl.function") or "?", []).append(
                InstanceStatus(
                    c.labels.get("io.fnctl.instance", "?"),
                    int(revision) if revision.isdigit() else 0,
                    c.id[:12],
                    c.status,
                    False,
                    0,
                    orphans.get(c.id, "unknown to the state store"),
                )
            )
    return shown


def _swarm_tasks(project: Project, rows: list[InstanceRow]) -> dict[str, list[InstanceStatus]]:
    """Each function's Swarm tasks: `<service>.<slot>@<node hostname>`, its container and its state."""
    functions = {row.container_id: (row.function, row.revision) for row in rows if row.container_id}
    shown: dict[str, list[InstanceStatus]] = {}
    for service, found in swarmdeploy.tasks(project.swarm, set(functions)).items():
        function, revision = functions[service]
        shown.setdefault(function, []).extend(
            InstanceStatus(f"{service}.{slot}@{node}", revision, container[:12], state, state == "running", 0)
            for slot, state, node, container in found
        )
    return shown


def _rollout_words(store: Store, name: str) -> str | None:
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


def history(project: Project, state: StateLocation | None, name: str) -> list[Revision]:
    store = open_store(project, state)
    try:
        revisions = store.revisions(name)
    finally:
        store.close()
    if not revisions:  # a deleted function keeps its history: this one was never deployed
        raise UnknownName("function", name, "was never deployed", "see `fnctl get revisions`")
    return revisions


def get(project: Project, state: StateLocation | None, what: str) -> list[dict[str, Any]]:
    store = open_store(project, state)
    try:
        if what in ("functions", "function"):
            return [
                {
                    "name": s.name,
                    "liveRevision": s.live_revision,
                    "weights": {str(k): v for k, v in s.weights.items()},
                    "instances": [instance_json(i) for i in s.instances],
                }
                for s in status(project, state)
            ]
        if what in ("revisions", "revision"):
            return [revision_json(r) for r in store.revisions()]
    finally:
        store.close()
    raise BadInput(f"unknown resource {what!r}: use functions or revisions")


def status_json(statuses: list[FunctionStatus]) -> list[dict[str, Any]]:
    """`fnctl status -o json` (and the dashboard's `/v1/functions`): its keys are an interface."""
    return [
        {
            "function": s.name,
            "deployed": s.deployed,
            "liveRevision": s.live_revision,
            "weights": {str(k): v for k, v in s.weights.items()},
            "instances": [
                {
                    "id": i.id,
                    "revision": i.revision,
                    "container": i.container,
                    "state": i.state,
                    "healthy": i.healthy,
                    "inflight": i.inflight,
                    "orphan": i.orphan is not None,
                    "orphanReason": i.orphan,
                }
                for i in s.instances
            ],
            "lastDeploy": s.last_deploy,
            "lastDeployBy": s.last_deploy_by,
            "gitCommit": s.last_commit,
            "gitSubject": s.last_subject,
            "rollout": s.rollout,
        }
        for s in statuses
    ]


def instance_json(instance: InstanceStatus) -> dict[str, Any]:
    """`get functions -o json`'s instance: its keys are an interface (scripts read them), not field names."""
    return {
        "id": instance.id,
        "revision": instance.revision,
        "container": instance.container,
        "state": instance.state,
        "healthy": instance.healthy,
        "inflight": instance.inflight,
        "orphan": instance.orphan,
    }


def revision_json(revision: Revision) -> dict[str, Any]:
    return {
        "function": revision.function,
        "number": revision.number,
        "status": revision.status.value,
        "specHash": revision.spec_hash,
        "image": revision.image,
        "gitCommit": revision.git_commit,
        "gitAuthor": revision.git_author,
        "gitSubject": revision.git_subject,
        "createdAt": revision.created_at,
        "createdBy": revision.created_by,
        "reason": revision.reason,
    }


def logs(
    project: Project, state: StateLocation | None, name: str, revision: int | None, since: float | None, follow: bool
) -> Iterator[str]:
    """Lines of the function's instances' logs, each prefixed with its instance."""
    store = open_store(project, state)
    try:
        rows = [r for r in store.instances(name) if revision is None or r.revision == revision]
        if not rows:
            weights_of(store, name)  # an unknown name is bad input; a deployed function without instances fails
    finally:
        store.close()
    if not rows:
        raise FnctlError(f"{name} has no running instances{'' if revision is None else f' of revision {revision}'}")
    if project.engine == "swarm":  # a revision's instances are its service's tasks, on any node
        services = {row.id.rpartition(".")[0]: row.revision for row in rows}
        yield from swarmdeploy.logs(project.swarm, services, since, follow)
        return
    for row in rows:
        if row.container_id:
            for line in dockerio.stream_logs(row.container_id, since=since, follow=follow and len(rows) == 1):
                yield f"[{row.id} r{row.revision}] {line}"


def age(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = time.time() - timestamp
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"
