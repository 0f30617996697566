"""What the document store keeps and hands back, and the errors of its write path: the rows (`StoredDoc`,
`ChangeRow`, `CollectionRow`), what a transaction asks the store to check and write (`ReadCheck`,
`StoredWrite`, `GroupItem`), and the envelope text every change is recorded with. No SQL here: the SQL is in
`docsql` (queries), `docschema` (tables, indexes, migrations), `docwrites` (the write path) and `docstore`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

from fnctl.errors import FnctlError
from fnctl.manifest.filterlang import Filter

JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_quote: Callable[[str], str] = encode_basestring  # what JSON does to a str (ensure_ascii=False)


class DataStoreError(FnctlError):
    """The data file cannot be opened, read or written."""


class StaleWrite(Exception):
    """A version read or written on changed: `index` is the write concerned (None: a read or a find)."""

    def __init__(self, index: int | None) -> None:
        super().__init__(index)
        self.index = index


class UniqueViolation(Exception):
    def __init__(self, collection: str, fields: str) -> None:
        super().__init__(collection, fields)
        self.collection, self.fields = collection, fields


class IdempotentReplay(Exception):
    """An insert's Idempotency-Key was used by a transaction that committed first: its response."""

    def __init__(self, response: str) -> None:
        super().__init__("replay")
        self.response = response


class NotEmpty(DataStoreError):
    """Collections that still hold documents would be dropped."""


@dataclass(frozen=True)
class StoredDoc:
    tenant: str
    id: str
    version: int
    created_at: str
    created_by: str
    updated_at: str
    updated_by: str
    data: str  # the JSON text

    def envelope_text(self) -> str:
        """The envelope (id, version, createdAt, ..., data) as JSON text, the stored data spliced in."""
        return envelope(self)


@dataclass(frozen=True)
class CollectionRow:
    name: str
    spec: dict[str, Any]
    version: int


@dataclass(frozen=True)
class Query:
    collection: str
    tenant: str
    filter: Filter
    order: tuple[tuple[str, bool], ...]  # (field, descending), ending with id
    limit: int
    after: tuple[Any, ...] | None = None  # the cursor: the last row's order values


@dataclass(frozen=True)
class ReadCheck:
    collection: str
    tenant: str
    id: str
    version: int  # 0: was absent


@dataclass(frozen=True)
class StoredWrite:
    op: str  # insert | replace | delete
    collection: str
    id: str
    expected: int  # the version it is based on (0: must not exist)
    data: str | None
    before: StoredDoc | None = None
    idempotency_key: str | None = None
    fresh: bool = False  # an insert under a freshly generated id: the commit need not look it up (the primary
    # key would refuse a duplicate)


@dataclass(frozen=True)
class ChangeMeta:
    actor: str
    function: str | None = None
    revision: int | None = None


@dataclass(frozen=True)
class GroupItem:
    """What one transaction asks the store to check and write (`DocStore.commit`, `commit_group`)."""

    tenant: str
    reads: Sequence[ReadCheck]
    finds: Sequence[tuple[Query, tuple[tuple[str, int], ...]]]
    writes: Sequence[StoredWrite]
    meta: ChangeMeta


@dataclass(frozen=True)
class ChangeRow:
    seq: int
    txn: str
    at: str
    collection: str
    tenant: str
    id: str
    op: str
    before: str | None
    after: str | None
    actor: str
    function: str | None
    revision: int | None


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def envelope(doc: StoredDoc) -> str:
    """The envelope of `doc` as JSON text, without decoding and encoding the document again: its stored text is already
    the compact JSON this encoder writes, so it is spliced in as it is."""
    q = _quote
    return (
        f'{{"id":{q(doc.id)},"version":{doc.version},"createdAt":{q(doc.created_at)},'
        f'"createdBy":{q(doc.created_by)},"updatedAt":{q(doc.updated_at)},'
        f'"updatedBy":{q(doc.updated_by)},"data":{doc.data}}}'
    )


_second: tuple[int, str] = (-1, "")  # the last whole second formatted: (seconds, "YYYY-MM-DDTHH:MM:SS")


def timestamp() -> str:
    """RFC 3339 UTC with microseconds, as `datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")` gives it, with
    the seconds part formatted once per second (strftime was a tenth of an insert's time). The cache is one
    tuple, replaced whole, so threads never see a second's text with another second's number."""
    global _second
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    cached = _second
    if cached[0] != seconds:
        cached = _second = (seconds, datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{micros:06d}Z"
