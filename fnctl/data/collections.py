"""A collection as the data plane uses it: its definition compiled from the stored spec (the model, the
schema's check, the fields with a column), the spec as the store keeps it, and a document checked against it
(object, size, schema) into the text that is stored."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fnctl.data.documents import ENCODE
from fnctl.data.errors import DataUnavailable, Invalid, PayloadTooLarge
from fnctl.manifest.filterlang import render_path
from fnctl.manifest.model import Collection, ParseError, parse_collection
from fnctl.manifest.schemas import value_check
from fnctl.state.docrecords import CollectionRow


@dataclass(frozen=True)
class CollectionDef:
    model: Collection
    version: int
    check: Callable[[Any], Iterator[tuple[str, str]]]  # the schema's violations (JSON path, message)
    indexed: frozenset[str]  # fields that have a generated column (or are envelope columns)


def validate(info: CollectionDef, data: Any) -> str:
    """The document's stored text, after the object, size and schema checks (every violation)."""
    if not isinstance(data, dict):
        raise Invalid("a document is a JSON object")
    try:
        text = ENCODE(data)
    except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: a value holding itself
        raise Invalid(f"the document is not JSON: {exc}") from None
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    if size > info.model.document_size:
        raise PayloadTooLarge(
            f"the document is {size} bytes; collection {info.model.name!r} takes at most {info.model.document_size}"
        )
    violations = tuple(info.check(data))
    if violations:
        raise Invalid(
            f"the document does not match the schema of {info.model.name!r} "
            f"({len(violations)} problem{'s' if len(violations) > 1 else ''})",
            violations=violations,
        )
    return text


def stored_spec(collection: Collection) -> dict[str, Any]:
    """A Collection's spec as the data store keeps it (what `apply`'s diff compares with the live one)."""
    return {
        "schema": collection.schema,
        "indexes": [{"fields": list(i.fields), "unique": i.unique} for i in collection.indexes],
        "limits": {"documentSize": collection.document_size},
    }


def compile_collection(row: CollectionRow) -> CollectionDef:
    try:
        model = parse_collection(row.name, row.spec)
    except ParseError as exc:
        raise DataUnavailable(f"collection {row.name!r} is stored with a bad definition: {exc}") from None
    indexed = frozenset({"id"} | {f for i in model.indexes for f in i.fields})
    return CollectionDef(model, row.version, schema_check(model.schema), indexed)


def schema_check(schema: Any) -> Callable[[Any], Iterator[tuple[str, str]]]:
    """A JSON Schema's check: every violation of a value, as (JSON path, message); nothing when it conforms."""
    if schema is None or schema is True or schema == {}:
        return lambda data: iter(())
    violations = value_check(schema, "urn:fnctl:collection")

    def check(data: Any) -> Iterator[tuple[str, str]]:
        for path, message in violations(data):
            yield render_path(path), message

    return check
