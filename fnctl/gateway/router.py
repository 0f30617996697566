"""Routing, decided purely: which revision serves a request (weights, a pinned revision, sticky callers), which
HTTP Trigger a method and path belong to, and the routing table the gateway builds from the store's rows.

Nothing here touches the network, the store or the clock; the gateway feeds it values and a random draw.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any
from urllib.parse import unquote

from fnctl.rollout.weights import stable_revision


class NoRoute(ValueError):
    """The function has no revision with traffic (and none was pinned)."""


def sticky_point(key: str) -> float:
    """A stable point in [0, 1) for `key`: the same in every process and across restarts (unlike `hash()`)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose(
    weights: Mapping[int, int], *, pinned: int | None = None, sticky_key: str | None = None, draw: float | None = None
) -> int:
    """The revision for one request: `pinned` when given (even at 0%: a preview), else a weighted pick, stable
    per `sticky_key` when given, else from `draw` (a uniform number in [0, 1); random when None)."""
    if pinned is not None:
        return pinned
    if len(weights) == 1:  # the common case: one revision has all the traffic
        for revision, weight in weights.items():
            if weight > 0:
                return revision
    # Newest first: a caller's point stays in the new revision's band as its weight grows, so raising a canary
    # from 10% to 50% only moves callers towards it, never back and forth.
    live = sorted(((revision, weight) for revision, weight in weights.items() if weight > 0), reverse=True)
    if not live:
        raise NoRoute("no revision has traffic")
    if sticky_key is not None:
        point = sticky_point(sticky_key)
    else:
        point = random.random() if draw is None else draw
    target = point * sum(weight for _, weight in live)
    for revision, weight in live:
        if target < weight:
            return revision
        target -= weight
    return live[-1][0]  # float rounding at the very top of the range


# ---- HTTP triggers -------------------------------------------------------------------------------

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class HttpRoute:
    trigger: str
    function: str
    template: str  # as written: /hello/{name}
    methods: frozenset[str] | None  # None: any method
    pattern: re.Pattern[str] = field(compare=False)
    params: tuple[str, ...] = ()


@dataclass(slots=True)  # made per request: a frozen one's __init__ costs ~5x (a setattr per field)
class RouteMatch:
    route: HttpRoute
    params: dict[str, str]


@dataclass(frozen=True)
class MethodNotAllowed:
    allowed: frozenset[str]


def compile_route(trigger: str, function: str, template: str, methods: list[str] | None) -> HttpRoute:
    """A route for `template`; each `{param}` matches one non-empty path segment."""
    parts, params, position = [], [], 0
    for found in _PARAM.finditer(template):
        parts.append(re.escape(template[position : found.start()]))
        parts.append(f"(?P<{found.group(1)}>[^/]+)")
        params.append(found.group(1))
        position = found.end()
    parts.append(re.escape(template[position:]))
    return HttpRoute(
        trigger,
        function,
        template,
        frozenset(m.upper() for m in methods) if methods else None,
        re.compile("".join(parts) + r"\Z"),
        tuple(params),
    )


def _specificity(route: HttpRoute) -> tuple[int, int, int, str]:
    # Literal text wins over parameters: /users/me is tried before /users/{id}, whatever their names.
    literal = len(_PARAM.sub("", route.template))
    return (-literal, len(route.params), -len(route.template), route.trigger)


class HttpRoutes(tuple[HttpRoute, ...]):
    """Routes, most specific first, with those without parameters also by their path (`exact`): a path that
    is one of them is routed by a dict lookup, without a regex per route (~1 us of a trigger request)."""

    exact: dict[str, tuple[HttpRoute, ...]]

    def __new__(cls, routes: Iterable[HttpRoute]) -> HttpRoutes:
        self = super().__new__(cls, routes)
        exact: dict[str, list[HttpRoute]] = {}
        for route in self:
            if not route.params:
                exact.setdefault(route.template, []).append(route)
        self.exact = {path: tuple(same) for path, same in exact.items()}
        return self


def http_routes(triggers: Mapping[str, Mapping[str, Any]]) -> HttpRoutes:
    """The HTTP routes of the Trigger resources (name → spec as written), most specific first."""
    routes = []
    for name, spec in triggers.items():
        http = spec.get("http") if isinstance(spec, Mapping) else None
        if not isinstance(http, Mapping) or not isinstance(http.get("path"), str):
            continue
        methods = http.get("methods")
        routes.append(
            compile_route(
                name, str(spec.get("function", "")), http["path"], list(methods) if isinstance(methods, list) else None
            )
        )
    return HttpRoutes(sorted(routes, key=_specificity))


def match(routes: tuple[HttpRoute, ...], method: str, raw_path: str) -> RouteMatch | MethodNotAllowed | None:
    """The route for `method` on `raw_path` (still percent-encoded, so an encoded '/' stays inside one
    parameter); MethodNotAllowed when only other methods match the path; None when nothing does."""
    if isinstance(routes, HttpRoutes):
        # A route without parameters matches its own path only, and sorts before every route with parameters
        # that matches it too (more literal text): the first of them that takes `method` is the scan's answer.
        for route in routes.exact.get(raw_path, ()):
            if route.methods is None or method in route.methods:
                return RouteMatch(route, {})
    allowed: set[str] = set()
    for route in routes:
        found = route.pattern.match(raw_path)
        if found is None:
            continue
        if route.methods is None or method in route.methods:
            return RouteMatch(route, {k: unquote(v) for k, v in found.groupdict().items()})
        allowed |= route.methods
    return MethodNotAllowed(frozenset(allowed)) if allowed else None


# ---- the routing table ---------------------------------------------------------------------------


class StickyBy(StrEnum):
    CALLER = "caller"  # the authenticated principal's subject (anonymous callers are split at random)
    HEADER = "header"  # a request header's value, e.g. X-User
    COOKIE = "cookie"  # a cookie's value, e.g. a session id


@dataclass(frozen=True)
class DataSettings:
    """How a revision's invocations use the data plane: `runAs`, `transaction`, `limits.dbOperations`, and
    whether it has egress (a procedure that met a conflict is re-run only without it)."""

    run_as_function: bool = False
    transaction: bool = False
    retries: int = 0
    db_operations: int = 1000
    egress: bool = False

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> DataSettings:
        txn = spec.get("transaction")
        limits = spec.get("limits") or {}
        return cls(
            run_as_function=spec.get("runAs") == "function",
            transaction=isinstance(txn, Mapping),
            retries=int(txn.get("retries", 3)) if isinstance(txn, Mapping) else 0,
            db_operations=int(limits.get("dbOperations", 1000)),
            egress=spec.get("network") == "egress",
        )

    @property
    def rerunnable(self) -> bool:
        """May a procedure that met a conflict run again? Only when it cannot have acted outside."""
        return self.transaction and not self.egress


NO_DATA_SETTINGS = DataSettings()


@dataclass(frozen=True)
class RevisionInfo:
    """What the gateway needs of one invocable revision (from its canonical spec)."""

    number: int
    timeout: float
    payload: int
    roles: tuple[str, ...]
    data: DataSettings = NO_DATA_SETTINGS
    parameters: Any = field(default=None, compare=False)  # the JSON Schema of its events (views check it)


@dataclass(frozen=True)
class FunctionRoute:
    name: str
    weights: dict[int, int]
    # The invocable revisions the routing table holds: routed, canary, preview or warm (weight 0 but listed,
    # e.g. within scaleDownDelay). Pinning reaches these and nothing else: an old revision that left the
    # table (or a function deleted and created again) can never be resurrected by a header.
    revisions: dict[int, RevisionInfo]
    sticky_by: StickyBy | None = None
    sticky_name: str | None = None  # the header or cookie

    @cached_property  # a table is immutable and asked on every request: computed once per table
    def live(self) -> RevisionInfo | None:
        """The revision with the most traffic (the newest on a tie): whose access rules apply by default."""
        live = stable_revision({r: w for r, w in self.weights.items() if w > 0 and r in self.revisions})
        return self.revisions[live] if live is not None else None

    @cached_property
    def access(self) -> RevisionInfo | None:
        """The revision whose `access.roles` govern every request, pinned or not: the newest one with traffic,
        i.e. the function as declared now (a canary that tightens access applies at once; a rollback
        returns to the rules of the revision rolled back to). None: nothing has traffic, nobody gets in."""
        routed = [r for r, w in self.weights.items() if w > 0 and r in self.revisions]
        return self.revisions[max(routed)] if routed else None

    @cached_property
    def sole(self) -> int | None:
        """The one revision with traffic, if only one has any: what `choose` returns for any draw or sticky key."""
        live = [r for r, w in self.weights.items() if w > 0]
        return live[0] if len(live) == 1 else None

    def holds(self, revision: int) -> bool:
        """May `revision` be pinned: does the routing table still list it (with or without traffic)?"""
        return revision in self.weights and revision in self.revisions


@dataclass(frozen=True)
class Table:
    functions: dict[str, FunctionRoute]
    http: tuple[HttpRoute, ...]
    policies: dict[str, dict[str, Any]]
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)  # the Trigger resources, as written
    views: dict[str, dict[str, Any]] = field(default_factory=dict)  # the View resources, as written

    @property
    def routes(self) -> dict[str, dict[int, int]]:
        return {name: dict(f.weights) for name, f in self.functions.items()}

    @cached_property
    def on_commit(self) -> dict[str, tuple[str, ...]]:
        """collection → its onCommit triggers (the outbox the write path fills)."""
        return on_commit_routes(self.triggers)


def on_commit_routes(triggers: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """collection → the names of the onCommit Triggers on it, sorted (Trigger resources: name → spec)."""
    routes: dict[str, list[str]] = {}
    for name, spec in sorted(triggers.items()):
        on = spec.get("on") if isinstance(spec, Mapping) else None
        if isinstance(on, Mapping) and on.get("event") == "onCommit" and isinstance(on.get("collection"), str):
            routes.setdefault(on["collection"], []).append(name)
    return {c: tuple(names) for c, names in routes.items()}


EMPTY = Table({}, (), {})


def revision_info(number: int, spec: Mapping[str, Any]) -> RevisionInfo:
    limits = spec.get("limits") or {}
    return RevisionInfo(
        number,
        float(limits.get("timeout", 10.0)),
        int(limits.get("payload", 6 * 2**20)),
        tuple((spec.get("access") or {}).get("roles", ())),
        DataSettings.from_spec(spec),
        spec.get("parameters"),
    )


def stickiness(spec: Mapping[str, Any]) -> tuple[StickyBy | None, str | None]:
    """From a revision's rollout: `stickiness: {by: caller | header | cookie, name}`; an abTest sticks by caller
    unless told otherwise; other strategies split at random per request."""
    rollout = spec.get("rollout") or {}
    sticky = rollout.get("stickiness")
    if not isinstance(sticky, Mapping):
        return (StickyBy.CALLER, None) if rollout.get("strategy") == "abTest" else (None, None)
    try:
        by = StickyBy(sticky.get("by", "caller"))
    except ValueError:
        return None, None
    name = sticky.get("name")
    return by, (str(name) if by is not StickyBy.CALLER and name else None)


def build_table(
    routes: Mapping[str, Mapping[int, int]],
    specs: Mapping[tuple[str, int], Mapping[str, Any]],
    triggers: Mapping[str, Mapping[str, Any]],
    policies: Mapping[str, Mapping[str, Any]],
    views: Mapping[str, Mapping[str, Any]] | None = None,
) -> Table:
    """The table from the store's values: `routes` (function → {revision: weight}), the canonical `specs` of
    the invocable revisions ((function, revision) → spec), and the Trigger and Policy resources. Only the
    revisions `routes` lists are kept: the others are history, not targets."""
    functions = {}
    for name, weights in routes.items():
        revisions = {n: revision_info(n, spec) for (f, n), spec in specs.items() if f == name and n in weights}
        routed = [n for n, w in weights.items() if w > 0 and (name, n) in specs]
        # the newest routed revision's rollout is the one in progress: its stickiness rules
        by, header = stickiness(specs[(name, max(routed))]) if routed else (None, None)
        functions[name] = FunctionRoute(name, dict(weights), revisions, by, header)
    return Table(
        functions,
        http_routes(triggers),
        {k: dict(v) for k, v in policies.items()},
        {k: dict(v) for k, v in triggers.items()},
        {k: dict(v) for k, v in (views or {}).items()},
    )
