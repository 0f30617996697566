"""Live state = the state store + the Docker engine: one container list call per command, whatever the
number of functions, matched to the store's instances by their io.fnctl.instance label.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from fnctl.deploy import swarmdeploy
from fnctl.deploy.diff import LiveCollection, LiveFunction, LiveInstance, LiveState
from fnctl.deploy.revisionspec import min_instances
from fnctl.engine import dockerio
from fnctl.engine.sandbox import labels
from fnctl.manifest.project import SwarmSettings
from fnctl.rollout.record import ACTIVE
from fnctl.rollout.weights import stable_revision
from fnctl.state import docstore, rolloutstore
from fnctl.state.revisions import InstanceRow, Revision, RevisionStatus
from fnctl.state.store import Store

Row = TypeVar("Row", Revision, InstanceRow)


def read_live(store: Store, project: str, swarm: SwarmSettings | None = None) -> LiveState:
    """With `swarm` (engine = "swarm"), the instances are the slots of the project's services."""
    if swarm is not None:
        return live_from_store(store, swarmdeploy.listed(swarm, project), dockerio.images_present)
    listed = dockerio.list_containers(labels(project, "", store=store.id))
    return live_from_store(store, listed, dockerio.images_present)


def live_from_store(
    store: Store, listed: list[dockerio.ContainerInfo], images_present: Callable[[set[str]], set[str]]
) -> LiveState:
    """The live state from the store's rows and what the engine showed: its containers (`listed`) and which
    of the images asked for it has. Apart so that tests can build it without a daemon."""
    rows = store.instances()
    containers = _containers_of(listed, rows)
    routes = store.routes()
    revisions, instances = _by_function(store.revisions()), _by_function(rows)
    images_needed = {
        r.image for rs in revisions.values() for r in rs if routes.get(r.function, {}).get(r.number, 0) > 0
    }
    present = images_present(images_needed)
    rolling = {
        row.function: (row.stable if row.stable is not None else row.canary, row.canary)
        for row in rolloutstore.rollouts(store, states=ACTIVE)
    }
    functions: dict[str, LiveFunction] = {}
    for name, weights in routes.items():
        own = revisions.get(name, [])
        live_instances = tuple(
            LiveInstance(
                i.id,
                i.revision,
                i.container_id,
                containers[i.id].status if i.id in containers else "missing",
                containers[i.id].image if i.id in containers else "",
                containers[i.id].id if i.id in containers else "",
            )
            for i in instances.get(name, [])
        )
        stable = stable_revision(weights)
        spec = next((r.spec for r in own if r.number == stable), {})
        functions[name] = LiveFunction(
            name=name,
            weights=weights,
            specs={r.number: r.spec for r in own if r.number in weights},
            spec_hashes={r.number: r.spec_hash for r in own},
            images={r.number: r.image for r in own},
            images_present={r.number: r.image in present for r in own if r.image in images_needed},
            instances=live_instances,
            min_instances=min_instances(spec),
            rollout=rolling.get(name),
        )
    orphans = unknown_containers(listed, rows)
    quarantined = {
        r.spec_hash: f"{r.function} revision {r.number}: {r.reason}"
        for rs in revisions.values()
        for r in rs
        if r.status is RevisionStatus.QUARANTINED
    }
    return LiveState(functions, orphans, quarantined, read_collections(store))


def read_collections(store: Store) -> dict[str, LiveCollection]:
    """The collections of the data file beside the store, with their document counts; none when there is no
    data file yet (reading does not create one)."""
    if not docstore.exists_at(store.location):
        return {}
    data = docstore.open_at(store.location)
    try:
        return {name: LiveCollection(name, row.spec, data.count(name)) for name, row in data.collections().items()}
    finally:
        data.close()


def unknown_containers(listed: Iterable[dockerio.ContainerInfo], rows: Iterable[InstanceRow]) -> tuple[str, ...]:
    """IDs of the containers that no instance row accounts for. Each listed container counts, not one per
    label: a copy of an instance carrying its labels is unknown too. A row still without its container ID
    (being started) accounts for the container its label names."""
    accounted = {(row.id, row.container_id) for row in rows}
    return tuple(
        sorted(
            c.id
            for c in listed
            if not {(c.labels.get("io.fnctl.instance", ""), c.id), (c.labels.get("io.fnctl.instance", ""), None)}
            & accounted
        )
    )


def orphan_reasons(
    listed: Iterable[dockerio.ContainerInfo], rows: Iterable[InstanceRow], routes: Mapping[str, Mapping[int, int]]
) -> dict[str, str]:
    """Container ID → why it is an orphan, for each of fnctl's containers that is no instance of a revision
    in the routing table: unknown to the store, of a function that is not deployed (deleted), or of a
    revision the table no longer lists (the gateway's for pinned requests, stopped once idle). Pure."""
    rows = list(rows)
    unknown = set(unknown_containers(listed, rows))
    by_instance = {row.id: row for row in rows}
    reasons: dict[str, str] = {}
    for container in listed:
        row = by_instance.get(container.labels.get("io.fnctl.instance", ""))
        if container.id in unknown or row is None:
            reasons[container.id] = "unknown to the state store"
        elif row.function not in routes:
            reasons[container.id] = f"{row.function} is not deployed (deleted)"
        elif row.revision not in routes[row.function]:
            reasons[container.id] = f"revision {row.revision} is not in the routing table"
    return reasons


def _containers_of(listed: list[dockerio.ContainerInfo], rows: list[InstanceRow]) -> dict[str, dockerio.ContainerInfo]:
    """Each instance's container, by instance ID; the one the store recorded when its label has copies."""
    recorded = {row.id: row.container_id for row in rows}
    found: dict[str, dockerio.ContainerInfo] = {}
    for container in listed:
        instance = container.labels.get("io.fnctl.instance", "")
        if instance not in found or container.id == recorded.get(instance):
            found[instance] = container
    return found


def _by_function(rows: list[Row]) -> dict[str, list[Row]]:
    """Rows grouped by function, keeping their order: one pass, so the cost grows linearly."""
    grouped: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row.function].append(row)
    return grouped
