"""Semantic checks: the rules a schema cannot express (references, handlers, rollouts, routes, paths; a
Trigger's own in `fnctl.manifest.triggerchecks`).

Each check takes typed values and yields (value, path, message); a function's source directory and Python
handler are `fnctl.manifest.sourcechecks`' (user code is parsed with `ast`, never imported).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fnctl.manifest.diagnostics import display_path
from fnctl.manifest.model import (
    MAX_DOCUMENT_SIZE,
    MAX_LIMITS,
    MIN_MEMORY,
    Collection,
    DesiredState,
    Finding,
    Function,
    Isolation,
    Kind,
    Policy,
    RowRule,
    RunAs,
    Trigger,
    TriggerType,
    View,
)
from fnctl.manifest.rolloutchecks import check_rollout
from fnctl.manifest.schemas import check_json_schema
from fnctl.manifest.sourcechecks import clear_caches, source_and_handler
from fnctl.manifest.triggerchecks import check_trigger
from fnctl.manifest.units import format_duration

MIN_GVISOR_PIDS = 64
FUNCTION_ROLE_PREFIX = "function:"  # the role of a `runAs: function` Function (fnctl.data.Caller.for_function)
_RESERVED_ENV = re.compile(r"^(FNCTL_|PYTHON)")


def check_state(
    state: DesiredState, root: Path, invalid: frozenset[tuple[Kind, str]] = frozenset()
) -> Iterator[Finding]:
    """`invalid`: the (kind, name) of documents declared but not built (their problems already reported), which
    references may name without a second, misleading "is not defined"."""
    clear_caches()  # per run: files may have changed since a previous run in this process
    yield from _unique_names(state)
    functions: dict[str, Function | None] = {name: None for kind, name in invalid if kind is Kind.FUNCTION}
    functions |= {f.name: f for f in state.functions}
    for function in state.functions:
        yield from check_function(function, root)
    for trigger in state.triggers:
        yield from _reference(trigger, ("spec", "function"), trigger.function, functions)
        yield from check_trigger(trigger)
    for view in state.views:
        yield from _reference(view, ("spec", "function"), view.function, functions)
    for policy in state.policies:
        for role, grant in policy.roles.items():
            yield from _function_role(policy, role, functions)
            for i, target in enumerate(grant.invoke):
                if target != "*":
                    yield from _reference(policy, ("spec", "roles", role, "invoke", i), target, functions)
    collections = {c.name for c in state.collections} | {name for kind, name in invalid if kind is Kind.COLLECTION}
    for collection in state.collections:
        yield from check_collection(collection)
    if state.collections:  # references are checked once the project declares collections at all
        for policy in state.policies:
            for role, grant in policy.roles.items():
                for key in ("read", "write"):
                    for i, item in enumerate(getattr(grant, key)):
                        name = item.collection if isinstance(item, RowRule) else item
                        if name != "*" and name not in collections:
                            where: tuple[str | int, ...] = ("spec", "roles", role, key, i)
                            if isinstance(item, RowRule):
                                where += ("collection",)
                            yield policy, where, f"collection {name!r} is not defined in these manifests"
    yield from _route_collisions(state.triggers)


def check_collection(collection: Collection) -> Iterator[Finding]:
    """Its schema is a JSON Schema; index fields are dotted paths (checked when parsed), no index twice."""
    if collection.schema is not None:
        problem = check_json_schema(collection.schema)
        if problem:
            yield collection, ("spec", "schema"), problem
    seen: dict[tuple[str, ...], int] = {}
    for i, index in enumerate(collection.indexes):
        if index.fields in seen:
            yield (
                collection,
                ("spec", "indexes", i),
                f"duplicate index on {', '.join(index.fields)} (same as index {seen[index.fields]})",
            )
        seen.setdefault(index.fields, i)
        if len(set(index.fields)) != len(index.fields):
            yield collection, ("spec", "indexes", i, "fields"), "an index names each field once"
    if collection.document_size > MAX_DOCUMENT_SIZE:
        yield (
            collection,
            ("spec", "limits", "documentSize"),
            f"documentSize is at most {MAX_DOCUMENT_SIZE // 2**20}Mi",
        )


def check_function(function: Function, root: Path) -> Iterator[Finding]:
    yield from source_and_handler(function, root)
    yield from _limits(function)
    yield from _env_and_secrets(function)
    for key in ("parameters", "returns"):
        schema = getattr(function, key)
        problem = check_json_schema(schema) if schema is not None else None
        if problem:
            yield function, ("spec", key), problem
    if function.scaling.min_instances > function.scaling.max_instances:
        yield (
            function,
            ("spec", "scaling", "minInstances"),
            f"minInstances ({function.scaling.min_instances}) exceeds maxInstances ({function.scaling.max_instances})",
        )
    yield from check_rollout(function)


def _unique_names(state: DesiredState) -> Iterator[Finding]:
    for kind, items in (
        (Kind.FUNCTION, state.functions),
        (Kind.TRIGGER, state.triggers),
        (Kind.VIEW, state.views),
        (Kind.POLICY, state.policies),
        (Kind.COLLECTION, state.collections),
    ):
        seen: dict[str, Any] = {}
        for item in items:
            first = seen.setdefault(item.name, item)
            if first is not item:
                yield (
                    item,
                    ("metadata", "name"),
                    f"duplicate {kind.value} name {item.name!r} (first defined at {_where(first)})",
                )


def _reference(
    item: Trigger | View | Policy, path: tuple[str | int, ...], name: str, functions: dict[str, Function | None]
) -> Iterator[Finding]:
    if name not in functions:
        yield item, path, f"function {name!r} is not defined in these manifests"


def _function_role(policy: Policy, role: str, functions: dict[str, Function | None]) -> Iterator[Finding]:
    """`function:NAME` is the role of a Function running with its own rights: NAME must be declared, with
    `runAs: function` (else the grant would never apply)."""
    if not role.startswith(FUNCTION_ROLE_PREFIX):
        return
    name = role.removeprefix(FUNCTION_ROLE_PREFIX)
    where: tuple[str | int, ...] = ("spec", "roles", role)
    if name not in functions:
        yield policy, where, f"role {role!r}: function {name!r} is not defined in these manifests"
    elif (function := functions[name]) is not None and function.run_as is not RunAs.FUNCTION:
        yield (
            policy,
            where,
            (f"role {role!r}: function {name!r} does not declare runAs: function, so it never acts with this role"),
        )


def _where(item: Any) -> str:
    doc = item.document
    if doc is None:
        return "?"
    pos = doc.position(("metadata", "name"))
    return f"{display_path(doc.file)}:{pos.line}"


def _limits(function: Function) -> Iterator[Finding]:
    limits, at = function.limits, ("spec", "limits")
    for key, value, maximum, shown in (
        ("timeout", limits.timeout, MAX_LIMITS.timeout, format_duration(MAX_LIMITS.timeout)),
        ("memory", limits.memory, MAX_LIMITS.memory, "4Gi"),
        ("tmp", limits.tmp, MAX_LIMITS.tmp, "1Gi"),
        ("payload", limits.payload, MAX_LIMITS.payload, "32Mi"),
        ("output", limits.output, MAX_LIMITS.output, "32Mi"),
    ):
        if value > maximum:
            yield function, at + (key,), f"{key} exceeds the maximum of {shown}"
    if limits.memory < MIN_MEMORY:
        yield function, at + ("memory",), "memory must be at least 32Mi (a Python runtime needs it to start)"
    if limits.timeout <= 0:
        yield function, at + ("timeout",), "timeout must be more than 0"
    if function.isolation is Isolation.GVISOR and limits.pids < MIN_GVISOR_PIDS:
        # runsc's own threads count against the container's pids limit: below this it cannot even start.
        yield (
            function,
            at + ("pids",),
            f"isolation: gvisor needs pids of at least {MIN_GVISOR_PIDS} (gVisor's own threads count against it)",
        )


def _env_and_secrets(function: Function) -> Iterator[Finding]:
    for key in function.env:
        if _RESERVED_ENV.match(key):
            yield function, ("spec", "env", key), f"{key!r} is reserved for the runtime (FNCTL_* and PYTHON*)"
    seen: set[str] = set()
    for i, secret in enumerate(function.secrets):
        if secret.name in seen or secret.name in function.env:
            yield function, ("spec", "secrets", i, "name"), f"{secret.name!r} is defined twice (env or secrets)"
        if _RESERVED_ENV.match(secret.name):
            yield function, ("spec", "secrets", i, "name"), f"{secret.name!r} is reserved for the runtime"
        seen.add(secret.name)


def _route_collisions(triggers: tuple[Trigger, ...]) -> Iterator[Finding]:
    seen: dict[tuple[str, str], Trigger] = {}
    for trigger in triggers:
        if trigger.type is not TriggerType.HTTP:
            continue
        shape = re.sub(r"\{[^}]+\}", "{}", trigger.config["path"].rstrip("/") or "/")
        methods = trigger.config.get("methods") or ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        for method in methods:
            first = seen.setdefault((method, shape), trigger)
            if first is not trigger:
                yield (
                    trigger,
                    ("spec", "http", "path"),
                    f"route {method} {trigger.config['path']} collides with trigger {first.name!r} ({_where(first)})",
                )
                break
