"""What the dashboard's /v1/ endpoints answer, computed by the commands' own functions so that each is exactly
what the CLI prints with `-o json` (the composite views add to it, never reshape it). Blocking: the routes
call these in a worker thread, each with a connection of its own."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fnctl.commands import audit, functions, rollouts
from fnctl.commands import triggers as triggers_command
from fnctl.commands import views as events_command
from fnctl.deploy import rolloutdriver
from fnctl.deploy.diff import field_changes
from fnctl.deploy.session import Options
from fnctl.errors import BadInput, FnctlError
from fnctl.manifest.project import Project
from fnctl.manifest.stages import Stage
from fnctl.rollout.abstats import report_to_json
from fnctl.rollout.weights import stable_revision
from fnctl.state import metricstore, rolloutstore
from fnctl.state.auditlog import AuditFilter
from fnctl.state.location import StateLocation
from fnctl.state.store import connect

SPARK_SECONDS = 300  # the sparklines' window


class NoSuchItem(FnctlError):
    """No such function, revision or rollout (404)."""


@dataclass(frozen=True)
class Reads:
    project: Project
    store_path: StateLocation

    @property
    def options(self) -> Options:
        return Options(state=self.store_path)

    def functions(self) -> list[dict[str, Any]]:
        """`fnctl status -o json`."""
        return functions.status_json(functions.status(self.project, self.store_path))

    def history(self, name: str) -> list[dict[str, Any]]:
        """`fnctl history NAME -o json`."""
        try:
            return [functions.revision_json(r) for r in functions.history(self.project, self.store_path, name)]
        except BadInput as exc:
            raise NoSuchItem(str(exc)) from None

    def rollout(self, name: str) -> dict[str, Any]:
        """`fnctl rollout status NAME -o json`."""
        snapshot = self._status(name)
        return rollouts.snapshot_json(snapshot)

    def _status(self, name: str) -> rollouts.Snapshot:
        try:
            return rollouts.status(
                self.project, self.options, name, watch=False, timeout=None, on_event=_ignore, on_tick=_ignore
            )
        except rollouts.NoRollout as exc:
            raise NoSuchItem(str(exc)) from None

    def rollout_view(self, name: str) -> dict[str, Any]:
        """The rollout page: `status` (as `rollout status -o json`), `events` (each as a line of `-o ndjson`)
        and `stages` (the step list, with each analysis' thresholds)."""
        snapshot = self._status(name)
        store = connect(self.store_path)
        try:
            events = rolloutstore.events(store, snapshot.row.id)
        finally:
            store.close()
        return {
            "status": rollouts.snapshot_json(snapshot),
            "events": [rollouts.event_json(e, snapshot.row) for e in events],
            "stages": [_stage_json(s) for s in snapshot.stages],
        }

    def abtest(self, name: str) -> dict[str, Any]:
        """`fnctl abtest report NAME -o json`."""
        try:
            return {"function": name, **report_to_json(rollouts.abtest_report(self.project, self.options, name))}
        except rollouts.NoRollout as exc:
            raise NoSuchItem(str(exc)) from None

    def audit(self, query: dict[str, str]) -> list[dict[str, object]]:
        """`fnctl audit [--since S] [--function F] [--actor A] [--invocations] [--limit N] -o json`."""
        since = query.get("since") or None
        limit = query.get("limit", "100")
        if not limit.isdigit():
            raise BadInput("limit must be a whole number")
        where = AuditFilter(
            since=audit.parse_since(since, time.time()) if since else None,
            target=query.get("function") or None,
            actor=query.get("actor") or None,
        )
        store = connect(self.store_path)
        try:
            rows = audit.records(store, where, invocations=query.get("invocations") == "true", limit=int(limit))
        finally:
            store.close()
        return [audit.record_json(r) for r in rows]

    def function(self, name: str) -> dict[str, Any]:
        """The function page: its revisions (as `fnctl history -o json`), its triggers and, per revision, the
        requests and errors of each second of the last five minutes."""
        revisions = self.history(name)
        store = connect(self.store_path)
        try:
            triggers = [
                {"name": trigger, **spec}
                for trigger, spec in store.resources("Trigger").items()
                if spec.get("function") == name
            ]
            since = int(time.time()) - SPARK_SECONDS
            series = metricstore.series(store, name, since)
        finally:
            store.close()
        return {"function": name, "revisions": revisions, "triggers": triggers, "traffic": _traffic(series, since)}

    def traffic(self) -> dict[str, Any]:
        """Every function's requests and errors per second and revision, for the list's sparklines."""
        store = connect(self.store_path)
        try:
            since = int(time.time()) - SPARK_SECONDS
            return {name: _traffic(metricstore.series(store, name, since), since) for name in store.routes()}
        finally:
            store.close()

    def spec_diff(self, name: str, old: int, new: int) -> dict[str, Any]:
        """What changed between two revisions' specs, leaf by leaf (as `fnctl diff` compares them)."""
        store = connect(self.store_path)
        try:
            specs = [store.revision(name, number) for number in (old, new)]
        finally:
            store.close()
        if specs[0] is None or specs[1] is None:
            raise NoSuchItem(f"{name} has no revision {old if specs[0] is None else new}")
        changes = field_changes(specs[0].spec, specs[1].spec)
        return {
            "function": name,
            "from": old,
            "to": new,
            "changes": [{"path": c.path, "old": c.old, "new": c.new} for c in changes],
        }

    def triggers(self) -> list[dict[str, Any]]:
        """`fnctl triggers -o json`."""
        return [t.as_json() for t in triggers_command.triggers(self.project, self.store_path)]

    def events(self, query: dict[str, str]) -> list[dict[str, Any]]:
        """`fnctl events ls [--status S] [--trigger T] [--limit N] [--after SEQ] -o json`."""
        numbers = {k: query.get(k, default) for k, default in (("limit", "100"), ("after", "0"))}
        if not all(v.isascii() and v.isdigit() for v in numbers.values()):
            raise BadInput("limit and after must be whole numbers")
        which, trigger = query.get("status") or None, query.get("trigger") or None
        found = events_command.list_events(
            self.project, self.store_path, which, trigger, int(numbers["limit"]), int(numbers["after"])
        )
        return [events_command.event_json(e) for e in found]

    def event_counts(self) -> dict[str, dict[str, int]]:
        """Per onCommit trigger: its events pending, delivered and dead (none without a data file)."""
        try:
            return events_command.event_counts(self.project, self.store_path)
        except BadInput:
            return {}

    def views(self, counts: dict[str, list[int]]) -> list[dict[str, Any]]:
        """Each View: its function and the revision serving it (the stable one of its weights), cache settings,
        and the gateway's counters `counts` (view → [hits, misses, invalidations], as /metrics shows them)."""
        store = connect(self.store_path)
        try:
            resources, routes = store.resources("View"), store.routes()
        finally:
            store.close()
        return [view_json(name, spec, routes, counts.get(name, [0, 0, 0])) for name, spec in sorted(resources.items())]

    def change_mark(self, name: str) -> tuple[float, int] | None:
        """(updated at, last event) of the function's latest rollout: whether the live view has news."""
        store = connect(self.store_path)
        try:
            row = rolloutdriver.latest(store, name)
            if row is None:
                return None
            return row.updated_at, max((e.id for e in rolloutstore.events(store, row.id)), default=0)
        finally:
            store.close()


def view_json(name: str, spec: dict[str, Any], routes: dict[str, dict[int, int]], counts: list[int]) -> dict[str, Any]:
    function = str(spec.get("function", ""))
    weights = routes.get(function, {})
    raw = spec.get("cache")
    cache: dict[str, Any] = raw if isinstance(raw, dict) else {}
    hits, misses, invalidations = counts
    reads = hits + misses
    return {
        "name": name,
        "function": function,
        "revision": stable_revision(weights) if weights else None,
        "weights": {str(r): w for r, w in weights.items()},
        "cache": {"ttl": cache.get("ttl"), "perCaller": bool(cache.get("perCaller", False))},
        "dependsOn": list(spec.get("dependsOn", [])),
        "hits": hits,
        "misses": misses,
        "invalidations": invalidations,
        "hitRate": hits / reads if reads else 0.0,  # fnctl_view_hit_ratio's formula: 0 before the first read
    }


def _ignore(*_: object) -> None:
    return None


def _stage_json(stage: Stage) -> dict[str, Any]:
    found: dict[str, Any] = {"kind": stage.kind.value, "label": stage.label}
    if stage.analysis is not None:
        a = stage.analysis
        found["thresholds"] = {
            "maxErrorRate": a.max_error_rate,
            "maxErrorRateIncrease": a.max_error_rate_increase,
            "maxP95LatencyMs": None if a.max_p95_latency is None else a.max_p95_latency * 1000,
            "maxP95LatencyRatio": a.max_p95_latency_ratio,
            "minRequests": a.min_requests,
        }
    return found


def _traffic(series: dict[int, list[tuple[int, int, int]]], since: int) -> dict[str, Any]:
    return {
        "since": since,
        "revisions": {
            str(revision): [[second - since, requests, errors] for second, requests, errors in points]
            for revision, points in series.items()
        },
    }
