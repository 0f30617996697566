"""One transaction of one caller (`Txn`): rights checked on every call (unreadable → NotFound), reads that
see the transaction's own writes and are recorded (versions, and each find's results) for the commit to
validate, writes buffered and checked (ids, schema, size, If-Match, row rules, the budget), then committed in
one short write transaction of the store (`commit`). The write lock is never held across user code."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol

from fnctl.data.caller import Caller
from fnctl.data.collections import CollectionDef, validate
from fnctl.data.commit import Pending, finish, prepare
from fnctl.data.documents import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Budget,
    DataDocument,
    Page,
    WriteOp,
    check_id,
    document,
    from_json,
    merge_patch,
    uuid7,
)
from fnctl.data.errors import BadFilter, Conflict, Forbidden, Invalid, NotFound, PreconditionFailed
from fnctl.data.filters import And, Filter, is_always, matches, parse
from fnctl.data.ordering import decode_cursor, encode_cursor, order_keys, with_own_writes
from fnctl.data.rights import read_rule, write_rule
from fnctl.manifest.model import Policy
from fnctl.state.docrecords import GroupItem, Query, StoredDoc, timestamp
from fnctl.state.docstore import DocStore


class TxnHost(Protocol):
    """What a transaction needs of its data plane (`plane.DataPlane`)."""

    store: DocStore
    policies: Callable[[], Sequence[Policy]]

    def collection(self, name: str) -> CollectionDef: ...

    def audit_call(self, caller: Caller, action: str, target: str) -> None: ...

    def commit_item(self, item: GroupItem) -> list[StoredDoc | None]: ...


class Txn:
    """One transaction of one caller. Reads see the transaction's own writes."""

    def __init__(
        self, plane: TxnHost, caller: Caller, budget: Budget | None, *, record: bool = True, single: bool = False
    ) -> None:
        self.plane = plane
        self.caller = caller
        self.budget = budget
        self.record = record  # whether reads are recorded for commit-time validation
        self.single = single  # a one-call transaction: a stale If-Match is a 412, not a 409
        self.reads: dict[tuple[str, str], int] = {}
        self.finds: list[tuple[Query, tuple[tuple[str, int], ...]]] = []
        self.writes: dict[tuple[str, str], Pending] = {}
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
            now = timestamp()
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
        self._record(collection, id, row)
        return row

    def _record(self, collection: str, id: str, row: StoredDoc | None) -> None:
        """Remember the version read (0: absent), for the commit to validate."""
        if self.record:
            version = row.version if row else 0
            if self.reads.setdefault((collection, id), version) != version:
                # Read twice, changed between: what this transaction decided on is stale already.
                raise Conflict("a concurrent write changed what this transaction read; retry it")

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
            self._record(collection, id, row)
            self._preloaded[(collection, id)] = row

    def get(self, collection: str, id: str) -> DataDocument:
        row, doc = self._get(collection, id)
        return doc if doc is not None else document(row)

    def get_text(self, collection: str, id: str) -> tuple[int, str]:
        """`get`, as (version, the envelope's JSON text): the stored text is spliced in, and decoded only when
        a row rule has to look at it (a REST GET encodes nothing)."""
        row, _ = self._get(collection, id)
        return row.version, row.envelope_text()

    def _get(self, collection: str, id: str) -> tuple[StoredDoc, DataDocument | None]:
        """The row the caller may read (NotFound otherwise), with its decoded document when a rule needed it."""
        self._open()
        self.plane.collection(collection)
        check_id(id)
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
            doc = document(row)
            if not matches(rule, doc.as_json()):
                raise NotFound(f"no document {id!r} in {collection!r}")
        self.plane.audit_call(self.caller, "data.get", f"{collection}/{id}")
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
        keys = order_keys(order, info.indexed)
        after = decode_cursor(cursor, keys) if cursor else None
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
        docs = [document(r) for r in rows]
        if any(key[0] == collection for key in self.writes):
            own = {id: self._current(collection, id) for name, id in list(self.writes) if name == collection}
            docs = with_own_writes(docs, own, combined, keys, after, self.plane.store.composites_as_null)
        more = len(docs) > limit
        docs = docs[:limit]
        next_cursor = encode_cursor(keys, docs[-1], self.plane.store.composites_as_null) if more and docs else None
        self.plane.audit_call(self.caller, "data.find", collection)
        return Page(tuple(docs), next_cursor)

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
                self.replayed.append(from_json(json.loads(stored)))
                return self.replayed[-1]
        generated = id is None
        if id is None:
            id = uuid7()
        else:
            check_id(id)
        text = validate(info, data)
        self._charge(operations=1, written=len(text))
        # A fresh UUIDv7 names no document yet: no read to make (were one there, the primary key would refuse
        # the commit of this write, alone).
        existing = None if generated else self._current(collection, id)
        if existing is not None:
            raise Conflict(f"a document {id!r} already exists in {collection!r}")
        doc = self._stage(collection, id, "insert", data, text, None, 0, False, rule)
        pending = self.writes[(collection, id)]
        pending.idempotency_key, pending.fresh = idempotency_key, generated
        return doc

    def replace(self, collection: str, id: str, data: Any, *, if_match: int | None = None) -> DataDocument:
        self._open()
        info = self.plane.collection(collection)
        check_id(id)
        rule = self._write_rule(collection)
        text = validate(info, data)
        self._charge(operations=1, written=len(text))
        before = self._existing(collection, id, if_match)
        return self._stage(collection, id, "replace", data, text, before, before.version, if_match is not None, rule)

    def patch(self, collection: str, id: str, patch: Any, *, if_match: int | None = None) -> DataDocument:
        self._open()
        info = self.plane.collection(collection)
        check_id(id)
        rule = self._write_rule(collection)
        if not isinstance(patch, dict):
            raise Invalid("a merge patch is a JSON object")
        before = self._existing(collection, id, if_match)
        data = merge_patch(json.loads(before.data), patch)
        text = validate(info, data)
        self._charge(operations=1, written=len(text))
        return self._stage(collection, id, "replace", data, text, before, before.version, if_match is not None, rule)

    def delete(self, collection: str, id: str, *, if_match: int | None = None) -> None:
        self._open()
        self.plane.collection(collection)
        check_id(id)
        rule = self._write_rule(collection)
        self._charge(operations=1)
        before = self._existing(collection, id, if_match)
        if not is_always(rule) and not matches(rule, document(before).as_json()):
            raise Forbidden(f"you may not delete document {id!r} of {collection!r}")
        self._put(
            Pending(
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

    def write(self, op: WriteOp, *, idempotency_key: str | None = None) -> None:
        """One write of a batch (or a single staged call) by its operation."""
        if op.op == "insert":
            self.insert(op.collection, op.data, id=op.id, idempotency_key=idempotency_key)
        elif op.id is None:
            raise Invalid(f"a {op.op} needs the document's id")
        elif op.op == "replace":
            self.replace(op.collection, op.id, op.data, if_match=op.if_match)
        elif op.op == "patch":
            self.patch(op.collection, op.id, op.data, if_match=op.if_match)
        elif op.op == "delete":
            self.delete(op.collection, op.id, if_match=op.if_match)
        else:
            raise Invalid(f"unknown operation {op.op!r}: insert, replace, patch or delete")

    def _existing(self, collection: str, id: str, if_match: int | None) -> StoredDoc:
        """The document a replace/patch/delete acts on: readable by the caller, at the If-Match version."""
        rule = self._read_rule(collection)
        row = self._current(collection, id) if rule is not None else None
        if row is None or (not is_always(rule) and not matches(rule, document(row).as_json())):  # type: ignore[arg-type]
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
        now = timestamp()
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
            if before is not None and not matches(rule, document(before).as_json()):
                raise Forbidden(f"you may not change document {id!r} of {collection!r}")
            if not matches(rule, doc.as_json()):
                raise Forbidden(f"your rights do not allow this document in {collection!r}")
        pending = self.writes.get((collection, id))
        if pending is not None and pending.op == "insert" and pending.before is None:
            op = "insert"  # inserted then replaced in the same transaction: still an insert
        self._put(
            Pending(op, collection, id, expected, data, text, self._original(collection, id, before), precondition)
        )
        return doc

    def _put(self, pending: Pending) -> None:
        key = (pending.collection, pending.id)
        earlier = self.writes.get(key)
        if earlier is not None:
            # The stored version the chain of writes starts from, and the one write that replaces it.
            pending.expected = earlier.expected
            pending.precondition = pending.precondition or earlier.precondition
            pending.idempotency_key, pending.fresh = earlier.idempotency_key, earlier.fresh
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
            stored = self.plane.commit_item(item)
        except Exception as exc:  # noqa: BLE001 -- _finish re-raises it (typed) or answers a replay
            return self._finish(exc)
        return self._finish(stored)

    def _prepare(self) -> GroupItem | None:
        """Close the transaction; what the store must check and write (None: nothing to write)."""
        self._open()
        self.closed = True
        return prepare(self.caller, self.reads, self.finds, self.writes)

    def _finish(self, stored: list[StoredDoc | None] | Exception) -> list[DataDocument | None]:
        """The results of a commit, or its failure as the data plane's error."""
        return finish(stored, list(self.writes.values()), self.single)

    def staged_bytes(self) -> int:
        """The size of the documents this transaction would write (what keeping it costs)."""
        return sum(len(p.text) for p in self.writes.values() if p.text is not None)

    def rollback(self) -> None:
        self.closed = True
        self.writes.clear()


# -- helpers ---------------------------------------------------------------------------------------------
