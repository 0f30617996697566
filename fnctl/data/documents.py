"""The data plane's values: the documents, pages and changes it hands out, the writes it takes (`WriteOp`),
its per-invocation `Budget`, and the rules every document and id follows (ids, merge patch, UUIDv7 ids). The
service that checks rights and commits is `plane` (`DataPlane`) with its transactions (`txn`)."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any, Literal, Protocol

from fnctl.data.caller import Caller
from fnctl.data.errors import Invalid, LimitExceeded
from fnctl.jsontext import compact_encoder
from fnctl.manifest.model import DEFAULT_DB_OPERATIONS
from fnctl.state.docrecords import StoredDoc

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_ID = 128

Op = Literal["insert", "replace", "patch", "delete"]


@dataclass(frozen=True)
class DataDocument:
    id: str
    version: int  # the ETag
    created_at: str  # RFC 3339, UTC
    created_by: str
    updated_at: str
    updated_by: str
    data: dict[str, Any]
    # `data` as the store holds it (compact JSON), when known: the envelope's text is then spliced around it
    # rather than encoded again (`json_text`)
    data_text: str | None = field(default=None, compare=False, repr=False)

    @property
    def etag(self) -> str:
        return f'"{self.version}"'

    def json_text(self) -> str:
        """The envelope (`as_json`) as compact JSON text."""
        if self.data_text is None:
            return ENCODE(self.as_json())
        q = encode_basestring
        return (
            f'{{"id":{q(self.id)},"version":{self.version},"createdAt":{q(self.created_at)},'
            f'"createdBy":{q(self.created_by)},"updatedAt":{q(self.updated_at)},'
            f'"updatedBy":{q(self.updated_by)},"data":{self.data_text}}}'
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "createdAt": self.created_at,
            "createdBy": self.created_by,
            "updatedAt": self.updated_at,
            "updatedBy": self.updated_by,
            "data": self.data,
        }


@dataclass(frozen=True)
class Page:
    documents: tuple[DataDocument, ...]
    cursor: str | None  # pass it back for the next page; None: this is the last

    def as_json(self) -> dict[str, Any]:
        return {"documents": [d.as_json() for d in self.documents], "cursor": self.cursor}


@dataclass(frozen=True)
class DataChange:
    seq: int
    txn: str
    at: str
    collection: str
    id: str
    op: str  # insert | replace | delete (a patch is recorded as the replace it is)
    before: dict[str, Any] | None  # the envelope (DataDocument.as_json) before / after
    after: dict[str, Any] | None
    actor: str
    function: str | None
    revision: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "txn": self.txn,
            "at": self.at,
            "collection": self.collection,
            "id": self.id,
            "op": self.op,
            "before": self.before,
            "after": self.after,
            "actor": self.actor,
            "function": self.function,
            "revision": self.revision,
        }


@dataclass(frozen=True)
class WriteOp:
    """One write of a batch: `data` is the document (insert, replace) or the merge patch (patch)."""

    op: Op
    collection: str
    id: str | None = None
    data: Any = None
    if_match: int | None = None


@dataclass(frozen=True)
class Nonconforming:
    tenant: str
    id: str
    violations: tuple[tuple[str, str], ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "id": self.id,
            "violations": [{"path": p, "message": m} for p, m in self.violations],
        }


@dataclass(frozen=True)
class CollectionSync:
    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


@dataclass
class Budget:
    """Per-invocation limits (Function `limits.dbOperations`; documents scanned; bytes read and written).
    Not thread-safe: one invocation's calls are sequential."""

    operations: int = DEFAULT_DB_OPERATIONS
    scanned: int = 100_000
    bytes_read: int = 64 * 2**20
    bytes_written: int = 16 * 2**20
    used_operations: int = 0
    used_scanned: int = 0
    used_read: int = 0
    used_written: int = 0

    def charge(self, *, operations: int = 0, scanned: int = 0, read: int = 0, written: int = 0) -> None:
        self.used_operations += operations
        self.used_scanned += scanned
        self.used_read += read
        self.used_written += written
        for used, limit, what in (
            (self.used_operations, self.operations, "database operations"),
            (self.used_scanned, self.scanned, "documents scanned"),
            (self.used_read, self.bytes_read, "bytes read"),
            (self.used_written, self.bytes_written, "bytes written"),
        ):
            if used > limit:
                raise LimitExceeded(f"this invocation exceeded its limit of {limit} {what}")


class AuditSink(Protocol):
    """Where calls made with a function's own rights (`runAs: function`) and the operator's reads are recorded
    (writes are in the change log, which is hash-chained)."""

    def __call__(self, caller: Caller, action: str, target: str) -> None: ...


ENCODE = compact_encoder(allow_nan=False)

_BAD_ID = re.compile(r"[/\x00-\x1f\x7f-\x9f]")


def check_id(id: Any) -> None:
    if not isinstance(id, str) or not 1 <= len(id) <= MAX_ID:
        raise Invalid(f"a document id has 1 to {MAX_ID} characters")
    if _BAD_ID.search(id) is not None:
        raise Invalid("a document id cannot contain '/' or control characters")
    if not id.isascii():
        try:
            id.encode("utf-8")
        except UnicodeEncodeError:
            raise Invalid("a document id must be valid UTF-8") from None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def uuid7() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of milliseconds, then randomness; ids sort by creation time."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | rand & ((1 << 62) - 1)
    h = f"{value:032x}"  # what str(uuid.UUID(int=value)) gives, without building the UUID object
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def document(row: StoredDoc, data: dict[str, Any] | None = None) -> DataDocument:
    """The document of a stored row; `data`: its data already decoded (row.data is its encoding)."""
    return DataDocument(
        row.id,
        row.version,
        row.created_at,
        row.created_by,
        row.updated_at,
        row.updated_by,
        json.loads(row.data) if data is None else data,
        row.data,
    )


def from_json(raw: dict[str, Any]) -> DataDocument:
    return DataDocument(
        raw["id"], raw["version"], raw["createdAt"], raw["createdBy"], raw["updatedAt"], raw["updatedBy"], raw["data"]
    )
