"""The `fnctl audit` verbs over an open store: list records by filter, and verify the hash chains (the
walk itself is pure: fnctl.state.auditchain)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from fnctl.errors import BadInput
from fnctl.manifest.units import parse_duration
from fnctl.state import auditchain, docstore
from fnctl.state.auditlog import (
    AuditEntry,
    AuditFilter,
    InvocationEntry,
    audit_chain,
    audit_hash_known,
    audit_head,
    audit_records,
    invocation_records,
)
from fnctl.state.store import Store


def parse_since(text: str, now: float) -> float:
    """Seconds since the epoch from `--since`: a duration back from `now` (`90m`, `1h`, `2h30m`) or an ISO 8601
    time (`2024-05-01`, `2024-05-01T12:00:00+02:00`; without a zone: local time)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(
            f"--since: {text!r} is neither a duration (e.g. 1h, 30m) nor an ISO time (e.g. 2024-05-01T12:00:00Z)"
        ) from None
    return when.timestamp() if when.tzinfo else when.astimezone(UTC).timestamp()


def records(
    store: Store, where: AuditFilter, *, invocations: bool, limit: int
) -> list[AuditEntry] | list[InvocationEntry]:
    """The newest `limit` records of the deploy audit (or of the invocation audit) matching `where`."""
    if limit < 1:
        raise BadInput("--limit must be at least 1")
    return invocation_records(store, where, limit) if invocations else audit_records(store, where, limit)


def record_json(row: AuditEntry | InvocationEntry) -> dict[str, object]:
    """A record as `fnctl audit -o json` prints it (and `/v1/audit` answers): its keys are an interface."""
    if isinstance(row, AuditEntry):
        return {
            "id": row.id,
            "at": row.at,
            "actor": row.actor,
            "command": row.command,
            "action": row.action,
            "target": row.target,
            "outcome": row.outcome,
            "detail": row.detail,
            "gitCommit": row.git_commit,
            "gitAuthor": row.git_author,
            "gitSubject": row.git_subject,
            "hash": row.hash,
        }
    return {
        "id": row.id,
        "at": row.at,
        "principal": row.principal,
        "function": row.function,
        "revision": row.revision,
        "trigger": row.trigger,
        "outcome": row.outcome,
        "status": row.status,
        "durationMs": row.duration_ms,
        "requestId": row.request_id,
        "source": row.source,
        "hash": row.hash,
    }


@dataclass(frozen=True)
class Verification:
    chains: tuple[auditchain.ChainReport, ...]
    anchors: tuple[auditchain.Finding, ...]  # anchors given that no chain holds
    checked_at: float

    @property
    def intact(self) -> bool:
        return not self.anchors and all(c.intact for c in self.chains)

    def as_json(self) -> dict[str, object]:
        return {
            "intact": self.intact,
            "checkedAt": self.checked_at,
            "format": auditchain.FORMAT,
            "chains": [c.as_json() for c in self.chains],
            "anchors": [f.as_json() for f in self.anchors],
        }


def verify(store: Store, anchors: tuple[str, ...] = ()) -> Verification:
    """Walk every chain in the store, and the data file's change log beside it when there is one; an anchor is
    a head hash recorded outside the store earlier (of any of these chains)."""
    bad = [a for a in anchors if len(a.strip()) != 64 or any(c not in "0123456789abcdef" for c in a.strip().lower())]
    if bad:
        raise BadInput(f"--anchor {bad[0]!r} is not a record hash (64 hex digits, as `fnctl audit verify` prints)")
    chains = [
        auditchain.verify(table, audit_chain(store, table), audit_head(store, table)) for table in auditchain.CHAINS
    ]
    known = functools.partial(audit_hash_known, store)
    if not docstore.exists_at(store.location):  # nothing was ever written to the data plane: no change log to check
        return Verification(tuple(chains), tuple(auditchain.check_anchors(chains, anchors, known)), time.time())
    documents = docstore.open_at(store.location)
    try:
        chains.append(documents.verify_changes())  # the data plane's change log: the audit of every data write
        found = auditchain.check_anchors(chains, anchors, lambda h: known(h) or documents.change_hash_known(h))
    finally:
        documents.close()
    return Verification(tuple(chains), tuple(found), time.time())
