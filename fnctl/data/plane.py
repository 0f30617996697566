"""The data plane's one service: every read and write (REST, context.db, the CLI, batches, procedures) goes
through `DataPlane`, which checks the caller's rights (unreadable → NotFound), the tenant, the collection's
schema and size limit, ids, If-Match versions and the per-invocation budget (in its transactions, `txn`),
then hands the store one short write transaction (`fnctl.state.docstore`).

Transactions are optimistic: a `Txn` records the versions it reads (and the results of its finds), buffers its
writes (reading its own), and `commit()` validates and applies everything in one immediate-mode write
transaction; a changed version is a `Conflict` (409), which a procedure retries. The write lock is never held
across user code.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fnctl.data.caller import Caller
from fnctl.data.collections import CollectionDef, compile_collection, stored_spec
from fnctl.data.commit import plain_insert
from fnctl.data.committed import Committed
from fnctl.data.documents import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    AuditSink,
    Budget,
    CollectionSync,
    DataChange,
    DataDocument,
    Nonconforming,
    Page,
    WriteOp,
    document,
)
from fnctl.data.errors import BadFilter, DataError, NotFound, PreconditionRequired
from fnctl.data.filters import matches
from fnctl.data.rights import read_rule, readable_collections
from fnctl.data.txn import Txn
from fnctl.manifest.model import Collection, Policy
from fnctl.state.docrecords import ChangeRow, GroupItem, StoredDoc
from fnctl.state.docstore import DocStore

COLLECTIONS_TTL = 1.0  # seconds a DataPlane trusts its copy of the collections' definitions


class DataPlane:
    def __init__(
        self,
        store: DocStore,
        policies: Callable[[], Sequence[Policy]],
        audit: AuditSink | None = None,
        outbox: Callable[[], Mapping[str, Sequence[str]]] | None = None,
    ) -> None:
        self.store = store
        self.policies = policies
        self.audit = audit
        # collection → its onCommit triggers: each change of the collection is queued for each of them, in the
        # change's own transaction (the outbox of fnctl.state.outbox).
        self._outbox = outbox
        # Called with each commit's changes, right after it committed, on the committing thread: views evict
        # what they overlap before the write is answered.
        self.listeners: list[Callable[[Sequence[Committed]], None]] = []
        self._collections: dict[str, CollectionDef] = {}
        self._loaded = -COLLECTIONS_TTL
        self._lock = threading.Lock()

    # -- collections -----------------------------------------------------------------------------------

    def collection(self, name: str) -> CollectionDef:
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
                fresh[name] = known if known is not None and known.version == row.version else compile_collection(row)
            self._collections, self._loaded = fresh, time.monotonic()

    def sync_collections(self, collections: Sequence[Collection], prune: bool, force: bool) -> CollectionSync:
        """Create or update the collections' tables and indexes (what `apply` does). With `prune`, drop the
        collections that are no longer declared; a non-empty one only with `force` (else Conflict, nothing
        changed)."""
        result = self.store.sync_collections({c.name: stored_spec(c) for c in collections}, prune, force)
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
        staged = self.stage(
            caller, WriteOp("replace", collection, id, data, if_match), require_if_match=require_if_match, budget=budget
        )
        return _only(staged.commit())

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
        staged = self.stage(
            caller, WriteOp("patch", collection, id, patch, if_match), require_if_match=require_if_match, budget=budget
        )
        return _only(staged.commit())

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
        staged = self.stage(
            caller, WriteOp("delete", collection, id, None, if_match), require_if_match=require_if_match, budget=budget
        )
        staged.commit()

    def stage(
        self,
        caller: Caller,
        op: WriteOp,
        *,
        idempotency_key: str | None = None,
        require_if_match: bool = False,
        budget: Budget | None = None,
    ) -> Txn:
        """One write checked and staged (what insert / replace / patch / delete do before committing), as a
        one-call transaction to commit alone or with others (`commit_group`)."""
        if op.op != "insert":
            _require(op.if_match, require_if_match)
        txn = Txn(self, caller, budget, single=True)
        txn.write(op, idempotency_key=idempotency_key)
        return txn

    def batch(
        self, caller: Caller, ops: Sequence[WriteOp], *, budget: Budget | None = None
    ) -> list[DataDocument | None]:
        """Several writes, all or nothing; a result per op (None for a delete)."""
        txn = Txn(self, caller, budget, single=True)
        for op in ops:
            txn.write(op)
        return txn.commit()

    def commit_group(self, txns: Sequence[Txn]) -> list[list[DataDocument | None] | DataError]:
        """Commit independent transactions (concurrent single writes) in one write transaction of the store:
        each still all or nothing, its results or its own error (Conflict, PreconditionFailed, ...) in its
        place. What a busy gateway does with the writes that queued up while it committed the previous ones."""
        plain = self._commit_plain(txns)
        if plain is not None:
            return plain
        prepared = [(txn, txn._prepare()) for txn in txns]
        items = [item for _, item in prepared if item is not None]
        logged: list[ChangeRow] = []
        stored = iter(self.store.commit_group(items, self.outbox_routes(), logged) if items else ())
        self.committed(logged)
        out: list[list[DataDocument | None] | DataError] = []
        for txn, item in prepared:
            try:
                out.append(txn._finish(next(stored)) if item is not None else list(txn.replayed))
            except DataError as error:
                out.append(error)
        return out

    def _commit_plain(self, txns: Sequence[Txn]) -> list[list[DataDocument | None] | DataError] | None:
        """`commit_group` when every transaction is one fresh insert and nothing else (`commit.plain_insert`):
        the store's shorter path for them (`DocStore.commit_inserts`). None when one is not, or when a unique
        index refused one (nothing was written: the general path answers each)."""
        inserts = []
        for txn in txns:
            plain = None if txn.closed else plain_insert(txn.caller, txn.reads, txn.finds, txn.writes)
            if plain is None:
                return None
            inserts.append(plain)
        logged: list[ChangeRow] = []
        stored = self.store.commit_inserts(inserts, self.outbox_routes(), logged)
        if stored is None:
            return None
        for txn in txns:
            txn.closed = True
        self.committed(logged)
        # the new envelopes around the data each transaction holds, as `commit.finish` gives them
        return [
            [document(row, pending.data)]
            for row, txn in zip(stored, txns, strict=True)
            for pending in txn.writes.values()
        ]

    def changes(
        self, caller: Caller, since: int = 0, *, limit: int = DEFAULT_LIMIT, collection: str | None = None
    ) -> list[DataChange]:
        """The change feed after sequence `since`: what the caller may read, in its tenant (of one collection
        when `collection` is given: one the caller may not read gives an empty feed, as an unknown one)."""
        if limit < 1:
            raise BadFilter("limit must be at least 1")
        policies = self.policies()
        names = readable_collections(caller, policies, self.collection_names())
        if collection is not None:
            names = [name for name in names if name == collection]
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

    # -- used by Txn -----------------------------------------------------------------------------------

    def commit_item(self, item: GroupItem) -> list[StoredDoc | None]:
        """One transaction's commit in the store (with its outbox rows), then its changes to the listeners."""
        logged: list[ChangeRow] = []
        stored = self.store.commit(item, self.outbox_routes(), logged)
        self.committed(logged)
        return stored

    def outbox_routes(self) -> Mapping[str, Sequence[str]] | None:
        return None if self._outbox is None else self._outbox()

    def committed(self, rows: Sequence[ChangeRow]) -> None:
        """Tell the listeners what a commit changed (nothing when it changed nothing)."""
        if rows and self.listeners:
            changes = [committed(row) for row in rows]
            for listener in self.listeners:
                listener(changes)

    def audit_call(self, caller: Caller, action: str, target: str) -> None:
        if self.audit is not None and caller.kind in ("function", "operator"):
            self.audit(caller, action, target)


def committed(row: ChangeRow) -> Committed:
    """A change log row as the listeners receive it (its envelopes decoded when first read)."""
    return Committed(row.seq, row.collection, row.tenant, row.id, row.op, row.before or None, row.after or None)


def _require(if_match: int | None, required: bool) -> None:
    if required and if_match is None:
        raise PreconditionRequired("this request needs an If-Match header with the document's version")


def _only(results: list[DataDocument | None]) -> DataDocument:
    doc = results[0] if results else None
    assert doc is not None
    return doc
