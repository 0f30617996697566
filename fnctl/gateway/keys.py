"""API keys of the gateway: creation (shown once), listing, revocation and verification.

A key reads `fnk_<id>_<secret>`: the id is public (it names the key in listings and the audit), the
secret is 256 random bits. Only the SHA-256 of the whole key is stored; a slow password hash would buy
nothing against guessing 256 random bits and would cost every request milliseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fnctl.deploy.actor import actor
from fnctl.errors import BadInput, FnctlError
from fnctl.state.store import Store

PREFIX = "fnk"
_ID_BYTES = 6  # 12 hex digits: unique enough to name a key, and short enough to read out
_SECRET_BYTES = 32
_KEY = re.compile(r"^fnk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_ROLE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # the manifests' role names (DNS labels)


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
        return {"id": self.id, "name": self.name, "roles": list(self.roles), "tenant": self.tenant,
                "createdAt": self.created_at, "createdBy": self.created_by, "revokedAt": self.revoked_at,
                "active": self.active}


class UnknownKey(FnctlError):
    """No key has the id given."""


def looks_like_key(token: str) -> bool:
    """True for tokens in the API key format (so a bearer token can be told from a JWT)."""
    return token.startswith(PREFIX + "_")


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def create(store: Store, name: str, roles: tuple[str, ...], tenant: str | None, created_by: str) -> tuple[ApiKey, str]:
    """A new key and its raw value; the raw value is returned here once and cannot be recovered later.
    Audited with `created_by` as the actor (the key's id, name, roles and tenant: never its secret)."""
    if not name.strip():
        raise BadInput("a key needs a name (what or who uses it)")
    bad = [r for r in roles if not _ROLE.match(r)]
    if bad:
        raise BadInput(f"invalid role name {bad[0]!r} (lower-case letters, digits and '-', like manifest roles)")
    if not roles:
        raise BadInput("a key needs at least one role (--role)")
    key_id = secrets.token_hex(_ID_BYTES)
    raw = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(_SECRET_BYTES)}"
    key = ApiKey(key_id, name, tuple(dict.fromkeys(roles)), tenant or None, time.time(), created_by, None)
    with store.transaction():  # the key and its audit record land together
        store.execute("INSERT INTO api_keys (id, name, key_hash, roles, tenant, created_at, created_by, revoked_at) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                      (key.id, key.name, digest(raw), json.dumps(list(key.roles)), key.tenant, key.created_at,
                       key.created_by))
        store.audit(actor=created_by, command="keys create", action="create key", target=key.id, outcome="ok",
                    detail=_describe(key))
    return key, raw


def _describe(key: ApiKey) -> str:
    return f"name {key.name}; roles {','.join(key.roles)}" + (f"; tenant {key.tenant}" if key.tenant else "")


def list_keys(store: Store, include_revoked: bool = True) -> list[ApiKey]:
    rows = store.query("SELECT id, name, roles, tenant, created_at, created_by, revoked_at FROM api_keys "
                       "ORDER BY created_at, id")
    keys = [_key(row) for row in rows]
    return keys if include_revoked else [k for k in keys if k.active]


def revoke(store: Store, key_id: str, revoked_by: str | None = None) -> tuple[ApiKey, bool]:
    """Revoke the key with this id (or the key given whole); returns it and whether this call revoked it.
    Audited with `revoked_by` as the actor (default: `identity.actor()`), a revocation that changed nothing too."""
    key_id = _id_of(key_id)
    with store.transaction():
        changed = store.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                (time.time(), key_id))
        rows = store.query("SELECT id, name, roles, tenant, created_at, created_by, revoked_at FROM api_keys "
                           "WHERE id = ?", (key_id,))
        if rows:
            key = _key(rows[0])
            store.audit(actor=revoked_by or actor(), command="keys revoke", action="revoke key", target=key.id,
                        outcome="ok" if changed == 1 else "unchanged",
                        detail=_describe(key) + ("" if changed == 1 else "; already revoked"))
    if not rows:
        raise UnknownKey(f"no API key has the id {key_id!r} (see `fnctl keys list`)")
    return key, changed == 1


def verify(store: Store, raw: str) -> ApiKey | None:
    """The active key whose value is `raw`, or None (unknown, malformed, revoked or wrong secret)."""
    match = _KEY.match(raw)
    if match is None:
        return None
    rows = store.query("SELECT id, name, roles, tenant, created_at, created_by, revoked_at, key_hash "
                       "FROM api_keys WHERE id = ?", (match.group(1),))
    # compare in constant time: the id is public, so only the secret's hash must not leak through timing
    if not rows or not hmac.compare_digest(str(rows[0][7]), digest(raw)):
        return None
    key = _key(rows[0][:7])
    return key if key.active else None


def _id_of(given: str) -> str:
    """An id, from an id or a whole key (a user may paste either)."""
    match = _KEY.match(given)
    if match:
        return match.group(1)
    return given.removeprefix(PREFIX + "_").strip()


def _key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(row[0], row[1], tuple(json.loads(row[2])), row[3], float(row[4]), row[5],
                  None if row[6] is None else float(row[6]))
