"""The gateway's API keys in the store (`api_keys` table): what is known about each key, and the SHA-256 of the
whole key, never the key itself; and the keys' generation, a counter that every change of a key moves in the
same transaction (what a gateway's memory of verified keys depends on: nothing else that commits to the store).
Making, checking and revoking keys is fnctl.gateway.keys's."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from fnctl.state.store import Store


@dataclass(frozen=True)
class ApiKey:
    """What is known about a key besides its secret (which is never kept)."""

    id: str
    name: str
    roles: tuple[str, ...]
    tenant: str | None
    created_at: float
    created_by: str
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "roles": list(self.roles),
            "tenant": self.tenant,
            "createdAt": self.created_at,
            "createdBy": self.created_by,
            "revokedAt": self.revoked_at,
            "active": self.active,
        }


_COLUMNS = "id, name, roles, tenant, created_at, created_by, revoked_at"
_GENERATION = "keys-generation"  # the settings row


def generation(store: Store) -> int:
    """The keys' generation: moves whenever a key is added or revoked (0 before the first change)."""
    rows = store._query("SELECT value FROM settings WHERE key = ?", (_GENERATION,))
    return int(rows[0][0]) if rows else 0


def _bump(store: Store) -> None:
    """Move the generation, inside the transaction of the change it announces."""
    store._execute(
        "INSERT INTO settings VALUES (?, '1') ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
        (_GENERATION,),
    )


def add(store: Store, key: ApiKey, key_hash: str) -> None:
    store._execute(
        f"INSERT INTO api_keys ({_COLUMNS}, key_hash) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
        (key.id, key.name, json.dumps(list(key.roles)), key.tenant, key.created_at, key.created_by, key_hash),
    )
    _bump(store)


def all_keys(store: Store) -> list[ApiKey]:
    """Every key, revoked ones too, oldest first."""
    return [_key(row) for row in store._query(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at, id")]


def find(store: Store, key_id: str) -> tuple[ApiKey, str] | None:
    """The key with this id and its stored hash, or None."""
    rows = store._query(f"SELECT {_COLUMNS}, key_hash FROM api_keys WHERE id = ?", (key_id,))
    return (_key(rows[0][:7]), str(rows[0][7])) if rows else None


def mark_revoked(store: Store, key_id: str) -> bool:
    """Revoke the key now; False when it was revoked already (or does not exist). Call it inside a transaction:
    the revocation and the generation's move land together."""
    changed = (
        store._execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id))
        == 1
    )
    if changed:
        _bump(store)
    return changed


def _key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(
        row[0],
        row[1],
        tuple(json.loads(row[2])),
        row[3],
        float(row[4]),
        row[5],
        None if row[6] is None else float(row[6]),
    )
