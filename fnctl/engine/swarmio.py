"""The Swarm half of the Docker engine boundary: services, tasks and nodes on a manager, and a node's own
task containers, each call to a named engine socket (a gateway on a node talks to its node's engine; deploys
talk to a manager). It speaks in fnctl's terms and turns the engine's errors into fnctl's, like `dockerio`;
what a service looks like is decided in `swarmspec`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fnctl.engine import dockerapi, dockerio
from fnctl.engine.swarmspec import RUNTIME_LABEL, task_slot
from fnctl.errors import EngineUnavailable, FnctlError


@dataclass(frozen=True)
class SwarmNode:
    id: str
    hostname: str
    state: str  # ready | down | unknown | disconnected
    availability: str  # active | pause | drain
    default_runtime: str  # from the engine label RUNTIME_LABEL; "runc" when unlabelled


@dataclass(frozen=True)
class SwarmTask:
    id: str
    slot: int
    node_id: str
    state: str  # new | pending | ... | running | failed | shutdown | rejected
    desired: str  # running | shutdown
    container_id: str
    error: str


@dataclass(frozen=True)
class EngineInfo:
    hostname: str
    node_id: str  # "" when the engine is in no swarm
    swarm_state: str  # inactive | pending | active | error | locked
    default_runtime: str


def _call(
    engine: str, action: str, method: str, where: str, *, query: dict[str, Any] | None = None, body: Any = None
) -> Any:
    """One call to the engine on the socket `engine`; its JSON answer, None for a 404."""
    try:
        reply = dockerapi.request(method, where, query=query, body=body, engine=engine)
    except dockerapi.Unreachable as exc:
        raise EngineUnavailable(f"{action}: no Docker engine answers on {engine} ({exc})") from None
    if reply.status == 404:
        return None
    if reply.status >= 400:
        raise FnctlError(f"{action}: the Docker engine on {engine} refused: {reply.message}")
    return reply.body


def info(engine: str) -> EngineInfo:
    found = _call(engine, "reading the engine's information", "GET", "/info") or {}
    swarm = found.get("Swarm") or {}
    return EngineInfo(
        str(found.get("Name", "")),
        str(swarm.get("NodeID") or ""),
        str(swarm.get("LocalNodeState") or "inactive"),
        str(found.get("DefaultRuntime") or "runc"),
    )


def nodes(engine: str) -> list[SwarmNode]:
    found = _call(engine, "listing the swarm's nodes", "GET", "/nodes") or []
    out = []
    for node in found:
        description = node.get("Description") or {}
        labels = (description.get("Engine") or {}).get("Labels") or {}
        out.append(
            SwarmNode(
                str(node.get("ID")),
                str(description.get("Hostname", "")),
                str((node.get("Status") or {}).get("State", "unknown")),
                str((node.get("Spec") or {}).get("Availability", "active")),
                str(labels.get(RUNTIME_LABEL) or "runc"),
            )
        )
    return out


def inspect_service(engine: str, name: str) -> dict[str, Any] | None:
    found = _call(engine, f"inspecting service {name}", "GET", dockerapi.path("/services/{}", name))
    return None if found is None else dict(found)


def create_service(engine: str, spec: dict[str, Any]) -> str:
    created = _call(engine, f"creating service {spec['Name']}", "POST", "/services/create", body=spec)
    return str(created["ID"])


def update_service(engine: str, spec: dict[str, Any]) -> None:
    """Replace a service's spec (Swarm rolls its tasks over as its UpdateConfig says)."""
    name = spec["Name"]
    current = inspect_service(engine, name)
    if current is None:
        raise FnctlError(f"updating service {name}: not found")
    version = (current.get("Version") or {}).get("Index", 0)
    where = dockerapi.path("/services/{}/update", name)
    _call(engine, f"updating service {name}", "POST", where, query={"version": str(version)}, body=spec)


def remove_service(engine: str, name: str) -> None:
    _call(engine, f"removing service {name}", "DELETE", dockerapi.path("/services/{}", name))


def services(engine: str, labels: dict[str, str]) -> dict[str, int]:
    """The services carrying every label in `labels` (a value of "" matches any value), with their replicas."""
    query = {"filters": json.dumps({"label": [f"{k}={v}" if v else k for k, v in labels.items()]})}
    found = _call(engine, "listing services", "GET", "/services", query=query) or []
    out = {}
    for service in found:
        spec = service.get("Spec") or {}
        out[str(spec.get("Name"))] = int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas") or 0)
    return out


def tasks(engine: str, service: str) -> list[SwarmTask]:
    query = {"filters": json.dumps({"service": [service]})}
    found = _call(engine, f"listing the tasks of {service}", "GET", "/tasks", query=query) or []
    out = []
    for task in found:
        status = task.get("Status") or {}
        out.append(
            SwarmTask(
                str(task.get("ID")),
                int(task.get("Slot") or 0),
                str(task.get("NodeID") or ""),
                str(status.get("State", "")),
                str(task.get("DesiredState", "")),
                str((status.get("ContainerStatus") or {}).get("ContainerID") or ""),
                str(status.get("Err") or ""),
            )
        )
    return out


def service_logs(engine: str, service: str, *, since: float | None, follow: bool) -> Iterator[tuple[str, str]]:
    """A service's log lines from every task on every node, read through a manager: (task id, line)."""
    query = {"stdout": "1", "stderr": "1", "details": "1", "follow": "1" if follow else "0"}
    if since is not None:
        query["since"] = str(int(since))
    action = f"reading the logs of {service}"
    try:
        # A followed log may stay silent for as long as the function does: no read timeout then.
        with dockerapi.Stream(
            "GET", dockerapi.path("/services/{}/logs", service), query=query, timeout=None, engine=engine
        ) as answer:
            if answer.status >= 400:
                reply = b"".join(answer.chunks()).decode("utf-8", "replace")
                raise FnctlError(f"{action}: the Docker engine on {engine} refused: {reply.strip()[:300]}")
            for line in dockerio.log_lines(answer.chunks()):
                # details=1: each line starts with its task's attributes (k=v,k=v), then a space
                details, _, text = line.partition(" ")
                attributes = dict(item.partition("=")[::2] for item in details.split(","))
                yield attributes.get("com.docker.swarm.task.id", ""), text
    except dockerapi.Unreachable as exc:
        raise EngineUnavailable(f"{action}: no Docker engine answers on {engine} ({exc})") from None


@dataclass(frozen=True)
class TaskContainer:
    """A task's container as the node running it sees it."""

    id: str
    service: str
    slot: int
    running: bool
    labels: dict[str, str] = field(default_factory=dict)


def task_containers(engine: str, labels: dict[str, str]) -> list[TaskContainer]:
    """The Swarm task containers on this node carrying every label in `labels` (running or not)."""
    wanted = [f"{k}={v}" if v else k for k, v in labels.items()] + ["com.docker.swarm.task.name"]
    query = {"all": "1", "filters": json.dumps({"label": wanted})}
    found = _call(engine, "listing task containers", "GET", "/containers/json", query=query) or []
    out = []
    for container in found:
        container_labels = container.get("Labels") or {}
        slot = task_slot(str(container_labels.get("com.docker.swarm.task.name", "")))
        if slot is not None:
            out.append(
                TaskContainer(
                    str(container["Id"]),
                    str(container_labels.get("com.docker.swarm.service.name", "")),
                    slot,
                    container.get("State") == "running",
                    {str(k): str(v) for k, v in container_labels.items()},
                )
            )
    return out


def inspect_container(engine: str, container_id: str) -> dict[str, Any]:
    where = dockerapi.path("/containers/{}/json", container_id)
    found = _call(engine, f"inspecting container {container_id[:12]}", "GET", where)
    if found is None:
        raise FnctlError(f"inspecting container {container_id[:12]}: not found")
    return dict(found)
