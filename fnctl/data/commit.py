"""A transaction's commit, between the data plane and the store: the writes a transaction buffered
(`Pending`), what the store is asked to check and write (`prepare`), and what it answers, translated into the
data plane's results and errors (`finish`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fnctl.data.caller import Caller
from fnctl.data.documents import DataDocument, document, from_json
from fnctl.data.errors import Conflict, PreconditionFailed
from fnctl.state.docrecords import (
    ChangeMeta,
    GroupItem,
    IdempotentReplay,
    Query,
    ReadCheck,
    StaleWrite,
    StoredDoc,
    StoredWrite,
    UniqueViolation,
)
from fnctl.state.docwrites import PlainInsert

Finds = Sequence[tuple[Query, tuple[tuple[str, int], ...]]]  # each find's query and the (id, version) it saw


@dataclass
class Pending:
    op: Literal["insert", "replace", "delete"]
    collection: str
    id: str
    expected: int  # the version the write is based on (0: the document must not exist)
    data: dict[str, Any] | None
    text: str | None
    before: StoredDoc | None
    precondition: bool  # whether `expected` came from the caller's If-Match
    idempotency_key: str | None = None
    fresh: bool = False  # an insert under an id generated for it (UUIDv7): no stored document can have it


def prepare(
    caller: Caller, reads: Mapping[tuple[str, str], int], finds: Finds, writes: Mapping[tuple[str, str], Pending]
) -> GroupItem | None:
    """What the store must check and write (None: nothing to write)."""
    if not writes:
        return None
    checks = [ReadCheck(c, caller.tenant, i, v) for (c, i), v in reads.items() if (c, i) not in writes]
    stored = [
        StoredWrite(p.op, p.collection, p.id, p.expected, p.text, p.before, p.idempotency_key, p.fresh)
        for p in writes.values()
    ]
    return GroupItem(caller.tenant, checks, finds, stored, ChangeMeta(caller.subject, caller.function, caller.revision))


def plain_insert(
    caller: Caller, reads: Mapping[tuple[str, str], int], finds: Finds, writes: Mapping[tuple[str, str], Pending]
) -> PlainInsert | None:
    """A transaction that read nothing and inserts one document under a freshly generated id, without an
    Idempotency-Key, as the store's group of such inserts takes it (`docwrites.commit_inserts`); else None."""
    if reads or finds or len(writes) != 1:
        return None
    (p,) = writes.values()
    if p.op != "insert" or not p.fresh or p.idempotency_key is not None or p.before is not None or p.text is None:
        return None
    revision = None if caller.revision is None else int(caller.revision)
    return (p.collection, caller.tenant, p.id, p.text, caller.subject, caller.function, revision)


def finish(
    stored: list[StoredDoc | None] | Exception, writes: Sequence[Pending], single: bool
) -> list[DataDocument | None]:
    """The results of a commit, or its failure as the data plane's error (`single`: a one-call transaction,
    whose stale If-Match is a 412 and whose taken id is a 409 of its own)."""
    try:
        if isinstance(stored, Exception):
            raise stored
    except StaleWrite as exc:
        pending = writes[exc.index] if exc.index is not None else None
        if single and pending is not None and pending.precondition:
            raise PreconditionFailed(f"document {pending.id!r} changed since version {pending.expected}") from None
        if single and pending is not None and pending.op == "insert":
            raise Conflict(f"a document {pending.id!r} already exists in {pending.collection!r}") from None
        raise Conflict("a concurrent write changed what this transaction read; retry it") from None
    except UniqueViolation as exc:
        raise Conflict(
            f"a document with the same {exc.fields} already exists in {exc.collection!r} (unique index)"
        ) from None
    except IdempotentReplay as exc:
        return [from_json(json.loads(exc.response))]
    assert not isinstance(stored, Exception)
    # The new envelopes, around the data this transaction already holds (no decoding of what it encoded).
    return [None if row is None else document(row, p.data) for row, p in zip(stored, writes, strict=True)]
