"""The JSON filter language (parsed in `fnctl.manifest.filterlang`): parsing as the data plane's BadFilter, the
pure evaluator `matches` (row rules on writes; the same semantics as the SQL compiled in
`fnctl.state.docsql`), and `bind`, which puts the caller into a row rule."""

from __future__ import annotations

from typing import Any

from fnctl.data.caller import Caller
from fnctl.data.errors import BadFilter
from fnctl.manifest.filterlang import (
    ALL,
    METADATA_FIELDS,
    Always,
    And,
    CallerRef,
    Compare,
    Filter,
    FilterError,
    Not,
    Op,
    Or,
    render_path,
)
from fnctl.manifest.filterlang import parse as parse_filter

__all__ = ["ALL", "Always", "And", "Compare", "Filter", "Not", "Op", "Or", "bind", "matches", "parse", "is_always"]

_MISSING: Any = object()
_META = {
    "id": "id",
    "version": "version",
    "createdAt": "createdAt",
    "createdBy": "createdBy",
    "updatedAt": "updatedAt",
    "updatedBy": "updatedBy",
}


def parse(raw: Any, *, caller_refs: bool = False) -> Filter:
    """The AST of a filter; BadFilter (400) naming the JSON path of the problem."""
    try:
        return _parse(raw, caller_refs)
    except FilterError as exc:
        raise BadFilter(
            f"bad filter at {render_path(exc.path)}: {exc.message}", violations=((render_path(exc.path), exc.message),)
        ) from None


def _parse(raw: Any, caller_refs: bool) -> Filter:
    return parse_filter(raw, caller_refs=caller_refs)


def is_always(ast: Filter) -> bool:
    return isinstance(ast, Always)


def bind(ast: Filter, caller: Caller) -> Filter:
    """`ast` with every `$caller.*` reference replaced by the caller's values (an equality with
    `$caller.roles` becomes `$in`)."""
    if isinstance(ast, Compare):
        if not isinstance(ast.value, CallerRef):
            return ast
        name = ast.value.name
        if name == "roles":
            roles = tuple(sorted(caller.roles))
            op = {Op.EQ: Op.IN, Op.NE: Op.NIN}.get(ast.op, ast.op)
            return Compare(ast.field, op, roles)
        return Compare(ast.field, ast.op, caller.subject if name == "id" else caller.tenant)
    if isinstance(ast, And):
        return And(tuple(bind(p, caller) for p in ast.parts))
    if isinstance(ast, Or):
        return Or(tuple(bind(p, caller) for p in ast.parts))
    if isinstance(ast, Not):
        return Not(bind(ast.part, caller))
    return ast


def matches(ast: Filter, document: dict[str, Any]) -> bool:
    """Whether `document` (the envelope: id, version, createdAt, ..., data) passes `ast` (bound)."""
    if isinstance(ast, Compare):
        return _compare(ast, _value(ast.field, document))
    if isinstance(ast, And):
        return all(matches(p, document) for p in ast.parts)
    if isinstance(ast, Or):
        return any(matches(p, document) for p in ast.parts)
    if isinstance(ast, Not):
        return not matches(ast.part, document)
    return True


def _value(field: str, document: dict[str, Any]) -> Any:
    if field in METADATA_FIELDS:
        return document.get(_META[field], _MISSING)
    node: Any = document.get("data")
    for segment in field.split("."):
        if isinstance(node, dict) and segment in node:
            node = node[segment]
        else:
            return _MISSING
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float)  # booleans included: SQLite stores JSON true/false as 1/0


def _equal(stored: Any, value: Any) -> bool:
    if value is None:
        return stored is _MISSING or stored is None
    if stored is _MISSING or stored is None:
        return False
    if _is_number(value):
        return _is_number(stored) and stored == value
    return isinstance(stored, str) and stored == value


def _compare(ast: Compare, stored: Any) -> bool:
    op, value = ast.op, ast.value
    if op is Op.EQ:
        return _equal(stored, value)
    if op is Op.NE:
        return not _equal(stored, value)
    if op is Op.EXISTS:
        return (stored is not _MISSING) is value
    if op is Op.IN:
        return any(_equal(stored, v) for v in value)  # type: ignore[union-attr]
    if op is Op.NIN:
        return not any(_equal(stored, v) for v in value)  # type: ignore[union-attr]
    if _is_number(value):
        if not _is_number(stored):
            return False
    elif not isinstance(stored, str):
        return False
    if op is Op.GT:
        return bool(stored > value)
    if op is Op.GTE:
        return bool(stored >= value)
    if op is Op.LT:
        return bool(stored < value)
    return bool(stored <= value)
