"""The audit logs' records as read back: deploy audit and invocation entries, the filter that lists them, and
the chains, heads and hashes that `fnctl audit verify` checks (appending stays with `Store.append_chained`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fnctl.state import auditchain
from fnctl.state.store import Store


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    command: str
    action: str
    target: str
    git_commit: str | None
    outcome: str
    detail: str | None
    git_author: str | None = None
    git_subject: str | None = None
    hash: str | None = None  # its link in the hash chain (fnctl.state.auditchain)


_AUDIT_COLUMNS = "id, at, actor, command, action, target, git_commit, outcome, detail, git_author, git_subject, hash"


@dataclass(frozen=True)
class InvocationEntry:
    id: int
    at: float
    request_id: str
    principal: str | None
    function: str
    revision: int | None
    trigger: str | None
    outcome: str
    status: int
    duration_ms: float
    source: str | None
    hash: str | None


@dataclass(frozen=True)
class AuditFilter:
    """Which audit records to list: `since` (seconds since the epoch), `target` (the function, or the key
    id of a key's records), `actor` (exact)."""

    since: float | None = None
    target: str | None = None
    actor: str | None = None

    def sql(self, *, target_column: str, actor_column: str) -> tuple[str, tuple[Any, ...]]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("at >= ?", self.since),
            (f"{target_column} = ?", self.target),
            (f"{actor_column} = ?", self.actor),
        ):
            if value is not None:
                where.append(column)
                params.append(value)
        return (" WHERE " + " AND ".join(where) if where else ""), tuple(params)


def audit_records(store: Store, where: AuditFilter, limit: int = 100) -> list[AuditEntry]:
    """Deploy audit records matching `where`, newest first."""
    sql, params = where.sql(target_column="target", actor_column="actor")
    rows = store._query(f"SELECT {_AUDIT_COLUMNS} FROM audit{sql} ORDER BY id DESC LIMIT ?", (*params, limit))
    return [AuditEntry(*r) for r in rows]


def invocation_records(store: Store, where: AuditFilter, limit: int = 100) -> list[InvocationEntry]:
    """Invocation audit records matching `where` (actor: the principal), newest first."""
    sql, params = where.sql(target_column="function", actor_column="principal")
    columns = ", ".join(name for name, _ in auditchain.INVOCATION_FIELDS) + ", hash"
    rows = store._query(f"SELECT {columns} FROM invocations{sql} ORDER BY id DESC LIMIT ?", (*params, limit))
    return [InvocationEntry(*r) for r in rows]


def audit_chain(store: Store, table: str) -> Iterator[tuple[Any, ...]]:
    """Every record of a chained table with its links, by id (for auditchain.verify), streamed."""
    columns = ", ".join(name for name, _ in auditchain.CHAINS[table]) + ", prev_hash, hash"
    return store._stream(f"SELECT {columns} FROM {table} ORDER BY id", f"cannot read the {table} chain")


def audit_head(store: Store, table: str) -> str | None:
    return store.read_setting(auditchain.head_setting(table))


def audit_hash_known(store: Store, digest: str) -> bool:
    """Whether any chained record has this hash (an anchor kept outside the store)."""
    return any(store._query(f"SELECT 1 FROM {table} WHERE hash = ? LIMIT 1", (digest,)) for table in auditchain.CHAINS)
