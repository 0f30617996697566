"""Desired vs live, as pure values: per function create / update / delete / unchanged, the field-level
changes of its spec, and drift (what the engine shows that the store did not expect); per Collection
create / update (schema, indexes, limits) / delete, with the documents a delete would drop.

Takes values, returns values: no Docker, no SQLite, no git.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fnctl.rollout.weights import stable_revision


class ChangeKind(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    UNCHANGED = "unchanged"


class DriftKind(StrEnum):
    INSTANCE_MISSING = "instance missing"  # the store has it, the engine does not
    INSTANCE_EXITED = "instance exited"
    INSTANCE_CHANGED = "instance changed outside fnctl"  # image or labels differ from its revision
    TOO_FEW_INSTANCES = "too few instances"
    IMAGE_REMOVED = "image removed"


@dataclass(frozen=True)
class LiveInstance:
    id: str
    revision: int
    container_id: str | None
    status: str  # the engine's: running | exited | ... ; "missing" when the engine has no such container
    image: str  # the image the container runs, as the engine reports it
    engine_id: str = ""  # the container's ID as the engine reports it ("" when missing)


@dataclass(frozen=True)
class LiveFunction:
    """A deployed function as the store and engine show it."""

    name: str
    weights: dict[int, int]  # revision → percent
    specs: dict[int, dict[str, Any]]  # revision → canonical spec
    spec_hashes: dict[int, str]
    images: dict[int, str]  # revision → image tag
    images_present: dict[int, bool]
    instances: tuple[LiveInstance, ...] = ()
    min_instances: int = 1
    rollout: tuple[int, int] | None = None  # (stable, canary) of a rollout under way

    @property
    def stable(self) -> int | None:
        """The revision taking most traffic (the only one, outside a rollout)."""
        return stable_revision(self.weights)


@dataclass(frozen=True)
class LiveCollection:
    """A collection as the data store holds it: its stored spec and how many documents it has (all tenants)."""

    name: str
    spec: dict[str, Any]  # {schema, indexes: [{fields, unique}], limits: {documentSize}}
    documents: int


@dataclass(frozen=True)
class LiveState:
    functions: dict[str, LiveFunction]
    orphans: tuple[str, ...] = ()  # container IDs labelled for this project but unknown to the store
    quarantined: dict[str, str] = field(default_factory=dict)  # spec hash → why
    collections: dict[str, LiveCollection] = field(default_factory=dict)


@dataclass(frozen=True)
class Desired:
    name: str
    spec: dict[str, Any]
    spec_hash: str


@dataclass(frozen=True)
class FieldChange:
    path: str  # dotted: limits.memory, env.GREETING
    old: Any
    new: Any


@dataclass(frozen=True)
class Drift:
    kind: DriftKind
    detail: str
    instance: str | None = None
    revision: int | None = None


@dataclass(frozen=True)
class Change:
    function: str
    kind: ChangeKind
    live_revision: int | None
    spec_hash: str | None
    fields: tuple[FieldChange, ...] = ()
    drift: tuple[Drift, ...] = ()


@dataclass(frozen=True)
class CollectionChange:
    name: str
    kind: ChangeKind
    fields: tuple[FieldChange, ...] = ()  # schema.*, indexes, limits.documentSize
    documents: int = 0  # the live collection's documents (what a delete would drop)


_MISSING: Any = object()


def diff(desired: list[Desired], live: LiveState) -> list[Change]:
    """One Change per function present on either side, sorted by name."""
    changes: list[Change] = []
    wanted = {d.name: d for d in desired}
    for name in sorted(set(wanted) | set(live.functions)):
        want, have = wanted.get(name), live.functions.get(name)
        if want is None:
            assert have is not None  # the name came from one side or the other
            changes.append(Change(name, ChangeKind.DELETE, have.stable, None))
        elif have is None or have.stable is None:
            changes.append(Change(name, ChangeKind.CREATE, None, want.spec_hash, tuple(field_changes({}, want.spec))))
        else:
            # Under a rollout, the manifests are compared with the revision being rolled out (the rollout
            # goes on when they match), and a change replaces the revision traffic came from.
            stable, target = have.rollout if have.rollout else (have.stable, have.stable)
            kind = ChangeKind.UNCHANGED if have.spec_hashes.get(target) == want.spec_hash else ChangeKind.UPDATE
            fields = tuple(field_changes(have.specs.get(target, {}), want.spec)) if kind is ChangeKind.UPDATE else ()
            changes.append(Change(name, kind, stable, want.spec_hash, fields, tuple(drift_of(have))))
    return changes


def field_changes(old: Any, new: Any, path: str = "") -> Iterator[FieldChange]:
    """Leaf-level differences between two JSON values; lists compare whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            yield from field_changes(old.get(key, _MISSING), new.get(key, _MISSING), sub)
    elif old != new:
        yield FieldChange(path, None if old is _MISSING else old, None if new is _MISSING else new)


def drift_of(function: LiveFunction) -> Iterator[Drift]:
    """What differs between the store's view of a deployed function and the engine's."""
    serving = {r for r, w in function.weights.items() if w > 0}
    for revision in sorted(serving):
        if not function.images_present.get(revision, True):
            yield Drift(
                DriftKind.IMAGE_REMOVED,
                f"image {function.images.get(revision)} of revision {revision} is gone",
                revision=revision,
            )
    healthy = 0
    for instance in function.instances:
        if instance.status == "missing":
            yield Drift(
                DriftKind.INSTANCE_MISSING, f"instance {instance.id} has no container", instance.id, instance.revision
            )
        elif instance.status != "running":
            yield Drift(
                DriftKind.INSTANCE_EXITED,
                f"instance {instance.id} is {instance.status}",
                instance.id,
                instance.revision,
            )
        elif function.images.get(instance.revision) not in (instance.image, None):
            yield Drift(
                DriftKind.INSTANCE_CHANGED,
                f"instance {instance.id} runs {instance.image}, not {function.images.get(instance.revision)}",
                instance.id,
                instance.revision,
            )
        elif instance.container_id and instance.engine_id and instance.engine_id != instance.container_id:
            yield Drift(
                DriftKind.INSTANCE_CHANGED,
                f"instance {instance.id} is container {instance.engine_id[:12]}, "
                f"not the {instance.container_id[:12]} fnctl started",
                instance.id,
                instance.revision,
            )
        elif instance.revision in serving:
            healthy += 1
    wanted = function.min_instances * len(serving)
    if healthy < wanted:
        yield Drift(DriftKind.TOO_FEW_INSTANCES, f"{healthy} of {wanted} instances running", revision=function.stable)


def diff_collections(desired: Mapping[str, dict[str, Any]], live: LiveState) -> list[CollectionChange]:
    """One CollectionChange per collection on either side, sorted by name. `desired`: name → the spec as the
    data store keeps it (`fnctl.data.collections.stored_spec`), so that equal means unchanged."""
    changes: list[CollectionChange] = []
    for name in sorted(set(desired) | set(live.collections)):
        want, have = desired.get(name), live.collections.get(name)
        if want is None:
            assert have is not None
            changes.append(CollectionChange(name, ChangeKind.DELETE, (), have.documents))
        elif have is None:
            changes.append(CollectionChange(name, ChangeKind.CREATE, tuple(field_changes({}, want))))
        elif have.spec == want:
            changes.append(CollectionChange(name, ChangeKind.UNCHANGED, (), have.documents))
        else:
            changes.append(
                CollectionChange(name, ChangeKind.UPDATE, tuple(field_changes(have.spec, want)), have.documents)
            )
    return changes


def refused_drops(collections: list[CollectionChange], *, prune: bool, force: bool) -> list[CollectionChange]:
    """The deletes an apply must refuse: collections that still hold documents, unless --prune --force."""
    if not prune or force:
        return []
    return [c for c in collections if c.kind is ChangeKind.DELETE and c.documents > 0]


def has_changes(
    changes: list[Change], live: LiveState, *, prune: bool = True, collections: list[CollectionChange] | None = None
) -> bool:
    return (
        bool(live.orphans)
        or any(
            (c.kind is not ChangeKind.UNCHANGED and (prune or c.kind is not ChangeKind.DELETE)) or c.drift
            for c in changes
        )
        or any(
            c.kind is not ChangeKind.UNCHANGED and (prune or c.kind is not ChangeKind.DELETE) for c in collections or ()
        )
    )
