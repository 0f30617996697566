"""Semantic checks: the rules a schema cannot express (references, handlers, cron, rollouts, routes, paths).

Each check takes typed values and yields (value, path, message); user code is parsed with `ast`, never
imported.
"""

from __future__ import annotations

import ast
import os
import re
from collections import deque
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
from fnctl.manifest.units import format_duration

MIN_GVISOR_PIDS = 64
FUNCTION_ROLE_PREFIX = "function:"  # the role of a `runAs: function` Function (fnctl.data.Caller.for_function)
_RESERVED_ENV = re.compile(r"^(FNCTL_|PYTHON)")


def check_state(state: DesiredState, root: Path) -> Iterator[Finding]:
    for cached in (_top_level_names, _escaping_symlink, _real, _real_parent, _real_path):
        cached.cache_clear()  # per run: files may have changed since a previous run in this process
    yield from _unique_names(state)
    functions = {f.name: f for f in state.functions}
    for function in state.functions:
        yield from check_function(function, root)
    for trigger in state.triggers:
        yield from _reference(trigger, ("spec", "function"), trigger.function, functions)
        yield from _trigger(trigger)
        yield from _retry(trigger)
    for view in state.views:
        yield from _reference(view, ("spec", "function"), view.function, functions)
    for policy in state.policies:
        for role, grant in policy.roles.items():
            yield from _function_role(policy, role, functions)
            for i, target in enumerate(grant.invoke):
                if target != "*":
                    yield from _reference(policy, ("spec", "roles", role, "invoke", i), target, functions)
    collections = {c.name for c in state.collections}
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
    yield from _source_and_handler(function, root)
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
    item: Trigger | View | Policy, path: tuple[str | int, ...], name: str, functions: dict[str, Function]
) -> Iterator[Finding]:
    if name not in functions:
        yield item, path, f"function {name!r} is not defined in these manifests"


def _function_role(policy: Policy, role: str, functions: dict[str, Function]) -> Iterator[Finding]:
    """`function:NAME` is the role of a Function running with its own rights: NAME must be declared, with
    `runAs: function` (else the grant would never apply)."""
    if not role.startswith(FUNCTION_ROLE_PREFIX):
        return
    name = role.removeprefix(FUNCTION_ROLE_PREFIX)
    where: tuple[str | int, ...] = ("spec", "roles", role)
    if name not in functions:
        yield policy, where, f"role {role!r}: function {name!r} is not defined in these manifests"
    elif functions[name].run_as is not RunAs.FUNCTION:
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


def _source_and_handler(function: Function, root: Path) -> Iterator[Finding]:
    if function.document is None:
        return
    # `..` is taken lexically from the manifest's real directory (a symlinked path to the project is fine);
    # paths are plain strings here: a thousand functions make pathlib's overhead count
    base = _real_parent(function.document.file)
    source = os.path.normpath(os.path.join(base, function.source))
    real_root = _real_path(root)
    at = ("spec", "source")
    if os.path.isabs(function.source) or not _within(real_root, source):
        yield function, at, f"source {function.source!r} escapes the project root {root}"
        return
    if not _within(real_root, _real(source)):
        yield function, at, f"source {function.source!r} is a symlink pointing outside the project"
        return
    if not os.path.isdir(source):
        yield function, at, f"source directory {function.source!r} does not exist"
        return
    escaping = _escaping_symlink(source, real_root)
    if escaping:
        yield function, at, f"{escaping} inside the source is a symlink pointing outside the project"
        return
    # Python handlers are checked here; other runtimes' (parsed by their own tools) by fnctl.runtimes
    problem = handler_problem(source, function.handler) if function.runtime.startswith("python") else None
    if problem:
        yield function, ("spec", "handler"), problem


@cache
def _real_parent(file: Path) -> str:
    """The real directory of a manifest file: asked for once per function, computed once per file."""
    return _real(os.path.abspath(file.parent))


@cache
def _real_path(path: Path) -> str:
    return _real(os.path.abspath(path))


@cache
def _real(path: str) -> str:
    """os.path.realpath of an absolute, normalised `path`, one lstat per new component (parents are cached)."""
    parent, name = os.path.split(path)
    if not name or parent == path:
        return path
    full = os.path.join(_real(parent), name)
    return os.path.realpath(full) if os.path.islink(full) else full


def _within(base: str, path: str) -> bool:
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


@cache
def _escaping_symlink(source: str, root: str) -> str | None:
    """The first entry below `source` (in name order) that is a symlink resolving outside `root`."""
    if not _any_escaping_symlink(source, root):
        return None  # the common case, found without sorting every directory
    pending = deque([source])
    while pending:
        directory = pending.popleft()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                if not _within(root, os.path.realpath(entry.path)):
                    return os.path.relpath(entry.path, source)
            elif entry.is_dir():
                pending.append(entry.path)
    return None


def _any_escaping_symlink(source: str, root: str) -> bool:
    pending = [source]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        if not _within(root, os.path.realpath(entry.path)):
                            return True
                    elif entry.is_dir():
                        pending.append(entry.path)
        except OSError:
            continue
    return False


def handler_problem(source: str, handler: str) -> str | None:
    """Why `handler` cannot be found in the directory `source` (parsed, never imported), or None."""
    if ":" in handler:
        file_part, attr = handler.rsplit(":", 1)
        candidates = [file_part]
        shown = file_part
    else:
        module, attr = handler.rsplit(".", 1)
        rel = os.path.join(*module.split("."))
        candidates = [rel + ".py", os.path.join(rel, "__init__.py")]
        shown = module
    paths = [os.path.join(source, c) for c in candidates]
    if not _within(source, os.path.normpath(paths[0])):
        return f"handler file {shown!r} is outside the source directory"
    found = next((i for i, path in enumerate(paths) if os.path.isfile(path)), None)
    if found is None:
        return f"handler module {shown!r} not found in the source directory (looked for {', '.join(candidates)})"
    names, error = _top_level_names(paths[found])
    found_name = candidates[found]
    if error:
        return f"cannot parse {found_name}: {error}"
    if attr not in names and "*" not in names:  # a star import may provide it: only running the code could tell
        return f"{found_name} defines no top-level {attr!r}"
    return None


@cache
def _top_level_names(path: str) -> tuple[frozenset[str], str | None]:
    try:
        tree = ast.parse(_read(path), filename=path)
    except SyntaxError as exc:
        return frozenset(), f"line {exc.lineno}: {exc.msg}" if exc.lineno else exc.msg
    except (OSError, ValueError) as exc:
        return frozenset(), str(exc)
    except (RecursionError, MemoryError):
        return frozenset(), "the code is nested too deeply to parse"
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names), None


def _read(path: str) -> bytes:
    """The bytes of a file, through the system calls alone: a file object costs more than a small handler."""
    chunks, fd = [], os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


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


def _trigger(trigger: Trigger) -> Iterator[Finding]:
    if trigger.type is not TriggerType.CRON:
        return
    at = ("spec", "cron")
    # Imported here, only for a cron trigger: croniter (with dateutil) adds ~0.025 s of CPU to every `fnctl
    # validate` (measured), which projects without cron would pay for nothing.
    from croniter import croniter

    schedule = trigger.config["schedule"]
    if not croniter.is_valid(schedule):
        yield trigger, at + ("schedule",), f"invalid cron expression {schedule!r} (expected e.g. '*/5 * * * *')"
    zone = trigger.config.get("timezone")
    if zone is not None:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory of zones, e.g. America
            yield trigger, at + ("timezone",), f"unknown time zone {zone!r} (expected e.g. UTC or Europe/Paris)"


def _retry(trigger: Trigger) -> Iterator[Finding]:
    spec = trigger.document.data.get("spec") if trigger.document is not None else None
    on_commit = trigger.type is TriggerType.DATA and trigger.config.get("event") == "onCommit"
    if isinstance(spec, dict) and "retry" in spec and not on_commit:
        yield trigger, ("spec", "retry"), "retry applies to onCommit triggers only (their events are retried)"


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
