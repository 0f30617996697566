"""Rollouts and their events in the store (`rollouts`, `rollout_events`): the rows a rollout's driver records
before it acts, so that any process holding the deploy lock can resume it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from fnctl.state.store import Store


@dataclass(frozen=True)
class RolloutRow:
    id: int
    function: str
    stable: int | None  # the revision traffic comes from
    canary: int  # the revision being rolled out
    strategy: str
    step: int
    state: str
    detail: dict[str, Any]  # the progress: weights, timestamps, analysis counts (fnctl.rollout.machine reads it)
    started_at: float
    updated_at: float


@dataclass(frozen=True)
class RolloutEventRow:
    id: int
    rollout: int
    at: float
    kind: str
    step: int
    message: str
    data: dict[str, Any]


def add(
    store: Store,
    function: str,
    stable: int | None,
    canary: int,
    strategy: str,
    state: str,
    detail: dict[str, Any],
    started_at: float,
) -> int:
    now = started_at
    return store._insert(
        "INSERT INTO rollouts (function, from_revision, to_revision, strategy, step, state, detail, started_at, "
        "updated_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
        (function, stable, canary, strategy, state, json.dumps(detail, sort_keys=True), now, now),
    )


def update(store: Store, rollout_id: int, *, step: int, state: str, detail: dict[str, Any]) -> None:
    store._execute(
        "UPDATE rollouts SET step = ?, state = ?, detail = ?, updated_at = ? WHERE id = ?",
        (step, state, json.dumps(detail, sort_keys=True), time.time(), rollout_id),
    )


def rollouts(store: Store, function: str | None = None, *, states: tuple[str, ...] = ()) -> list[RolloutRow]:
    """Rollouts, oldest first; of one function and in some states when asked."""
    where, params = [], []
    if function is not None:
        where.append("function = ?")
        params.append(function)
    if states:
        where.append(f"state IN ({', '.join('?' * len(states))})")
        params += list(states)
    return _rollout_rows(store, " AND ".join(where), tuple(params))


def rollout(store: Store, rollout_id: int) -> RolloutRow | None:
    found = _rollout_rows(store, "id = ?", (rollout_id,))
    return found[0] if found else None


def _rollout_rows(store: Store, where: str, params: tuple[Any, ...]) -> list[RolloutRow]:
    query = (
        "SELECT id, function, from_revision, to_revision, strategy, step, state, detail, started_at, "
        "updated_at FROM rollouts" + (f" WHERE {where}" if where else "") + " ORDER BY id"
    )
    return [
        RolloutRow(
            int(r[0]),
            r[1],
            None if r[2] is None else int(r[2]),
            int(r[3]),
            r[4],
            int(r[5]),
            r[6],
            json.loads(r[7]),
            float(r[8]),
            float(r[9]),
        )
        for r in store._query(query, params)
    ]


def add_event(
    store: Store, rollout_id: int, kind: str, step: int, message: str, data: dict[str, Any] | None = None
) -> int:
    return store._insert(
        "INSERT INTO rollout_events (rollout, at, kind, step, message, data) VALUES (?, ?, ?, ?, ?, ?)",
        (rollout_id, time.time(), kind, step, message, json.dumps(data or {}, sort_keys=True)),
    )


def last_event_id(store: Store) -> int:
    """The id of the latest rollout event of any rollout (0 when none): follow new ones with `after=`."""
    return int(store._query("SELECT COALESCE(MAX(id), 0) FROM rollout_events")[0][0])


def events(store: Store, rollout_id: int, *, after: int = 0) -> list[RolloutEventRow]:
    return [
        RolloutEventRow(int(r[0]), int(r[1]), float(r[2]), r[3], int(r[4]), r[5], json.loads(r[6]))
        for r in store._query(
            "SELECT id, rollout, at, kind, step, message, data FROM rollout_events "
            "WHERE rollout = ? AND id > ? ORDER BY id",
            (rollout_id, after),
        )
    ]
