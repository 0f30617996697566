"""A find's order and its cursors: (field, descending) keys ending with the id, only on indexed fields; the
order of values SQLite sorts by (so a transaction's own writes merge into a page where the store would put
them); and cursors as opaque, checked tokens."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

from fnctl.data.documents import ENCODE, DataDocument, document
from fnctl.data.errors import BadFilter
from fnctl.data.filters import Filter, matches
from fnctl.manifest.filterlang import METADATA_FIELDS
from fnctl.state.docrecords import StoredDoc


def order_keys(order: Sequence[str] | str, indexed: frozenset[str]) -> tuple[tuple[str, bool], ...]:
    """(field, descending) pairs, then id; only indexed fields (and id) may order a query."""
    if isinstance(order, str):
        order = [o for o in order.split(",") if o]
    keys: list[tuple[str, bool]] = []
    for raw in order:
        if not isinstance(raw, str) or not raw:
            raise BadFilter("order takes field names, '-' before one for descending")
        desc = raw.startswith("-")
        name = raw[1:] if desc else raw
        if name not in indexed:
            known = ", ".join(sorted(indexed))
            raise BadFilter(
                f"cannot order by {name!r}: it is not indexed (order by one of: {known}; or add an "
                "index to the collection)"
            )
        keys.append((name, desc))
    if not any(k == "id" for k, _ in keys):
        keys.append(("id", keys[-1][1] if keys else False))
    return tuple(keys)


def field_value(doc: DataDocument, name: str, composites_as_null: bool = False) -> Any:
    """The value the store orders `doc` by in field `name`, as its index holds it: a boolean as 1/0; an object
    or array as its JSON text as stored (SQLite's json_extract), or NULL where the store orders composites
    with NULL (`composites_as_null`: PostgreSQL). A cursor carries exactly this, so pages neither repeat nor
    skip documents."""
    if name in METADATA_FIELDS:
        return doc.as_json()[name]
    node: Any = doc.data
    for part in name.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, bool):
        return int(node)
    if isinstance(node, dict | list):
        return None if composites_as_null else ENCODE(node)  # the stored text: ENCODE wrote it
    return node


class _Key:
    """SQLite's order of values: NULL < numbers < text; descending flips."""

    __slots__ = ("value", "desc")

    def __init__(self, value: Any, desc: bool) -> None:
        self.value, self.desc = value, desc

    def _rank(self) -> tuple[int, Any]:
        v = self.value
        if v is None:
            return (0, 0)
        if isinstance(v, int | float):
            return (1, v)
        return (2, str(v).encode("utf-8"))

    def __lt__(self, other: _Key) -> bool:
        a, b = self._rank(), other._rank()
        return a > b if self.desc else a < b

    def __gt__(self, other: _Key) -> bool:
        return other < self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and self._rank() == other._rank()

    __hash__ = None  # type: ignore[assignment]


def sort_key(
    doc: DataDocument, keys: tuple[tuple[str, bool], ...], composites_as_null: bool = False
) -> tuple[_Key, ...]:
    return tuple(_Key(field_value(doc, name, composites_as_null), desc) for name, desc in keys)


def cursor_key(after: tuple[Any, ...], keys: tuple[tuple[str, bool], ...]) -> tuple[_Key, ...]:
    return tuple(_Key(v, desc) for v, (_, desc) in zip(after, keys, strict=True))


def encode_cursor(keys: tuple[tuple[str, bool], ...], last: DataDocument, composites_as_null: bool = False) -> str:
    values = [field_value(last, k, composites_as_null) for k, _ in keys]
    raw = {"o": [("-" if d else "") + k for k, d in keys], "v": values}
    return base64.urlsafe_b64encode(ENCODE(raw).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, keys: tuple[tuple[str, bool], ...]) -> tuple[Any, ...]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        order, values = raw["o"], raw["v"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise BadFilter("the cursor is not one this API gave") from None
    if order != [("-" if d else "") + k for k, d in keys] or not isinstance(values, list) or len(values) != len(keys):
        raise BadFilter("the cursor belongs to a query with another order")
    if any(isinstance(v, dict | list | bool) for v in values):
        raise BadFilter("the cursor is not one this API gave")
    return tuple(values)


def with_own_writes(
    docs: list[DataDocument],
    own: dict[str, StoredDoc | None],
    ast: Filter,
    keys: tuple[tuple[str, bool], ...],
    after: tuple[Any, ...] | None,
    composites_as_null: bool = False,
) -> list[DataDocument]:
    """A find's rows with a transaction's own writes applied (`own`: id → the row as the transaction sees it,
    None when it deleted it), re-sorted, so a page may shift."""
    by_id = {d.id: d for d in docs}
    for id, row in own.items():
        by_id.pop(id, None)
        if row is None:
            continue
        doc = document(row)
        if matches(ast, doc.as_json()) and (
            after is None or sort_key(doc, keys, composites_as_null) > cursor_key(after, keys)
        ):
            by_id[id] = doc
    return sorted(by_id.values(), key=lambda d: sort_key(d, keys, composites_as_null))
