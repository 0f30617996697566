"""The desired state: typed, frozen values built from schema-valid manifest documents.

Defaults are applied here, once, so that every later stage (semantic checks, diff, plan, sandbox) reads
the same numbers. Parsing never touches the filesystem; `checks` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fnctl.manifest.files import Document
from fnctl.manifest.filterlang import Filter, FilterError, render_path, valid_field
from fnctl.manifest.filterlang import parse as parse_filter
from fnctl.manifest.units import parse_duration, parse_size


class Kind(StrEnum):
    FUNCTION = "Function"
    VIEW = "View"
    TRIGGER = "Trigger"
    POLICY = "Policy"
    COLLECTION = "Collection"


class Strategy(StrEnum):
    IMMEDIATE = "immediate"
    CANARY = "canary"
    BLUE_GREEN = "blueGreen"
    AB_TEST = "abTest"


class Network(StrEnum):
    NONE = "none"
    EGRESS = "egress"


class Isolation(StrEnum):
    CONTAINER = "container"
    GVISOR = "gvisor"


class Warm(StrEnum):
    """What a revision keeps in reserve beyond its running instances (`scaling.warm`)."""

    NONE = "none"
    PAUSED = "paused"  # one paused instance: a scale from zero unpauses it (~20 ms) instead of starting one


class RolloutStepKind(StrEnum):
    SET_WEIGHT = "setWeight"
    PAUSE = "pause"
    ANALYSIS = "analysis"


class Inconclusive(StrEnum):
    WAIT = "wait"
    PASS = "pass"
    FAIL = "fail"


class RunAs(StrEnum):
    CALLER = "caller"
    FUNCTION = "function"


class TriggerType(StrEnum):
    HTTP = "http"
    CRON = "cron"
    DATA = "on"
    MANUAL = "manual"


NO_EXPECTATION: Any = object()  # a check without `expect`: only success and `returns` are checked


@dataclass(frozen=True)
class Limits:
    timeout: float = 10.0  # seconds
    memory: int = 128 * 2**20  # bytes
    cpu: float = 0.5
    pids: int = 64
    tmp: int = 16 * 2**20
    payload: int = 6 * 2**20
    output: int = 6 * 2**20


# Documented maxima (docs/manifest.md): beyond these a sandbox stops being a sandbox for one machine.
MAX_LIMITS = Limits(
    timeout=900.0, memory=4 * 2**30, cpu=4.0, pids=4096, tmp=2**30, payload=32 * 2**20, output=32 * 2**20
)
MIN_MEMORY = 32 * 2**20


@dataclass(frozen=True)
class Scaling:
    min_instances: int = 1
    max_instances: int = 4
    concurrency: int = 8
    warm: Warm = Warm.NONE


@dataclass(frozen=True)
class SecretRef:
    name: str
    from_env: str | None
    from_file: str | None


@dataclass(frozen=True)
class HealthCheck:
    event: Any
    expect: Any = NO_EXPECTATION
    timeout: float | None = None


@dataclass(frozen=True)
class Analysis:
    max_error_rate: float | None = None
    max_error_rate_increase: float | None = None
    max_p95_latency: float | None = None
    max_p95_latency_ratio: float | None = None
    min_requests: int = 0
    interval: float = 10.0
    window: float | None = None  # default: the time since the step began
    failure_limit: int = 1
    inconclusive: Inconclusive = Inconclusive.WAIT
    checks: tuple[HealthCheck, ...] = ()


@dataclass(frozen=True)
class RolloutStep:
    kind: RolloutStepKind
    weight: int | None = None
    pause: float | None = None  # seconds; None on a pause step means "until promoted"
    analysis: Analysis | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    weight: int
    revision: str | int  # "stable", "new" or a revision number


@dataclass(frozen=True)
class Rollout:
    strategy: Strategy = Strategy.IMMEDIATE
    steps: tuple[RolloutStep, ...] = ()
    scale_down_delay: float = 30.0
    auto_promotion_seconds: int | None = None
    auto_promotion_enabled: bool = True
    pre_promotion_analysis: Analysis | None = None
    variants: tuple[Variant, ...] = ()
    stickiness_by: str = "caller"
    stickiness_name: str | None = None
    confidence: float = 0.95
    min_samples: int = 100
    expected_traffic: float | None = None


DEFAULT_DB_OPERATIONS = 1000
DEFAULT_TRANSACTION_RETRIES = 3
DEFAULT_DOCUMENT_SIZE = 2**20
MAX_DOCUMENT_SIZE = 16 * 2**20


@dataclass(frozen=True)
class Transaction:
    """A procedure: all of one invocation's writes commit when the handler returns, none when it fails."""

    retries: int = DEFAULT_TRANSACTION_RETRIES


@dataclass(frozen=True)
class Function:
    name: str
    labels: dict[str, str]
    runtime: str
    source: str  # as written, relative to the manifest file
    handler: str
    env: dict[str, str]
    secrets: tuple[SecretRef, ...]
    limits: Limits
    network: Network
    isolation: Isolation
    scaling: Scaling
    roles: tuple[str, ...]
    parameters: Any
    returns: Any
    health_checks: tuple[HealthCheck, ...]
    rollout: Rollout
    spec: dict[str, Any] = field(compare=False, repr=False)  # as written, for field-level diffs
    document: Document | None = field(default=None, compare=False, repr=False)
    run_as: RunAs = RunAs.CALLER
    transaction: Transaction | None = None
    db_operations: int = DEFAULT_DB_OPERATIONS  # limits.dbOperations (kept out of Limits: see desired.py)


@dataclass(frozen=True)
class Trigger:
    name: str
    function: str
    type: TriggerType
    config: dict[str, Any]  # the spec of its one type: {path, methods} | {schedule, timezone, ...} | ...
    document: Document | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class View:
    name: str
    function: str
    ttl: float | None
    per_caller: bool
    depends_on: tuple[str, ...]
    document: Document | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RowRule:
    """A `{collection, where}` grant: the rows of `collection` ("*": any) that pass `where` ($caller.* unbound)."""

    collection: str
    where: Filter


@dataclass(frozen=True)
class Grant:
    invoke: tuple[str, ...] = ()
    read: tuple[str | RowRule, ...] = ()
    write: tuple[str | RowRule, ...] = ()


@dataclass(frozen=True)
class Index:
    fields: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True)
class Collection:
    name: str
    schema: Any  # a JSON Schema, checked on every write (None: any object)
    indexes: tuple[Index, ...] = ()
    document_size: int = DEFAULT_DOCUMENT_SIZE  # limits.documentSize, bytes of the encoded data
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    document: Document | None = field(default=None, compare=False, repr=False)

    @property
    def limits(self) -> dict[str, int]:
        return {"documentSize": self.document_size}


@dataclass(frozen=True)
class Policy:
    name: str
    roles: dict[str, Grant]
    document: Document | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class DesiredState:
    functions: tuple[Function, ...] = ()
    triggers: tuple[Trigger, ...] = ()
    views: tuple[View, ...] = ()
    policies: tuple[Policy, ...] = ()
    collections: tuple[Collection, ...] = ()


Item = Function | Trigger | View | Policy | Collection
# A problem that a semantic check found in a value: the value, the JSON path inside its document, the message.
Finding = tuple[Item, tuple[str | int, ...], str]


class ParseError(ValueError):
    """A value that the schema let through but that does not parse; `path` is relative to the document."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


def parse_policy(name: str, spec: dict[str, Any], doc: Document | None = None) -> Policy:
    """A Policy from its spec (as the store keeps the live resources). Raises ParseError."""
    roles = {
        role: Grant(
            tuple(g.get("invoke", ())),
            _targets(g.get("read", ()), ("spec", "roles", role, "read")),
            _targets(g.get("write", ()), ("spec", "roles", role, "write")),
        )
        for role, g in spec.get("roles", {}).items()
    }
    return Policy(name, roles, doc)


def _targets(raw: Any, at: tuple[str | int, ...]) -> tuple[str | RowRule, ...]:
    out: list[str | RowRule] = []
    for i, item in enumerate(raw):
        if isinstance(item, dict):
            try:
                where = parse_filter(item.get("where", {}), caller_refs=True)
            except FilterError as exc:
                raise ParseError((*at, i, "where", *exc.path), f"not a filter: {exc.message}") from None
            out.append(RowRule(item["collection"], where))
        else:
            out.append(item)
    return tuple(out)


def parse_collection(name: str, spec: dict[str, Any], doc: Document | None = None) -> Collection:
    """A Collection from its spec (also how the data store keeps it). Raises ParseError."""
    indexes = []
    for i, raw in enumerate(spec.get("indexes", ())):
        for j, name_ in enumerate(raw["fields"]):
            problem = valid_field(name_)
            if problem:
                raise ParseError(("spec", "indexes", i, "fields", j), problem)
        indexes.append(Index(tuple(raw["fields"]), bool(raw.get("unique", False))))
    limits = spec.get("limits", {})
    size = (
        size_at(limits["documentSize"], ("spec", "limits", "documentSize"))
        if "documentSize" in limits
        else DEFAULT_DOCUMENT_SIZE
    )
    return Collection(name, spec.get("schema"), tuple(indexes), size, spec, doc)


def filter_problem(raw: Any) -> str | None:
    """Why `raw` is not a row-rule filter (`$.path: message`), or None."""
    try:
        parse_filter(raw, caller_refs=True)
    except FilterError as exc:
        return f"{render_path(exc.path)}: {exc.message}"
    return None


def duration_at(value: Any, at: tuple[str | int, ...]) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ParseError(at, str(exc)) from None


def size_at(value: Any, at: tuple[str | int, ...]) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ParseError(at, str(exc)) from None
