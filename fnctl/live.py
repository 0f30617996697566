"""Live state = the state store + the Docker engine: one container list call per command, whatever the
number of functions, matched to the store's instances by their io.fnctl.instance label.
"""

from __future__ import annotations

from fnctl import dockerio
from fnctl.diff import LiveFunction, LiveInstance, LiveState
from fnctl.sandbox import labels
from fnctl.store import RevisionStatus, Store


def read_live(store: Store, project: str) -> LiveState:
    containers = {c.labels.get("io.fnctl.instance", ""): c
                  for c in dockerio.list_containers(labels(project, "", store=store.id))}
    routes = store.routes()
    revisions = store.revisions()
    instances = store.instances()
    images_needed = {r.image for r in revisions if routes.get(r.function, {}).get(r.number, 0) > 0}
    present = dockerio.images_present(images_needed)
    known = {i.id for i in instances}
    functions: dict[str, LiveFunction] = {}
    for name, weights in routes.items():
        own = [r for r in revisions if r.function == name]
        live_instances = tuple(
            LiveInstance(i.id, i.revision, i.container_id, containers[i.id].status if i.id in containers else "missing",
                         containers[i.id].image if i.id in containers else "")
            for i in instances if i.function == name)
        stable = max(weights, key=lambda r: (weights[r], r)) if weights else None
        spec = next((r.spec for r in own if r.number == stable), {})
        functions[name] = LiveFunction(
            name=name, weights=weights,
            specs={r.number: r.spec for r in own if r.number in weights},
            spec_hashes={r.number: r.spec_hash for r in own},
            images={r.number: r.image for r in own},
            images_present={r.number: r.image in present for r in own if r.image in images_needed},
            instances=live_instances,
            min_instances=int(spec.get("scaling", {}).get("min_instances", 1)),
        )
    orphans = tuple(sorted(c.id for iid, c in containers.items() if iid not in known))
    quarantined = {r.spec_hash: f"{r.function} revision {r.number}: {r.reason}"
                   for r in revisions if r.status is RevisionStatus.QUARANTINED}
    return LiveState(functions, orphans, quarantined)
