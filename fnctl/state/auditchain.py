"""The audit logs' hash chains: the canonical, versioned serialisation of a record, its hash, and the pure
walk that finds changed, removed, reordered and truncated records (`fnctl audit verify`).

Each chained table (the deploy audit `audit`, the invocation audit `invocations`) is a chain of its own:
record N stores `prev_hash` (record N-1's `hash`, or GENESIS for the first) and `hash` = SHA-256 of
`serialise(table, record, prev_hash)`. Triggers only stop honest mistakes (`INSERT OR REPLACE` and
`DROP TRIGGER` pass them); the chain makes an edit *visible*. What it cannot show without an anchor kept
outside the store (a truncated tail, or a chain rewritten whole) is documented in docs/audit.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fnctl.jsontext import compact_encoder

GENESIS = "0" * 64  # the prev_hash of a chain's first record
FORMAT = "fnctl-audit-chain/1"  # the serialisation's version: part of every hash, so a v2 can coexist

# The fields each chain covers, in order, with the SQL type's Python conversion: a value is hashed as SQLite
# gives it back (an int sent to a REAL column comes back a float), so writer and verifier agree.
AUDIT_FIELDS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("id", int),
    ("at", float),
    ("actor", str),
    ("command", str),
    ("action", str),
    ("target", str),
    ("git_commit", str),
    ("outcome", str),
    ("detail", str),
    ("git_author", str),
    ("git_subject", str),
)
INVOCATION_FIELDS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("id", int),
    ("at", float),
    ("request_id", str),
    ("principal", str),
    ("function", str),
    ("revision", int),
    ("trigger", str),
    ("outcome", str),
    ("status", int),
    ("duration_ms", float),
    ("source", str),
)
CHAINS: dict[str, tuple[tuple[str, Callable[[Any], Any]], ...]] = {
    "audit": AUDIT_FIELDS,
    "invocations": INVOCATION_FIELDS,
}
# The data plane's change log, in its own file (fnctl.state.docstore): the audit of every data write.
CHANGE_FIELDS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("seq", int),
    ("txn", str),
    ("at", str),
    ("collection", str),
    ("tenant", str),
    ("id", str),
    ("op", str),
    ("before", str),
    ("after", str),
    ("actor", str),
    ("function", str),
    ("revision", int),
)
DATA_CHAINS: dict[str, tuple[tuple[str, Callable[[Any], Any]], ...]] = {"changes": CHANGE_FIELDS}

_JSON = compact_encoder(
    allow_nan=True
)  # the hashed serialisation: JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def head_setting(table: str) -> str:
    """The settings key of a chain's head ("<id> <hash>"): it catches a tail deleted by someone who did not
    also rewrite the settings row (an anchor outside the store catches the rest)."""
    return f"audit-head:{table}"


def fields(table: str) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """The fields a chain covers: the state store's (CHAINS) or the data file's (DATA_CHAINS)."""
    return CHAINS[table] if table in CHAINS else DATA_CHAINS[table]


def normalise(table: str, values: Sequence[Any]) -> tuple[Any, ...]:
    """`values` (a record's fields in CHAINS order) as the store keeps and returns them."""
    kinds, kept = tuple(map(type, values)), _KEPT[table]
    if kinds in kept:  # each already of its column's type: converting changes nothing (1.3 µs per audit row)
        return tuple(values)
    converts = _CONVERTS[table]
    normal = tuple([None if v is None else convert(v) for convert, v in zip(converts, values, strict=True)])
    if all(kind is convert or kind is _NONE for kind, convert in zip(kinds, converts, strict=True)):
        kept.add(kinds)
    return normal


_ALL_CHAINS = {**CHAINS, **DATA_CHAINS}
_CONVERTS = {table: tuple(convert for _, convert in chain) for table, chain in _ALL_CHAINS.items()}
_NONE = type(None)
# per chain, the fields' types of the records `normalise` returns unchanged (a few: the fields that may be null)
_KEPT: dict[str, set[tuple[type, ...]]] = {table: set() for table in _ALL_CHAINS}


def record_hash(table: str, values: Sequence[Any], prev_hash: str) -> str:
    """The hash of a record whose normalised fields are `values`, linked to `prev_hash`."""
    return _hash(f"{FORMAT}\n{table}\n", values, prev_hash)


def _hash(head: str, values: Sequence[Any], prev_hash: str) -> str:
    # a tuple is written as the JSON array a list is
    return hashlib.sha256(f"{head}{prev_hash}\n{_JSON(values)}".encode()).hexdigest()


def link(table: str, rows: Iterable[Sequence[Any]], prev_hash: str) -> list[tuple[Any, ...]]:
    """`rows` (normalised fields, ids included) with `prev_hash` and `hash` appended, chained from `prev_hash`."""
    head = f"{FORMAT}\n{table}\n"
    linked = []
    for values in rows:
        digest = _hash(head, values, prev_hash)
        linked.append((*values, prev_hash, digest))
        prev_hash = digest
    return linked


class Problem(StrEnum):
    CHANGED = "changed"  # the record's content no longer matches its hash
    REMOVED = "removed"  # ids are missing before this record
    REORDERED = "reordered"  # the record links to another record than the one before it
    RELINKED = "relinked"  # its link matches no record: records before it were removed or rewritten
    TRUNCATED = "truncated"  # records after the last one are gone (the head marker says so)
    HEAD = "head"  # the head marker is missing, malformed or names another hash
    ANCHOR = "anchor"  # an anchor recorded outside the store is not in the chain


@dataclass(frozen=True)
class Finding:
    table: str
    problem: Problem
    record: int | None  # the record id concerned (None: the chain as a whole)
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "problem": self.problem.value, "record": self.record, "message": self.message}


@dataclass(frozen=True)
class ChainReport:
    table: str
    records: int
    head_id: int | None
    head_hash: str  # GENESIS for an empty chain
    findings: tuple[Finding, ...]

    @property
    def intact(self) -> bool:
        return not self.findings

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "records": self.records,
            "headId": self.head_id,
            "headHash": self.head_hash,
            "intact": self.intact,
            "findings": [f.as_json() for f in self.findings],
        }


def verify(table: str, rows: Iterable[Sequence[Any]], head: str | None, *, limit: int = 20) -> ChainReport:
    """Walk a chain: `rows` are (fields in CHAINS order..., prev_hash, hash) by ascending id, `head` the head
    setting. Returns at most `limit` findings, the first broken links first."""
    findings: list[Finding] = []
    by_hash: dict[str, int] = {}
    count, prev_id, prev_hash = 0, 0, GENESIS
    width = len(fields(table))

    def found(problem: Problem, record: int | None, message: str) -> None:
        if len(findings) < limit:
            findings.append(Finding(table, problem, record, message))

    for row in rows:
        count += 1
        values, stored_prev, stored_hash = normalise(table, row[:width]), str(row[width]), str(row[width + 1])
        record = int(values[0])
        if record_hash(table, values, stored_prev) != stored_hash:
            found(Problem.CHANGED, record, f"record {record} was changed: its content does not match its hash")
        if record != prev_id + 1:
            gap = f"{prev_id + 1}" if record == prev_id + 2 else f"{prev_id + 1}-{record - 1}"
            found(Problem.REMOVED, record, f"record(s) {gap} before record {record} were removed")
        elif stored_prev != prev_hash:
            earlier = by_hash.get(stored_prev)
            if earlier is not None:
                found(
                    Problem.REORDERED,
                    record,
                    f"record {record} follows record {earlier} in the chain, "
                    f"not record {prev_id}: records were reordered",
                )
            else:
                found(
                    Problem.RELINKED,
                    record,
                    f"record {record} does not link to record {prev_id or 'genesis'}: "
                    "records before it were removed or rewritten",
                )
        by_hash[stored_hash] = record
        prev_id, prev_hash = record, stored_hash
    _check_head(table, head, prev_id, prev_hash, by_hash, found)
    return ChainReport(table, count, prev_id or None, prev_hash, tuple(findings))


def _check_head(
    table: str,
    head: str | None,
    last_id: int,
    last_hash: str,
    by_hash: dict[str, int],
    found: Callable[[Problem, int | None, str], None],
) -> None:
    if head is None:
        if last_id:
            found(Problem.HEAD, None, f"the {table} chain has records but no head marker")
        return
    parts = head.split()
    if len(parts) != 2 or not parts[0].isdigit():
        found(Problem.HEAD, None, f"the {table} head marker is malformed")
        return
    head_id, head_hash = int(parts[0]), parts[1]
    if head_id > last_id:
        found(
            Problem.TRUNCATED, head_id, f"records {last_id + 1}-{head_id} at the end of the {table} chain were removed"
        )
    elif head_id < last_id:
        found(Problem.HEAD, last_id, f"records after {head_id} were appended without updating the head marker")
    elif head_hash != last_hash:
        found(Problem.HEAD, head_id, f"the head marker names another hash for record {head_id}")


def check_anchors(
    reports: Sequence[ChainReport], anchors: Sequence[str], present: Callable[[str], bool]
) -> list[Finding]:
    """Findings for the anchors (hashes recorded elsewhere, e.g. printed by an earlier verify) that no chain
    holds: the chain was truncated before them or rewritten. `present(hash)` looks one up."""
    tables = ",".join(r.table for r in reports)
    return [
        Finding(
            tables,
            Problem.ANCHOR,
            None,
            f"anchor {a} is in no chain: the log was truncated or rewritten after it was recorded",
        )
        for a in anchors
        if not present(a.strip().lower())
    ]
