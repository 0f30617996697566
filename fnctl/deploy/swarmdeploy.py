"""The executor's instances under `engine = "swarm"` (docs/swarm.md): a revision's instances are the slots of
its Swarm service. The executor calls here at its two engine points (start and check a revision's
instances; remove one) when its context carries Swarm settings; nothing else in a deploy changes.

A revision's service has one instance row per slot (`<service>.<slot>`, the service's name as its
container), so that a revision's instances count as on one host (minInstances, `status`, `recover`). Swarm,
not fnctl, restarts and reschedules a slot's task: as long as the service exists, its slots are taken as
running, and a deploy never "heals" one; removing any slot's row removes the service (all its slots' rows
go with their revision).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from fnctl.engine import dockerio, swarmio
from fnctl.engine.instances import Instance
from fnctl.engine.swarm import NodeAgent, SwarmEngine, SwarmUnsupported, forget_slots, prepare_slots, service_name
from fnctl.engine.swarmspec import Placement, mount_source
from fnctl.errors import EngineUnavailable, FnctlError
from fnctl.manifest.model import Function
from fnctl.manifest.project import SwarmSettings
from fnctl.state.revisions import InstanceRow, InstanceState
from fnctl.state.store import Store

START_TIMEOUT = 60.0  # seconds for a new service's tasks to run (a node pulling nothing: ~1-5 s here)


def engine(settings: SwarmSettings) -> SwarmEngine:
    return SwarmEngine(settings.manager, settings.instance_root)


def slot_id(service: str, slot: int) -> str:
    return f"{service}.{slot}"


def start_checked(
    store: Store,
    settings: SwarmSettings,
    project: str,
    function: Function,
    revision: int,
    image: str,
    secret_values: Mapping[str, str],
    count: int,
    *,
    progress: Callable[[str], None],
    health_check: Callable[[Instance], None],
) -> None:
    """Create the revision's service with `count` replicas, wait for its tasks, health-check those on this
    machine's node (`swarm.node`), and record its slots READY. On any failure the service and its rows go."""
    if function.scaling.min_instances == 0:
        raise SwarmUnsupported(
            f'{function.name}: minInstances: 0 is not available with engine = "swarm": Swarm keeps a service\'s '
            "replicas running; set minInstances to 1 or more (docs/swarm.md)"
        )
    manager = engine(settings)
    service = service_name(project, function.name, str(revision))
    # Recorded first, as on one host: a crash from here on leaves STARTING rows that `recover` removes
    # (and the service with them).
    for slot in range(1, count + 1):
        store.add_instance(
            InstanceRow(
                slot_id(service, slot),
                function.name,
                revision,
                service,
                mount_source(settings.instance_root, service),
                InstanceState.STARTING,
                time.time(),
            )
        )
    try:
        progress(f"{function.name}: service {service}, {count} replica(s), for revision {revision}")
        manager.deploy(
            function,
            project=project,
            revision=str(revision),
            image=image,
            placement=Placement(count, settings.max_per_node),
        )
        # A bind mount's source must exist before a task starts there: made here for every node under this
        # machine's instance root (all of them when the nodes share the machine or the root); a node
        # elsewhere gets its own from its gateway (`NodeAgent.sync`), and Swarm retries a task meanwhile.
        for hostname in manager.hostnames().values():
            prepare_slots(settings.instance_root, hostname, service, count)
        try:
            manager.wait_running(service, count, timeout=START_TIMEOUT)
        except EngineUnavailable as exc:
            raise EngineUnavailable(_image_hint(exc.message, image)) from None
        checked = 0
        agent = NodeAgent(settings.node, settings.instance_root)
        current = str((swarmio.inspect_service(settings.manager, service) or {}).get("ID", ""))
        for local in agent.local_instances(project, service, service_id=current):
            progress(f"{function.name}: health-checking task {local.service}.{local.slot} on {agent.hostname}")
            health_check(agent.connect(function, local, secret_values))
            checked += 1
        if not checked:
            progress(
                f"{function.name}: no task of revision {revision} on this node ({agent.hostname}): not health-checked here"
            )
        for slot in range(1, count + 1):
            store.update_instance(slot_id(service, slot), state=InstanceState.READY)
    except BaseException:
        _remove_service(store, settings, service, function.name)
        raise


def remove(store: Store, settings: SwarmSettings, row: InstanceRow) -> None:
    """Remove the service of `row`'s revision (Swarm stops its tasks: each drains what it accepted within
    the stop grace period) and the rows of all its slots."""
    _remove_service(store, settings, row.container_id or row.id.rsplit(".", 1)[0], row.function)


def _remove_service(store: Store, settings: SwarmSettings, service: str, function: str) -> None:
    manager = engine(settings)
    if swarmio.inspect_service(settings.manager, service) is not None:
        manager.remove(service)
    for hostname in manager.hostnames().values():
        forget_slots(settings.instance_root, hostname, service)
    for row in store.instances(function):
        if row.container_id == service:
            store.remove_instance(row.id)


def connect_local(
    settings: SwarmSettings, project: str, function: Function, revision: int, secrets: Mapping[str, str] | None = None
) -> Instance | None:
    """A connection to a running task of the revision's service on this machine's node (`swarm.node`),
    configured with `secrets`; None when none there answers. What a rollout's synthetic checks and
    `fnctl invoke --direct` invoke."""
    agent = NodeAgent(settings.node, settings.instance_root)
    service = service_name(project, function.name, str(revision))
    current = str((swarmio.inspect_service(settings.manager, service) or {}).get("ID", ""))
    for local in agent.local_instances(project, service, service_id=current):
        try:
            return agent.connect(function, local, secrets or {}, timeout=5.0)
        except FnctlError:
            continue  # stopping, or being replaced: the next one
    return None


def listed(settings: SwarmSettings, project: str) -> list[dockerio.ContainerInfo]:
    """The project's services as the live state reads containers: every slot of an existing service counts
    as running (Swarm replaces its tasks), under its slot's instance id and its service's image."""
    found = []
    manager = engine(settings)
    for service, replicas in manager.services(project).items():
        spec = (swarmio.inspect_service(settings.manager, service) or {}).get("Spec") or {}
        image = str(((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")).split("@")[0]
        for slot in range(1, replicas + 1):
            instance = slot_id(service, slot)
            found.append(dockerio.ContainerInfo(service, instance, "running", {"io.fnctl.instance": instance}, image))
    return found


def tasks(settings: SwarmSettings, services: set[str]) -> dict[str, list[tuple[int, str, str, str]]]:
    """Each service's tasks meant to run: (slot, state, node hostname, container id), by slot."""
    manager = engine(settings)
    hostnames = manager.hostnames()
    out: dict[str, list[tuple[int, str, str, str]]] = {}
    for service in sorted(services):
        found = [t for t in swarmio.tasks(settings.manager, service) if t.desired == "running"]
        out[service] = sorted((t.slot, t.state, hostnames.get(t.node_id, "?"), t.container_id) for t in found)
    return out


def logs(settings: SwarmSettings, services: Mapping[str, int], since: float | None, follow: bool) -> Iterator[str]:
    """The log lines of the tasks of `services` (service → revision) on every node, read through the manager,
    each prefixed with its task as `fnctl status` names it (`<service>.<slot>@<node>`) and its revision;
    followed only when there is one service."""
    hostnames = engine(settings).hostnames()
    for service, revision in sorted(services.items()):
        named = {
            t.id: f"{service}.{t.slot}@{hostnames.get(t.node_id, '?')}"
            for t in swarmio.tasks(settings.manager, service)
        }
        lines = swarmio.service_logs(settings.manager, service, since=since, follow=follow and len(services) == 1)
        for task, line in lines:
            yield f"[{named.get(task, task[:12])} r{revision}] {line}"


def _image_hint(message: str, image: str) -> str:
    if "No such image" in message or "image" in message.lower() and "not" in message.lower():
        return (
            f"{message}. Every node needs the image {image}: push it to a registry the nodes pull from, or load it "
            "into each node (`scripts/swarm-nodes.sh load IMAGE` on the test swarm; docs/swarm.md)"
        )
    return message
