"""Data hooks decided purely: which Triggers run on a write (`hook_specs`, `HookSpec`, in their stated order),
the event a hook gets (`before_event`, `after_event`), what its answer means (`verdict`), the limits of one
transaction's chain of hooks (`Chain`: depth, runs, the same hook on the same document twice) and their
errors. Running them (the gateway's invoke path, the shared transaction) is `fnctl.gateway.hooks`'s.

A before-hook (`beforeCreate`, `beforeUpdate`, `beforeDelete`) answers nothing (accept), the changed document
(an object, passed to the next hook, then checked against the schema; its `id`, when it has one, must stay the
document's) or aborts (`raise context.Abort("reason")` → 422). An after-hook's answer is ignored; its writes
join the writer's transaction. An error or a timeout refuses the write (fail closed) unless the trigger says
`failurePolicy: ignore`; so does a run refused for want of room (`HookOverloaded`: 503 with Retry-After), which
is not counted as the hook's fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fnctl.data.caller import Caller
from fnctl.data.errors import DataError
from fnctl.manifest.units import parse_duration

DEFAULT_TIMEOUT = 2.0  # seconds
DEFAULT_DISABLE_AFTER = 3  # consecutive faults
MAX_DEPTH = 3  # hook → write → hook: hooks run for writes at depth 0, 1 and 2
MAX_RUNS = 50  # hook runs in one transaction
ABORT_TYPE = "fnctl.Abort"  # the error type the runtime reports for `context.Abort`
# The write operations and the events of their hooks.
EVENTS = {"insert": "Create", "replace": "Update", "patch": "Update", "delete": "Delete"}


class HookAborted(DataError):
    """A before-hook refused the write with `context.Abort(reason)` (a verdict, not a fault)."""

    status, type, title = 422, "aborted", "Refused by a hook"


class HookFailed(DataError):
    """A hook raised, timed out, went over a limit or answered something that is not a document: the write is
    refused naming the hook (unless `failurePolicy: ignore`)."""

    status, type, title = 502, "hook-failed", "A hook failed"


class HookOverloaded(DataError):
    """A hook's function had no room for the run (every instance busy and its queue full, here or on each peer
    gateway asked): it ran nothing, which is no fault of the hook's, so the write is refused as the gateway
    refuses a run for want of room, with when to try again (`retry_after`, the refusal's Retry-After) — unless
    `failurePolicy: ignore`, which goes on without it."""

    status, type, title = 503, "hook-overloaded", "A hook's function is overloaded"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class HookLoop(DataError):
    """A chain of hooks went past a limit: depth, runs per transaction, or the same hook twice on a document."""

    status, type, title = 508, "hook-loop", "Hook chain stopped"


class TriggerDisabled(DataError):
    """A disabled before-hook (after `disableAfter` consecutive faults) refuses writes until `fnctl enable`."""

    status, type, title = 503, "trigger-disabled", "Trigger disabled"


@dataclass(frozen=True)
class HookSpec:
    name: str  # the Trigger's
    function: str
    collection: str
    event: str  # beforeCreate, afterUpdate, ...
    order: int = 0
    timeout: float = DEFAULT_TIMEOUT
    ignore_failures: bool = False  # failurePolicy: ignore
    disable_after: int = DEFAULT_DISABLE_AFTER
    skip_when_disabled: bool = False  # whenDisabled: skip

    @property
    def before(self) -> bool:
        return self.event.startswith("before")


def trigger_spec(name: str, spec: Mapping[str, Any]) -> HookSpec:
    """A Trigger resource's settings as a hook (for a manual trigger: its function, timeout, disableAfter).
    The spec passed validation when it was applied; a value that does not parse takes its default."""
    raw = spec.get("on")
    on: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    try:
        timeout = parse_duration(spec["timeout"]) if "timeout" in spec else DEFAULT_TIMEOUT
    except (TypeError, ValueError):
        timeout = DEFAULT_TIMEOUT
    order, after = spec.get("order", 0), spec.get("disableAfter", DEFAULT_DISABLE_AFTER)
    return HookSpec(
        name,
        str(spec.get("function", "")),
        str(on.get("collection", "")),
        str(on.get("event", "")),
        order if isinstance(order, int) else 0,
        timeout,
        spec.get("failurePolicy") == "ignore",
        after if isinstance(after, int) and after > 0 else DEFAULT_DISABLE_AFTER,
        spec.get("whenDisabled") == "skip",
    )


def hook_specs(resources: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], tuple[HookSpec, ...]]:
    """(collection, event) → its hooks in the order they run: `order`, then name. onCommit triggers are not
    hooks of the write (they are delivered after the commit)."""
    found: dict[tuple[str, str], list[HookSpec]] = {}
    for name, spec in resources.items():
        if not isinstance(spec.get("on"), Mapping):
            continue
        hook = trigger_spec(name, spec)
        if hook.event.startswith(("before", "after")):
            found.setdefault((hook.collection, hook.event), []).append(hook)
    return {key: tuple(sorted(hooks, key=lambda h: (h.order, h.name))) for key, hooks in found.items()}


def caller_json(caller: Caller) -> dict[str, Any]:
    return {"id": caller.subject, "kind": caller.kind, "roles": sorted(caller.roles), "tenant": caller.tenant}


def before_event(
    hook: HookSpec, op: str, id: str, before: Any, proposed: Any, caller: Caller, depth: int
) -> dict[str, Any]:
    return {
        "trigger": hook.name,
        "event": hook.event,
        "collection": hook.collection,
        "op": op,
        "id": id,
        "before": before,
        "proposed": proposed,
        "caller": caller_json(caller),
        "depth": depth,
    }


def after_event(
    hook: HookSpec, op: str, id: str, before: Any, after: Any, caller: Caller, depth: int
) -> dict[str, Any]:
    return {
        "trigger": hook.name,
        "event": hook.event,
        "collection": hook.collection,
        "op": op,
        "id": id,
        "before": before,
        "after": after,
        "caller": caller_json(caller),
        "depth": depth,
    }


def verdict(hook: HookSpec, result: Any, id: str) -> dict[str, Any] | None:
    """What a before-hook's result means: None (accept as proposed) or the changed document. HookFailed for
    anything else, or for a document whose `id` is not the document's."""
    if result is None:
        return None
    if not isinstance(result, dict):
        raise HookFailed(
            f"hook {hook.name} returned {type(result).__name__}: a hook returns nothing (accept) or the "
            "changed document (an object)"
        )
    if "id" in result and result["id"] != id:
        raise HookFailed(f"hook {hook.name} changed the document's id ({id!r} to {result['id']!r}): ids never change")
    return result


def abort_reason(message: str) -> str | None:
    """The reason of a `context.Abort`, from the failure message the runtime reported (else None)."""
    prefix = ABORT_TYPE + ": "
    return message[len(prefix) :] if message.startswith(prefix) else None


@dataclass
class _Runs:
    count: int = 0
    egress: bool = False  # a hook function with egress ran: a conflict at the commit answers 409, no re-run


@dataclass(frozen=True)
class Chain:
    """Where a write stands in its transaction's chain of hooks: the depth of the write (0: the client's own),
    the (hook, collection, id) runs above it, and the transaction's run counter (shared by the whole chain)."""

    depth: int = 0
    seen: frozenset[tuple[str, str, str]] = frozenset()
    runs: _Runs = field(default_factory=_Runs)
    max_depth: ClassVar[int] = MAX_DEPTH
    max_runs: ClassVar[int] = MAX_RUNS

    def enter(self, hook: HookSpec, id: str) -> Chain:
        """The chain the hook's own writes continue; HookLoop when running it would pass a limit."""
        if self.depth >= self.max_depth:
            raise HookLoop(
                f"hook {hook.name} not run: hooks that write run hooks, and this chain reached the depth limit "
                f"of {self.max_depth}"
            )
        key = (hook.name, hook.collection, id)
        if key in self.seen:
            raise HookLoop(f"hook {hook.name} would run twice on {hook.collection}/{id} in one chain of hooks")
        if self.runs.count >= self.max_runs:
            raise HookLoop(f"more than {self.max_runs} hook runs in one transaction")
        self.runs.count += 1
        return Chain(self.depth + 1, self.seen | {key}, self.runs)
