"""The dashboard's buttons: the same functions as `fnctl promote`, `abort`, `retry`, `rollback`, `enable` and
`events replay`, acting as the signed-in principal (`ui:<principal>` in the audit). Each returns the rollout as `rollout status -o json`
prints it once the request was acted on (the gateway's controller loop drives it from there). Blocking: the
routes call them in a worker thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fnctl.commands import rollback, rollouts, triggers, views
from fnctl.dashboard.access import Action
from fnctl.deploy.session import Options
from fnctl.manifest.project import Project
from fnctl.rollout.machine import EventKind
from fnctl.state.location import StateLocation

REQUEST_TIMEOUT = 10.0  # seconds for a request to be acted on by whoever drives the rollout
LOCK_TIMEOUT = 20.0  # retry and rollback take the store's lock, briefly held by the controller loop

# What each button does, shown in its confirmation (the page asks before it acts).
CONSEQUENCES = {
    Action.PROMOTE: "moves the rollout past its current pause, gate or analysis (a blue-green switch, "
    "or the winning variant of an A/B test, takes 100% of the traffic)",
    Action.ABORT: "sends all traffic back to the stable revision in one change and quarantines the new one",
    Action.RETRY: "rolls the aborted revision out again from step 1, lifting its quarantine",
    Action.ROLLBACK: "switches all traffic back to the previous healthy revision at once and quarantines "
    "the one rolled away from (during a rollout: the same as abort)",
    Action.ENABLE: "turns the trigger back on and resets its count of faults; the gateway runs it again within "
    "half a second (a before-hook that still fails will refuse writes again, and disable itself again)",
    Action.REPLAY: "makes the trigger's dead letters pending again, their attempts counted afresh; the gateway "
    "delivers them within a second",
}


@dataclass(frozen=True)
class Actions:
    project: Project
    store_path: StateLocation

    def run(self, action: Action, name: str, principal: str, body: dict[str, Any]) -> dict[str, Any]:
        options = Options(state=self.store_path, actor=f"ui:{principal}", lock_timeout=LOCK_TIMEOUT)
        if action is Action.PROMOTE:
            data = {"full": bool(body.get("full")), "variant": body.get("variant") or None}
            return self._request(options, name, EventKind.PROMOTE_REQUESTED, data)
        if action is Action.ABORT:
            return self._request(options, name, EventKind.ABORT_REQUESTED, {})
        if action is Action.RETRY:
            rollouts.retry(self.project, options, name, _quiet)
        else:
            old, new = rollback.rollback(self.project, options, name, None, _quiet)
            return {"function": name, "from": old, "to": new}
        return rollouts.snapshot_json(
            rollouts.status(self.project, options, name, watch=False, timeout=None, on_event=_quiet, on_tick=_quiet)
        )

    def enable(self, trigger: str, principal: str) -> dict[str, Any]:
        """`fnctl enable TRIGGER`, audited as `ui:<principal>`: the trigger as `fnctl triggers -o json` lists it."""
        return triggers.enable(self.project, self.store_path, trigger, by=f"ui:{principal}").as_json()

    def replay(self, trigger: str, seqs: list[int], principal: str) -> dict[str, Any]:
        """`fnctl events replay [SEQ...] --trigger TRIGGER`, audited as `ui:<principal>`."""
        count = views.replay(self.project, self.store_path, trigger, seqs, False, by=f"ui:{principal}")
        return {"trigger": trigger, "replayed": count}

    def _request(self, options: Options, name: str, kind: EventKind, data: dict[str, Any]) -> dict[str, Any]:
        snapshot = rollouts.request(
            self.project,
            options,
            name,
            kind,
            data,
            wait=False,
            timeout=REQUEST_TIMEOUT,
            on_event=_quiet,
            on_tick=_quiet,
        )
        return rollouts.snapshot_json(snapshot)


def _quiet(*_: object) -> None:
    return None
