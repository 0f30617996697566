"""The data plane's one service: every read and write (REST, context.db, the CLI, batches, procedures) goes
through `DataPlane`, which checks the caller's rights (unreadable → NotFound), the tenant, the collection's
schema and size limit, ids, If-Match versions and the per-invocation budget, then hands the store one short
write transaction (`fnctl.state.docstore`).

Transactions are optimistic: a `Txn` records the versions it reads (and the results of its finds), buffers its
writes (reading its own), and `commit()` validates and applies everything in one immediate-mode write
transaction; a changed version is a `Conflict` (409), which a procedure retries. The write lock is never held
across user code.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fnctl.data.caller import Caller
from fnctl.data.errors import (
    BadFilter,
    Conflict,
    DataError,
    DataUnavailable,
    Forbidden,
    Invalid,
    LimitExceeded,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    PreconditionRequired,
)
from fnctl.data.filters import And, Filter, is_always, matches, parse
from fnctl.data.rights import read_rule, readable_collections, write_rule
from fnctl.manifest.filterlang import METADATA_FIELDS, render_path
from fnctl.manifest.model import DEFAULT_DB_OPERATIONS, Collection, ParseError, Policy, parse_collection
from fnctl.state import docstore
from fnctl.state.docstore import DocStore, Query, ReadCheck, StoredDoc, StoredWrite

__all__ = [
    "BadFilter",
    "Budget",
    "Caller",
    "DataChange",
    "Conflict",
    "DataError",
    "DataPlane",
    "DataUnavailable",
    "DataDocument",
    "Forbidden",
    "Invalid",
    "LimitExceeded",
    "Nonconforming",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "PreconditionFailed",
    "PreconditionRequired",
    "CollectionSync",
    "Txn",
    "WriteOp",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_ID = 128
COLLECTIONS_TTL = 1.0  # seconds a DataPlane trusts its copy of the collections' definitions

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

    @property
    def etag(self) -> str:
        return f'"{self.version}"'

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


@dataclass(frozen=True)
class _Collection:
    model: Collection
    version: int
    check: Callable[[Any], Iterator[tuple[str, str]]]  # the schema's violations (JSON path, message)
    indexed: frozenset[str]  # fields that have a generated column (or are envelope columns)


@dataclass
class _Pending:
    op: Literal["insert", "replace", "delete"]
    collection: str
    id: str
    expected: int  # the version the write is based on (0: the document must not exist)
    data: dict[str, Any] | None
    text: str | None
    before: StoredDoc | None
    precondition: bool  # whether `expected` came from the caller's If-Match
    idempotency_key: str | None = None


class DataPlane:
    def __init__(
        self, store: DocStore, policies: Callable[[], Sequence[Policy]], audit: AuditSink | None = None
    ) -> None:
        self.store = store
        self.policies = policies
        self.audit = audit
        self._collections: dict[str, _Collection] = {}
        self._loaded = -COLLECTIONS_TTL
        self._lock = threading.Lock()

    # -- collections -----------------------------------------------------------------------------------

    def collection(self, name: str) -> _Collection:
        """The collection's definition (refreshed at most every COLLECTIONS_TTL seconds); NotFound."""
        if time.monotonic() - self._loaded > COLLECTIONS_TTL:
            self.reload()
        found = self._collections.get(name)
        if found is None:
            raise NotFound(f"no collection {name!r}")
        return found

    def collection_names(self) -> list[str]:
        if time.monotonic() - self._loaded > COLLECTIONS_TTL:
            self.reload()
        return sorted(self._collections)

    def reload(self) -> None:
        rows = self.store.collections()
        with self._lock:
            current = self._collections
            fresh = {}
            for name, row in rows.items():
                known = current.get(name)
                fresh[name] = known if known is not None and known.version == row.version else _compile(row)
            self._collections, self._loaded = fresh, time.monotonic()

    def sync_collections(self, collections: Sequence[Collection], prune: bool, force: bool) -> CollectionSync:
        """Create or update the collections' tables and indexes (what `apply` does). With `prune`, drop the
        collections that are no longer declared; a non-empty one only with `force` (else Conflict, nothing
        changed)."""
        result = self.store.sync_collections({c.name: _stored_spec(c) for c in collections}, prune, force)
        self.reload()
        return CollectionSync(
            tuple(result.created), tuple(result.updated), tuple(result.dropped), tuple(result.unchanged)
        )

    def check(self, collection: str) -> list[Nonconforming]:
        """The documents (all tenants) that no longer conform to the collection's schema."""
        info = self.collection(collection)
        found = []
        for row in self.store.scan(collection):
            violations = tuple(info.check(json.loads(row.data)))
            if violations:
                found.append(Nonconforming(row.tenant, row.id, violations))
        return found

    # -- one-operation calls ---------------------------------------------------------------------------

    def transaction(self, caller: Caller, budget: Budget | None = None) -> Txn:
        return Txn(self, caller, budget)

    def get(self, caller: Caller, collection: str, id: str, *, budget: Budget | None = None) -> DataDocument:
        return Txn(self, caller, budget, record=False).get(collection, id)

    def get_text(self, caller: Caller, collection: str, id: str, *, budget: Budget | None = None) -> tuple[int, str]:
        """`get` as (version, the envelope as JSON text), for a caller that sends it on as it is."""
        return Txn(self, caller, budget, record=False).get_text(collection, id)

    def find(
        self,
        caller: Caller,
        collection: str,
        filter: Any = None,
        *,
        order: Sequence[str] = (),
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        budget: Budget | None = None,
    ) -> Page:
        return Txn(self, caller, budget, record=False).find(collection, filter, order=order, limit=limit, cursor=cursor)

    def insert(
        self,
        caller: Caller,
        collection: str,
        data: Any,
        *,
        id: str | None = None,
        idempotency_key: str | None = None,
        budget: Budget | None = None,
    ) -> DataDocument:
        txn = Txn(self, caller, budget, single=True)
        doc = txn.insert(collection, data, id=id, idempotency_key=idempotency_key)
        results = txn.commit()
        return results[0] or doc if results else doc

    def replace(
        self,
        caller: Caller,
        collection: str,
        id: str,
        data: Any,
        *,
        if_match: int | None = None,
        require_if_match: bool = False,
        budget: Budget | None = None,
    ) -> DataDocument:
        _require(if_match, require_if_match)
        txn = Txn(self, caller, budget, single=True)
        txn.replace(collection, id, data, if_match=if_match)
        return _only(txn.commit())

    def patch(
        self,
        caller: Caller,
        collection: str,
        id: str,
        patch: Any,
        *,
        if_match: int | None = None,
        require_if_match: bool = False,
        budget: Budget | None = None,
    ) -> DataDocument:
        _require(if_match, require_if_match)
        txn = Txn(self, caller, budget, single=True)
        txn.patch(collection, id, patch, if_match=if_match)
        return _only(txn.commit())

    def delete(
        self,
        caller: Caller,
        collection: str,
        id: str,
        *,
        if_match: int | None = None,
        require_if_match: bool = False,
        budget: Budget | None = None,
    ) -> None:
        _require(if_match, require_if_match)
        txn = Txn(self, caller, budget, single=True)
        txn.delete(collection, id, if_match=if_match)
        txn.commit()

    def stage(
        self, caller: Caller, op: WriteOp, *, idempotency_key: str | None = None, require_if_match: bool = False
    ) -> Txn:
        """One write checked and staged (what insert / replace / patch / delete do before committing), as a
        one-call transaction to commit alone or with others (`commit_group`)."""
        if op.op != "insert":
            _require(op.if_match, require_if_match)
        txn = Txn(self, caller, None, single=True)
        if op.op == "insert":
            txn.insert(op.collection, op.data, id=op.id, idempotency_key=idempotency_key)
        elif op.id is None:
            raise Invalid(f"a {op.op} needs the document's id")
        elif op.op == "replace":
            txn.replace(op.collection, op.id, op.data, if_match=op.if_match)
        elif op.op == "patch":
            txn.patch(op.collection, op.id, op.data, if_match=op.if_match)
        elif op.op == "delete":
            txn.delete(op.collection, op.id, if_match=op.if_match)
        else:
            raise Invalid(f"unknown operation {op.op!r}: insert, replace, patch or delete")
        return txn

    def batch(
        self, caller: Caller, ops: Sequence[WriteOp], *, budget: Budget | None = None
    ) -> list[DataDocument | None]:
        """Several writes, all or nothing; a result per op (None for a delete)."""
        txn = Txn(self, caller, budget, single=True)
        for op in ops:
            if op.op == "insert":
                txn.insert(op.collection, op.data, id=op.id)
            elif op.id is None:
                raise Invalid(f"a {op.op} needs the document's id")
            elif op.op == "replace":
                txn.replace(op.collection, op.id, op.data, if_match=op.if_match)
            elif op.op == "patch":
                txn.patch(op.collection, op.id, op.data, if_match=op.if_match)
            elif op.op == "delete":
                txn.delete(op.collection, op.id, if_match=op.if_match)
            else:
                raise Invalid(f"unknown operation {op.op!r}: insert, replace, patch or delete")
        return txn.commit()

    def commit_group(self, txns: Sequence[Txn]) -> list[list[DataDocument | None] | DataError]:
        """Commit independent transactions (concurrent single writes) in one write transaction of the store:
        each still all or nothing, its results or its own error (Conflict, PreconditionFailed, ...) in its
        place. What a busy gateway does with the writes that queued up while it committed the previous ones."""
        prepared = [(txn, txn._prepare()) for txn in txns]
        items = [item for _, item in prepared if item is not None]
        stored = iter(self.store.commit_group(items) if items else ())
        out: list[list[DataDocument | None] | DataError] = []
        for txn, item in prepared:
            try:
                out.append(txn._finish(next(stored)) if item is not None else list(txn.replayed))
            except DataError as error:
                out.append(error)
        return out

    def changes(self, caller: Caller, since: int = 0, *, limit: int = DEFAULT_LIMIT) -> list[DataChange]:
        """The change feed after sequence `since`: what the caller may read, in its tenant."""
        if limit < 1:
            raise BadFilter("limit must be at least 1")
        policies = self.policies()
        names = readable_collections(caller, policies, self.collection_names())
        rules = {n: read_rule(caller, policies, n) for n in names}
        out: list[DataChange] = []
        cursor = since
        while len(out) < limit:
            rows = self.store.changes(cursor, caller.tenant, names, min(MAX_LIMIT, limit * 2))
            if not rows:
                break
            for row in rows:
                cursor = row.seq
                before = json.loads(row.before) if row.before else None
                after = json.loads(row.after) if row.after else None
                rule = rules[row.collection]
                if rule is None or not any(d is not None and matches(rule, d) for d in (before, after)):
                    continue
                out.append(
                    DataChange(
                        row.seq,
                        row.txn,
                        row.at,
                        row.collection,
                        row.id,
                        row.op,
                        before,
                        after,
                        row.actor,
                        row.function,
                        row.revision,
                    )
                )
                if len(out) == limit:
                    break
        return out

    # -- internals used by Txn -------------------------------------------------------------------------

    def _audit(self, caller: Caller, action: str, target: str) -> None:
        if self.audit is not None and caller.kind in ("function", "operator"):
            self.audit(caller, action, target)


class Txn:
    """One transaction of one caller. Reads see the transaction's own writes."""

    def __init__(
        self, plane: DataPlane, caller: Caller, budget: Budget | None, *, record: bool = True, single: bool = False
    ) -> None:
        self.plane = plane
        self.caller = caller
        self.budget = budget
        self.record = record  # whether reads are recorded for commit-time validation
        self.single = single  # a one-call transaction: a stale If-Match is a 412, not a 409
        self.reads: dict[tuple[str, str], int] = {}
        self.finds: list[tuple[Query, tuple[tuple[str, int], ...]]] = []
        self.writes: dict[tuple[str, str], _Pending] = {}
        self._policies: Sequence[Policy] | None = None
        self._preloaded: dict[tuple[str, str], StoredDoc | None] = {}
        self.replayed: list[DataDocument] = []  # inserts answered from their Idempotency-Key (nothing to write)
        self.closed = False

    # -- rights ----------------------------------------------------------------------------------------

    def _pol(self) -> Sequence[Policy]:
        if self._policies is None:
            self._policies = self.plane.policies()
        return self._policies

    def _read_rule(self, collection: str) -> Filter | None:
        return read_rule(self.caller, self._pol(), collection)

    def _write_rule(self, collection: str) -> Filter:
        rule = write_rule(self.caller, self._pol(), collection)
        if rule is None:
            raise Forbidden(f"you may not write to collection {collection!r}")
        return rule

    def _charge(self, **amounts: int) -> None:
        if self.budget is not None:
            self.budget.charge(**amounts)

    def _open(self) -> None:
        if self.closed:
            raise Invalid("this transaction has already been committed or rolled back")

    # -- reads -----------------------------------------------------------------------------------------

    def _current(self, collection: str, id: str) -> StoredDoc | None:
        """The document as this transaction sees it (its own writes first), recording the version read."""
        pending = self.writes.get((collection, id))
        if pending is not None:
            if pending.op == "delete":
                return None
            before = pending.before
            assert pending.text is not None
            now = docstore.timestamp()
            return StoredDoc(
                self.caller.tenant,
                id,
                pending.expected + 1,
                before.created_at if before else now,
                before.created_by if before else self.caller.subject,
                now,
                self.caller.subject,
                pending.text,
            )
        key = (collection, id)
        if key in self._preloaded:
            return self._preloaded[key]  # its version is recorded already
        row = self.plane.store.get(collection, self.caller.tenant, id)
        if self.record:
            version = row.version if row else 0
            if self.reads.setdefault((collection, id), version) != version:
                # Read twice, changed between: what this transaction decided on is stale already.
                raise Conflict("a concurrent write changed what this transaction read; retry it")
        return row

    def preload(self, collection: str, ids: Iterable[str]) -> None:
        """Read the documents `ids` of `collection` (absent ones too) in one query, recording their versions as
        this transaction's reads, so that the gets and writes that follow need no lookup each (an import's
        batch). Rights, limits and ids are checked by those calls, as always."""
        self._open()
        self.plane.collection(collection)
        wanted = [i for i in dict.fromkeys(ids) if (collection, i) not in self.writes]
        found = self.plane.store.get_many(collection, self.caller.tenant, wanted)
        for id in wanted:
            row = found.get(id)
            if self.record:
                version = row.version if row else 0
                if self.reads.setdefault((collection, id), version) != version:
                    raise Conflict("a concurrent write changed what this transaction read; retry it")
            self._preloaded[(collection, id)] = row

    def get(self, collection: str, id: str) -> DataDocument:
        row, doc = self._get(collection, id)
        return doc if doc is not None else _document(row)

    def get_text(self, collection: str, id: str) -> tuple[int, str]:
        """`get`, as (version, the envelope's JSON text): the stored text is spliced in, and decoded only when
        a row rule has to look at it (a REST GET encodes nothing)."""
        row, _ = self._get(collection, id)
        return row.version, row.envelope_text()

    def _get(self, collection: str, id: str) -> tuple[StoredDoc, DataDocument | None]:
        """The row the caller may read (NotFound otherwise), with its decoded document when a rule needed it."""
        self._open()
        self.plane.collection(collection)
        _check_id(id)
        rule = self._read_rule(collection)
        self._charge(operations=1)
        if rule is None:
            raise NotFound(f"no document {id!r} in {collection!r}")
        row = self._current(collection, id)
        if row is None:
            raise NotFound(f"no document {id!r} in {collection!r}")
        self._charge(scanned=1, read=len(row.data))
        doc = None
        if not is_always(rule):
            doc = _document(row)
            if not matches(rule, doc.as_json()):
                raise NotFound(f"no document {id!r} in {collection!r}")
        self.plane._audit(self.caller, "data.get", f"{collection}/{id}")
        return row, doc

    def find(
        self,
        collection: str,
        filter: Any = None,
        *,
        order: Sequence[str] = (),
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> Page:
        self._open()
        info = self.plane.collection(collection)
        ast = parse(filter if filter is not None else {})
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise BadFilter("limit must be a whole number of at least 1")
        limit = min(limit, MAX_LIMIT)
        keys = _order(order, info)
        after = _decode_cursor(cursor, keys) if cursor else None
        self._charge(operations=1)
        rule = self._read_rule(collection)
        if rule is None:
            return Page((), None)
        combined = ast if is_always(rule) else (rule if is_always(ast) else And((ast, rule)))
        query = Query(collection, self.caller.tenant, combined, keys, limit + 1, after)
        rows = self.plane.store.find(query)
        self._charge(scanned=len(rows), read=sum(len(r.data) for r in rows))
        if self.record:
            self.finds.append((query, tuple((r.id, r.version) for r in rows)))
        docs = [_document(r) for r in rows]
        if any(key[0] == collection for key in self.writes):
            docs = self._overlay(collection, combined, keys, after, docs)
        more = len(docs) > limit
        docs = docs[:limit]
        next_cursor = _encode_cursor(keys, docs[-1]) if more and docs else None
        self.plane._audit(self.caller, "data.find", collection)
        return Page(tuple(docs), next_cursor)

    def _overlay(
        self,
        collection: str,
        ast: Filter,
        keys: tuple[tuple[str, bool], ...],
        after: tuple[Any, ...] | None,
        docs: list[DataDocument],
    ) -> list[DataDocument]:
        """A find's rows with this transaction's own writes applied (re-sorted, so a page may shift)."""
        by_id = {d.id: d for d in docs}
        for name, id in list(self.writes):
            if name != collection:
                continue
            by_id.pop(id, None)
            row = self._current(collection, id)
            if row is None:
                continue
            doc = _document(row)
            if matches(ast, doc.as_json()) and (after is None or _sort_key(doc, keys) > _cursor_key(after, keys)):
                by_id[id] = doc
        return sorted(by_id.values(), key=lambda d: _sort_key(d, keys))

    # -- writes ----------------------------------------------------------------------------------------

    def insert(
        self, collection: str, data: Any, *, id: str | None = None, idempotency_key: str | None = None
    ) -> DataDocument:
        self._open()
        info = self.plane.collection(collection)
        rule = self._write_rule(collection)
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 255:
                raise Invalid("an Idempotency-Key has 1 to 255 characters")
            stored = self.plane.store.idempotent(self.caller.tenant, collection, idempotency_key)
            if stored is not None:
                self.replayed.append(_from_json(json.loads(stored)))
                return self.replayed[-1]
        generated = id is None
        if id is None:
            id = uuid7()
        else:
            _check_id(id)
        text = _validate(info, data)
        self._charge(operations=1, written=len(text))
        # A fresh UUIDv7 names no document yet: no read to make (were one there, the primary key would refuse
        # the commit of this write, alone).
        existing = None if generated else self._current(collection, id)
        if existing is not None:
            raise Conflict(f"a document {id!r} already exists in {collection!r}")
        doc = self._stage(collection, id, "insert", data, text, None, 0, False, rule)
        self.writes[(collection, id)].idempotency_key = idempotency_key
        return doc

    def replace(self, collection: str, id: str, data: Any, *, if_match: int | None = None) -> DataDocument:
        self._open()
        info = self.plane.collection(collection)
        _check_id(id)
        rule = self._write_rule(collection)
        text = _validate(info, data)
        self._charge(operations=1, written=len(text))
        before = self._existing(collection, id, if_match)
        return self._stage(collection, id, "replace", data, text, before, before.version, if_match is not None, rule)

    def patch(self, collection: str, id: str, patch: Any, *, if_match: int | None = None) -> DataDocument:
        self._open()
        info = self.plane.collection(collection)
        _check_id(id)
        rule = self._write_rule(collection)
        if not isinstance(patch, dict):
            raise Invalid("a merge patch is a JSON object")
        before = self._existing(collection, id, if_match)
        data = merge_patch(json.loads(before.data), patch)
        text = _validate(info, data)
        self._charge(operations=1, written=len(text))
        return self._stage(collection, id, "replace", data, text, before, before.version, if_match is not None, rule)

    def delete(self, collection: str, id: str, *, if_match: int | None = None) -> None:
        self._open()
        self.plane.collection(collection)
        _check_id(id)
        rule = self._write_rule(collection)
        self._charge(operations=1)
        before = self._existing(collection, id, if_match)
        if not is_always(rule) and not matches(rule, _document(before).as_json()):
            raise Forbidden(f"you may not delete document {id!r} of {collection!r}")
        self._put(
            _Pending(
                "delete",
                collection,
                id,
                before.version,
                None,
                None,
                self._original(collection, id, before),
                if_match is not None,
            )
        )

    def _existing(self, collection: str, id: str, if_match: int | None) -> StoredDoc:
        """The document a replace/patch/delete acts on: readable by the caller, at the If-Match version."""
        rule = self._read_rule(collection)
        row = self._current(collection, id) if rule is not None else None
        if row is None or (not is_always(rule) and not matches(rule, _document(row).as_json())):  # type: ignore[arg-type]
            raise NotFound(f"no document {id!r} in {collection!r}")
        self._charge(scanned=1, read=len(row.data))
        if if_match is not None and if_match != row.version:
            raise PreconditionFailed(f"document {id!r} is at version {row.version}, not {if_match}")
        return row

    def _original(self, collection: str, id: str, before: StoredDoc | None) -> StoredDoc | None:
        pending = self.writes.get((collection, id))
        return pending.before if pending is not None else before

    def _stage(
        self,
        collection: str,
        id: str,
        op: Literal["insert", "replace"],
        data: dict[str, Any],
        text: str,
        before: StoredDoc | None,
        expected: int,
        precondition: bool,
        rule: Filter,
    ) -> DataDocument:
        now = docstore.timestamp()
        doc = DataDocument(
            id,
            expected + 1,
            before.created_at if before else now,
            before.created_by if before else self.caller.subject,
            now,
            self.caller.subject,
            data,
        )
        if not is_always(rule):
            if before is not None and not matches(rule, _document(before).as_json()):
                raise Forbidden(f"you may not change document {id!r} of {collection!r}")
            if not matches(rule, doc.as_json()):
                raise Forbidden(f"your rights do not allow this document in {collection!r}")
        pending = self.writes.get((collection, id))
        if pending is not None and pending.op == "insert" and pending.before is None:
            op = "insert"  # inserted then replaced in the same transaction: still an insert
        self._put(
            _Pending(op, collection, id, expected, data, text, self._original(collection, id, before), precondition)
        )
        return doc

    def _put(self, pending: _Pending) -> None:
        key = (pending.collection, pending.id)
        earlier = self.writes.get(key)
        if earlier is not None:
            # The stored version the chain of writes starts from, and the one write that replaces it.
            pending.expected = earlier.expected
            pending.precondition = pending.precondition or earlier.precondition
            pending.idempotency_key = earlier.idempotency_key
            if earlier.op == "insert" and pending.op == "delete":
                del self.writes[key]  # inserted and deleted: nothing to write
                return
        self.writes[key] = pending

    # -- commit ----------------------------------------------------------------------------------------

    def commit(self) -> list[DataDocument | None]:
        """Validate what was read and apply the writes in one short write transaction; a result per buffered
        write (None: deleted). Conflict (409) when something read changed; a one-call transaction's stale
        If-Match is PreconditionFailed (412)."""
        item = self._prepare()
        if item is None:
            return []
        try:
            stored = self.plane.store.commit(item.tenant, item.reads, item.finds, item.writes, item.meta)
        except Exception as exc:  # noqa: BLE001 -- _finish re-raises it (typed) or answers a replay
            return self._finish(exc)
        return self._finish(stored)

    def _prepare(self) -> docstore.GroupItem | None:
        """Close the transaction; what the store must check and write (None: nothing to write)."""
        self._open()
        self.closed = True
        if not self.writes:
            return None
        caller = self.caller
        reads = [ReadCheck(c, caller.tenant, i, v) for (c, i), v in self.reads.items() if (c, i) not in self.writes]
        writes = [
            StoredWrite(p.op, p.collection, p.id, p.expected, p.text, p.before, p.idempotency_key)
            for p in self.writes.values()
        ]
        return docstore.GroupItem(
            caller.tenant,
            reads,
            self.finds,
            writes,
            docstore.ChangeMeta(caller.subject, caller.function, caller.revision),
        )

    def _finish(self, stored: list[StoredDoc | None] | Exception) -> list[DataDocument | None]:
        """The results of a commit, or its failure as the data plane's error."""
        try:
            if isinstance(stored, Exception):
                raise stored
        except docstore.StaleWrite as exc:
            pending = list(self.writes.values())[exc.index] if exc.index is not None else None
            if self.single and pending is not None and pending.precondition:
                raise PreconditionFailed(f"document {pending.id!r} changed since version {pending.expected}") from None
            if self.single and pending is not None and pending.op == "insert":
                raise Conflict(f"a document {pending.id!r} already exists in {pending.collection!r}") from None
            raise Conflict("a concurrent write changed what this transaction read; retry it") from None
        except docstore.UniqueViolation as exc:
            raise Conflict(
                f"a document with the same {exc.fields} already exists in {exc.collection!r} (unique index)"
            ) from None
        except docstore.IdempotentReplay as exc:
            return [_from_json(json.loads(exc.response))]
        assert not isinstance(stored, Exception)
        # The new envelopes, around the data this transaction already holds (no decoding of what it encoded).
        return [
            None if row is None else _document(row, p.data) for row, p in zip(stored, self.writes.values(), strict=True)
        ]

    def staged_bytes(self) -> int:
        """The size of the documents this transaction would write (what keeping it costs)."""
        return sum(len(p.text) for p in self.writes.values() if p.text is not None)

    def rollback(self) -> None:
        self.closed = True
        self.writes.clear()


# -- helpers ---------------------------------------------------------------------------------------------


def _require(if_match: int | None, required: bool) -> None:
    if required and if_match is None:
        raise PreconditionRequired("this request needs an If-Match header with the document's version")


def _only(results: list[DataDocument | None]) -> DataDocument:
    doc = results[0] if results else None
    assert doc is not None
    return doc


_BAD_ID = re.compile(r"[/\x00-\x1f\x7f-\x9f]")


def _check_id(id: Any) -> None:
    if not isinstance(id, str) or not 1 <= len(id) <= MAX_ID:
        raise Invalid(f"a document id has 1 to {MAX_ID} characters")
    if _BAD_ID.search(id) is not None:
        raise Invalid("a document id cannot contain '/' or control characters")
    if not id.isascii():
        try:
            id.encode("utf-8")
        except UnicodeEncodeError:
            raise Invalid("a document id must be valid UTF-8") from None


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _validate(info: _Collection, data: Any) -> str:
    """The document's stored text, after the object, size and schema checks (every violation)."""
    if not isinstance(data, dict):
        raise Invalid("a document is a JSON object")
    try:
        text = _ENCODE(data)
    except (ValueError, TypeError) as exc:
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


def _document(row: StoredDoc, data: dict[str, Any] | None = None) -> DataDocument:
    """The document of a stored row; `data`: its data already decoded (row.data is its encoding)."""
    return DataDocument(
        row.id,
        row.version,
        row.created_at,
        row.created_by,
        row.updated_at,
        row.updated_by,
        json.loads(row.data) if data is None else data,
    )


def _from_json(raw: dict[str, Any]) -> DataDocument:
    return DataDocument(
        raw["id"], raw["version"], raw["createdAt"], raw["createdBy"], raw["updatedAt"], raw["updatedBy"], raw["data"]
    )


def _stored_spec(collection: Collection) -> dict[str, Any]:
    return {
        "schema": collection.schema,
        "indexes": [{"fields": list(i.fields), "unique": i.unique} for i in collection.indexes],
        "limits": {"documentSize": collection.document_size},
    }


def _compile(row: docstore.CollectionRow) -> _Collection:
    try:
        model = parse_collection(row.name, row.spec)
    except ParseError as exc:
        raise DataUnavailable(f"collection {row.name!r} is stored with a bad definition: {exc}") from None
    indexed = frozenset({"id"} | {f for i in model.indexes for f in i.fields})
    return _Collection(model, row.version, _schema_check(model.schema), indexed)


def _schema_check(schema: Any) -> Callable[[Any], Iterator[tuple[str, str]]]:
    if schema is None or schema is True or schema == {}:
        return lambda data: iter(())
    from jsonschema import Draft202012Validator

    from fnctl.manifest.fastschema import compile_check

    validator = Draft202012Validator(schema)
    fast = compile_check(schema, "urn:fnctl:collection", lambda uri: None)

    def check(data: Any) -> Iterator[tuple[str, str]]:
        if fast is not None and fast(data):
            return
        for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
            yield render_path(tuple(error.absolute_path)), error.message

    return check


# -- ordering and cursors -------------------------------------------------------------------------------


def _order(order: Sequence[str] | str, info: _Collection) -> tuple[tuple[str, bool], ...]:
    """(field, descending) pairs, then id; only indexed fields (and id) may order a query."""
    if isinstance(order, str):
        order = [o for o in order.split(",") if o]
    keys: list[tuple[str, bool]] = []
    for raw in order:
        if not isinstance(raw, str) or not raw:
            raise BadFilter("order takes field names, '-' before one for descending")
        desc = raw.startswith("-")
        name = raw[1:] if desc else raw
        if name not in info.indexed:
            indexed = ", ".join(sorted(info.indexed))
            raise BadFilter(
                f"cannot order by {name!r}: it is not indexed (order by one of: {indexed}; or add an "
                "index to the collection)"
            )
        keys.append((name, desc))
    if not any(k == "id" for k, _ in keys):
        keys.append(("id", keys[-1][1] if keys else False))
    return tuple(keys)


def _field_value(doc: DataDocument, name: str) -> Any:
    if name in METADATA_FIELDS:
        return doc.as_json()[name]
    node: Any = doc.data
    for part in name.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if not isinstance(node, dict | list) else json.dumps(node)


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


def _sort_key(doc: DataDocument, keys: tuple[tuple[str, bool], ...]) -> tuple[_Key, ...]:
    return tuple(_Key(_field_value(doc, name), desc) for name, desc in keys)


def _cursor_key(after: tuple[Any, ...], keys: tuple[tuple[str, bool], ...]) -> tuple[_Key, ...]:
    return tuple(_Key(v, desc) for v, (_, desc) in zip(after, keys, strict=True))


def _encode_cursor(keys: tuple[tuple[str, bool], ...], last: DataDocument) -> str:
    raw = {"o": [("-" if d else "") + k for k, d in keys], "v": [_field_value(last, k) for k, _ in keys]}
    return base64.urlsafe_b64encode(_ENCODE(raw).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, keys: tuple[tuple[str, bool], ...]) -> tuple[Any, ...]:
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


def stored_spec(collection: Collection) -> dict[str, Any]:
    """A Collection's spec as the data store keeps it (what `apply`'s diff compares with the live one)."""
    return _stored_spec(collection)
