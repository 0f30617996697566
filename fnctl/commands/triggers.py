"""`fnctl triggers`, `fnctl enable TRIGGER` and `fnctl run TRIGGER`: the Triggers the last apply published,
with their health (consecutive faults, disabled after `disableAfter` of them: `fnctl.state.triggerstate`);
enabling one again (audited); running a manual trigger through the project's running gateway
(`POST /v1/triggers/NAME/run`: the gateway checks the `run` grant, routes, audits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fnctl.commands.functions import open_store
from fnctl.data.hooks import trigger_spec
from fnctl.deploy.actor import actor
from fnctl.errors import BadInput, FnctlError, UnknownName
from fnctl.gateway.client import GatewayCall, find, run_trigger
from fnctl.manifest.model import TriggerType
from fnctl.manifest.project import Project
from fnctl.state import triggerstate
from fnctl.state.location import StateLocation
from fnctl.state.store import Store


@dataclass(frozen=True)
class TriggerInfo:
    name: str
    type: str  # http, cron, on, manual
    function: str
    target: str  # what fires it: the path, the schedule, collection/event, "manual"
    faults: int
    disabled_at: float | None
    last_error: str | None
    order: int | None = None  # a data hook's: several on one event run by order
    failure_policy: str | None = None  # a before/after hook's: fail or ignore (onCommit events retry instead)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "function": self.function,
            "target": self.target,
            "faults": self.faults,
            "disabled": self.disabled_at is not None,
            "disabledAt": self.disabled_at,
            "lastError": self.last_error,
            "order": self.order,
            "failurePolicy": self.failure_policy,
        }


def _target(spec: dict[str, Any]) -> tuple[str, str]:
    for kind in TriggerType:
        config = spec.get(kind.value)
        if isinstance(config, dict):
            if kind is TriggerType.HTTP:
                return kind.value, str(config.get("path", ""))
            if kind is TriggerType.CRON:
                return kind.value, str(config.get("schedule", ""))
            if kind is TriggerType.DATA:
                hook = trigger_spec("", spec)
                return kind.value, f"{hook.collection} {hook.event}" + (f" (order {hook.order})" if hook.order else "")
            return kind.value, "manual"
    return "?", ""


def triggers(project: Project, state: StateLocation | None) -> list[TriggerInfo]:
    store = open_store(project, state)
    try:
        return _infos(store)
    finally:
        store.close()


def _infos(store: Store) -> list[TriggerInfo]:
    health = triggerstate.states(store)
    out = []
    for name, spec in sorted(store.resources("Trigger").items()):
        kind, target = _target(spec)
        known = health.get(name)
        # order and failurePolicy are a before/after hook's; onCommit events are retried and ordered per document
        hook = trigger_spec(name, spec) if kind == TriggerType.DATA.value else None
        hook = hook if hook is not None and hook.event != "onCommit" else None
        out.append(
            TriggerInfo(
                name,
                kind,
                str(spec.get("function", "")),
                target,
                known.faults if known else 0,
                known.disabled_at if known else None,
                known.last_error if known else None,
                hook.order if hook else None,
                ("ignore" if hook.ignore_failures else "fail") if hook else None,
            )
        )
    return out


def disabled(project: Project, state: StateLocation | None) -> list[TriggerInfo]:
    """The disabled triggers (what `fnctl status` warns about)."""
    return [t for t in triggers(project, state) if t.disabled_at is not None]


def enable(project: Project, state: StateLocation | None, name: str, *, by: str | None = None) -> TriggerInfo:
    """Enable the trigger and reset its count of faults (audited as `by`, default the OS/CI user: the
    dashboard passes its signed-in principal); BadInput when there is no such trigger."""
    store = open_store(project, state)
    try:
        if name not in store.resources("Trigger"):
            raise UnknownName("trigger", name, "does not exist", "see `fnctl triggers`")
        before = triggerstate.enable(store, name)
        detail = (
            "was enabled" if before is None or not before.disabled else f"was disabled after {before.faults} faults"
        )
        store.audit(
            actor=by or actor(), command="enable", action="trigger-enable", target=name, outcome="ok", detail=detail
        )
        return next(t for t in _infos(store) if t.name == name)
    finally:
        store.close()


def run(project: Project, state: StateLocation | None, name: str, event: Any, *, key: str | None) -> GatewayCall:
    """Run a manual trigger now through the project's running gateway (no event: its `manual.event`)."""
    store = open_store(project, state)
    try:
        store_id = store.id
        spec = store.resources("Trigger").get(name)
    finally:
        store.close()
    if spec is None:
        raise UnknownName("trigger", name, "does not exist", "see `fnctl triggers`")
    if not isinstance(spec.get("manual"), dict):
        raise BadInput(f"trigger {name!r} is not a manual trigger: only `manual:` triggers run by hand")
    if not find(project.gateway, project.name, store_id):
        raise FnctlError(
            f"no gateway of this project answers at {project.gateway}: a manual run goes through it (start `fnctl serve`)"
        )
    return run_trigger(project.gateway, name, event, key=key)
