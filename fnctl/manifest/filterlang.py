"""The data plane's JSON filter language, parsed into a typed AST (docs/data.md).

It lives at the bottom of the layers because three places read it: manifest checks (Policy row rules),
the data plane's decisions (`fnctl.data.filters`, which adds the evaluator and caller binding) and the
document store (`fnctl.state.docsql` compiles it to SQL). Parsing is pure and bounded.

    {"status": "paid"}                          implicit equality
    {"total": {"$gt": 10, "$lte": 100}}         $eq $ne $gt $gte $lt $lte $in $nin $exists
    {"$or": [{...}, {...}]}, {"$and": [...]}    non-empty lists of filters
    {"$not": {...}}                             a filter
    {"customer.id": "$caller.id"}               (row rules only) the caller, bound at request time

Field paths are dotted; `id`, `version`, `createdAt`, `createdBy`, `updatedAt`, `updatedBy` address the
document's envelope, every other path its data.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

Scalar = str | int | float | bool | None
Path = tuple[str | int, ...]

METADATA_FIELDS = frozenset({"id", "version", "createdAt", "createdBy", "updatedAt", "updatedBy"})
CALLER_REFS = frozenset({"$caller.id", "$caller.tenant", "$caller.roles"})
MAX_DEPTH = 16
MAX_NODES = 256
MAX_IN = 1000
MAX_FIELD_LENGTH = 256
_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PLAIN = re.compile(r"\$?[A-Za-z0-9_-]+")


class Op(StrEnum):
    EQ = "$eq"
    NE = "$ne"
    GT = "$gt"
    GTE = "$gte"
    LT = "$lt"
    LTE = "$lte"
    IN = "$in"
    NIN = "$nin"
    EXISTS = "$exists"


ORDERED = frozenset({Op.GT, Op.GTE, Op.LT, Op.LTE})


@dataclass(frozen=True)
class CallerRef:
    """`$caller.id` / `$caller.tenant` / `$caller.roles` in a row rule, replaced by `fnctl.data.filters.bind`."""

    name: str  # "id" | "tenant" | "roles"


Value = Scalar | tuple[Scalar, ...] | CallerRef


@dataclass(frozen=True)
class Compare:
    field: str  # dotted
    op: Op
    value: Value  # a tuple for $in/$nin, a bool for $exists

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.field.split("."))

    @property
    def metadata(self) -> bool:
        return self.field in METADATA_FIELDS


@dataclass(frozen=True)
class And:
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    part: Filter


@dataclass(frozen=True)
class Always:
    """The empty filter `{}`: every document."""


Filter = Compare | And | Or | Not | Always
ALL = Always()


class FilterError(ValueError):
    """Why a filter does not parse; `path` is the JSON path inside the filter."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{render_path(self.path)}: {self.message}"


def render_path(path: Path) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if _PLAIN.fullmatch(part) else f"[{part!r}]")
    return out


def parse(raw: Any, *, caller_refs: bool = False) -> Filter:
    """The AST of a JSON filter. `caller_refs`: whether `$caller.*` values are references (row rules) or plain
    strings (queries). Raises FilterError naming the JSON path of the first problem."""
    return _Parser(caller_refs).filter(raw, ())


def valid_field(field: str) -> str | None:
    """Why `field` is not a dotted field path, or None."""
    if not isinstance(field, str) or not field:
        return "a field path must be a non-empty string"
    if len(field) > MAX_FIELD_LENGTH:
        return f"a field path has at most {MAX_FIELD_LENGTH} characters"
    if not all(_SEGMENT.fullmatch(s) for s in field.split(".")):
        return f"{field!r} is not a field path: dot-separated names of letters, digits, '_' and '-' (e.g. customer.id)"
    return None


class _Parser:
    def __init__(self, caller_refs: bool) -> None:
        self.caller_refs = caller_refs
        self.nodes = 0

    def filter(self, raw: Any, at: Path) -> Filter:
        if len(at) > MAX_DEPTH * 2:
            raise FilterError(at, f"the filter nests deeper than {MAX_DEPTH} levels")
        if not isinstance(raw, dict):
            raise FilterError(at, f"a filter is a JSON object, not {_kind(raw)}")
        parts: list[Filter] = []
        for key, value in raw.items():
            if not isinstance(key, str):
                raise FilterError(at, "filter keys are strings")
            here = (*at, key)
            if key in ("$and", "$or"):
                if not isinstance(value, list) or not value:
                    raise FilterError(here, f"{key} takes a non-empty list of filters")
                subs = tuple(self.filter(v, (*here, i)) for i, v in enumerate(value))
                parts.append(And(subs) if key == "$and" else Or(subs))
            elif key == "$not":
                parts.append(Not(self.filter(value, here)))
            elif key.startswith("$"):
                raise FilterError(here, f"unknown operator {key!r}: use a field name, $and, $or or $not")
            else:
                problem = valid_field(key)
                if problem:
                    raise FilterError(here, problem)
                parts.extend(self.field(key, value, here))
        self.nodes += len(parts)
        if self.nodes > MAX_NODES:
            raise FilterError(at, f"the filter has more than {MAX_NODES} conditions")
        if not parts:
            return ALL
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def field(self, field: str, raw: Any, at: Path) -> list[Filter]:
        if isinstance(raw, dict):
            if not raw:
                raise FilterError(at, 'an empty operator object: use {"$eq": value} or a value')
            if not all(isinstance(k, str) and k.startswith("$") for k in raw):
                raise FilterError(
                    at,
                    "comparisons with objects are not supported: use operators like "
                    '{"$eq": ...} on a dotted path (customer.id)',
                )
            return [self.operator(field, k, v, (*at, k)) for k, v in raw.items()]
        return [Compare(field, Op.EQ, self.scalar(raw, at, refs={"$caller.id", "$caller.tenant", "$caller.roles"}))]

    def operator(self, field: str, key: str, raw: Any, at: Path) -> Compare:
        try:
            op = Op(key)
        except ValueError:
            raise FilterError(at, f"unknown operator {key!r}: use one of {', '.join(o.value for o in Op)}") from None
        if op is Op.EXISTS:
            if not isinstance(raw, bool):
                raise FilterError(at, "$exists takes true or false")
            return Compare(field, op, raw)
        if op in (Op.IN, Op.NIN):
            if self.caller_refs and raw == "$caller.roles":
                return Compare(field, op, CallerRef("roles"))
            if not isinstance(raw, list):
                raise FilterError(at, f"{key} takes a list of values")
            if len(raw) > MAX_IN:
                raise FilterError(at, f"{key} takes at most {MAX_IN} values")
            values = tuple(self.scalar(v, (*at, i), refs=set()) for i, v in enumerate(raw))
            return Compare(field, op, values)  # type: ignore[arg-type]  # scalars only: refs=set()
        if op in ORDERED:
            value = self.scalar(raw, at, refs={"$caller.id", "$caller.tenant"})
            if value is None or isinstance(value, bool):
                raise FilterError(at, f"{key} compares with a number or a string, not {_kind(raw)}")
            return Compare(field, op, value)
        return Compare(field, op, self.scalar(raw, at, refs={"$caller.id", "$caller.tenant", "$caller.roles"}))

    def scalar(self, raw: Any, at: Path, refs: set[str]) -> Scalar | CallerRef:
        if isinstance(raw, str):
            if self.caller_refs and raw.startswith("$caller"):
                if raw not in CALLER_REFS:
                    raise FilterError(at, f"unknown reference {raw!r}: use $caller.id, $caller.tenant or $caller.roles")
                if raw not in refs:
                    raise FilterError(at, f"{raw} cannot be used here")
                return CallerRef(raw.removeprefix("$caller."))
            return raw
        if raw is None or isinstance(raw, bool | int):
            return raw
        if isinstance(raw, float):
            if not math.isfinite(raw):
                raise FilterError(at, "numbers must be finite")
            return raw
        raise FilterError(at, f"comparisons take a string, number, boolean or null, not {_kind(raw)}")


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, int | float) else type(value).__name__
