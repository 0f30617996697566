"""The gateway's API keys in the store (`api_keys` table): what is known about each key, and the SHA-256 of the
whole key, never the key itself; and the keys' generation, a counter that every change of a key moves in the
same transaction (what a gateway's memory of verified keys depends on: nothing else that commits to the store),
and announces, once committed, in a stamp file beside the store (`KeysStamp`), which a gateway reads through a
memory map on every request: no SQL, no system call. Making, checking and revoking keys is fnctl.gateway.keys's."""

from __future__ import annotations

import json
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
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


def stamp_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + "-keys")


class KeysStamp:
    """The keys' generation as last announced, in `<store>-keys` (8 bytes), read through a shared memory map:
    what a gateway compares on every request to learn at once that a key changed. Only a hint: a change whose
    announcement was lost (a crash right after the commit) is found by reading the generation itself, which
    the gateway does at least every few seconds anyway. None from `read` when the file cannot be mapped."""

    def __init__(self, store_path: Path) -> None:
        self.path = stamp_path(store_path)
        self._map: mmap.mmap | None = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < 8:
                    os.pwrite(fd, bytes(8), 0)  # never truncated afterwards: the map stays valid
                self._map = mmap.mmap(fd, 8, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
        except OSError:
            self._map = None

    def read(self) -> bytes | None:
        return None if self._map is None else self._map[:8]

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def announce(store: Store) -> None:
    """Write the keys' generation to the stamp file (after the change committed). Best effort: a gateway
    that misses it reads the generation itself within KEYS_RECHECK seconds."""
    try:
        fd = os.open(stamp_path(store.path), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, generation(store).to_bytes(8, "little"), 0)
        finally:
            os.close(fd)
    except OSError:
        pass


KEYS_RECHECK = 2.0  # seconds: how long a gateway trusts the stamp alone before reading the generation itself


def _bump(store: Store) -> None:
    """Move the generation, inside the transaction of the change it announces."""
    store._execute(
        "INSERT INTO settings VALUES (?, '1') ON CONFLICT (key) DO UPDATE SET value = CAST(settings.value AS INTEGER) + 1",
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
