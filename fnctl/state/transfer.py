"""Copying a project's deployment state from one store to another (`fnctl state migrate`), then checking
the copy: every table's row count, and both audit chains walked on the target and ending at the same head.

Both schemas keep the same columns in the same order, so a row is copied as it is read (`INSERT … VALUES`
by position). The source is read inside one write transaction: writers (a running gateway's audit and
metrics) wait the few seconds the copy takes, and what is copied is one consistent state.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fnctl.state import auditchain
from fnctl.state.auditlog import audit_chain, audit_head
from fnctl.state.store import Store, StoreError

# Every table of the deployment state, in an order that keeps references pointing backwards.
TABLES: tuple[str, ...] = (
    "settings",
    "revisions",
    "routes",
    "instances",
    "rollouts",
    "rollout_events",
    "audit",
    "invocations",
    "api_keys",
    "metrics",
    "cron_state",
    "resources",
    "deploys",
    "trigger_state",
)
_IDENTITY = ("rollouts", "rollout_events", "deploys")  # ids the database hands out: continue after the copy
_BATCH = 200  # rows per INSERT


@dataclass(frozen=True)
class TableCount:
    table: str
    source: int
    target: int

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "source": self.source, "target": self.target}


@dataclass(frozen=True)
class Transfer:
    """What was copied and what the check found: counts per table, each chain on both sides."""

    counts: tuple[TableCount, ...]
    chains: tuple[tuple[auditchain.ChainReport, auditchain.ChainReport], ...]  # (source, target) per chain

    @property
    def problems(self) -> list[str]:
        return problems(self.counts, self.chains)

    def as_json(self) -> dict[str, Any]:
        return {
            "verified": not self.problems,
            "problems": self.problems,
            "tables": [c.as_json() for c in self.counts],
            "chains": [{"source": s.as_json(), "target": t.as_json()} for s, t in self.chains],
        }


def problems(
    counts: Iterable[TableCount], chains: Iterable[tuple[auditchain.ChainReport, auditchain.ChainReport]]
) -> list[str]:
    """What a copy's check found: each table whose row counts differ, each (source, target) chain broken on
    the target or ending at another head (the deployment state's and the document store's copies alike)."""
    found = [
        f"{c.table}: {c.source} rows in the source, {c.target} in the target" for c in counts if c.source != c.target
    ]
    for source, target in chains:
        if not target.intact:
            found.append(f"{target.table} chain on the target: {target.findings[0].message}")
        if (source.head_id, source.head_hash) != (target.head_id, target.head_hash):
            found.append(f"{target.table} chain: head {target.head_id} on the target, {source.head_id} in the source")
    return found


def copy_state(source: Store, target: Store) -> Transfer:
    """Copy every row of `source` into `target`, which must hold no state yet, and check the copy."""
    occupied = [t for t in TABLES if target._query(f"SELECT 1 FROM {t} LIMIT 1")]
    if occupied:
        raise StoreError(
            f"the target already holds a state ({', '.join(occupied[:3])}, ...): migrate into an empty database"
        )
    with source.transaction():
        with target.transaction():
            for table in TABLES:
                _copy_table(source, target, table)
            if target.location.is_postgres:  # identity columns continue after the highest id copied
                for table in _IDENTITY:
                    target._query(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(MAX(id), 0) + 1, false) "
                        f"FROM {table}"
                    )
        counts = tuple(TableCount(t, _count(source, t), _count(target, t)) for t in TABLES)
        chains = tuple((_walk(source, table), _walk(target, table)) for table in auditchain.CHAINS)
    return Transfer(counts, chains)


def _copy_table(source: Store, target: Store, table: str) -> None:
    order = " ORDER BY id" if table in auditchain.CHAINS else ""  # a chained record must take the next id
    rows = source._stream(f"SELECT * FROM {table}{order}", f"cannot read {table}")
    for chunk in _chunks(rows):
        marks = "(" + ", ".join("?" * len(chunk[0])) + ")"
        target._execute(
            f"INSERT INTO {table} VALUES " + ", ".join([marks] * len(chunk)),
            tuple(itertools.chain.from_iterable(chunk)),
        )


def _chunks(rows: Iterator[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    while chunk := list(itertools.islice(rows, _BATCH)):
        yield chunk


def _count(store: Store, table: str) -> int:
    return int(store._query(f"SELECT COUNT(*) FROM {table}")[0][0])


def _walk(store: Store, table: str) -> auditchain.ChainReport:
    return auditchain.verify(table, audit_chain(store, table), audit_head(store, table))
