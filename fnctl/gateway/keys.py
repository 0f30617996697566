"""API keys of the gateway: creation (shown once), listing, revocation and verification.

A key reads `fnk_<id>_<secret>`: the id is public (it names the key in listings and the audit), the
secret is 256 random bits. Only the SHA-256 of the whole key is stored; a slow password hash would buy
nothing against guessing 256 random bits and would cost every request milliseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from fnctl.deploy.actor import actor
from fnctl.errors import BadInput, UnknownName
from fnctl.state import keystore
from fnctl.state.keystore import ApiKey
from fnctl.state.store import Store

PREFIX = "fnk"
_ID_BYTES = 6  # 12 hex digits: unique enough to name a key, and short enough to read out
_SECRET_BYTES = 32
_KEY = re.compile(r"^fnk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_ROLE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # the manifests' role names (DNS labels)


class UnknownKey(UnknownName):
    """No key has the id given."""

    def __init__(self, key_id: str) -> None:
        super().__init__("API key", key_id, "does not exist", "see `fnctl keys list`")


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
        keystore.add(store, key, digest(raw))
        store.audit(
            actor=created_by,
            command="keys create",
            action="create key",
            target=key.id,
            outcome="ok",
            detail=_describe(key),
        )
    keystore.announce(store)
    return key, raw


def _describe(key: ApiKey) -> str:
    return f"name {key.name}; roles {','.join(key.roles)}" + (f"; tenant {key.tenant}" if key.tenant else "")


def list_keys(store: Store, include_revoked: bool = True) -> list[ApiKey]:
    keys = keystore.all_keys(store)
    return keys if include_revoked else [k for k in keys if k.active]


def revoke(store: Store, key_id: str, revoked_by: str | None = None) -> tuple[ApiKey, bool]:
    """Revoke the key with this id (or the key given whole); returns it and whether this call revoked it.
    Audited with `revoked_by` as the actor (default: `identity.actor()`), a revocation that changed nothing too."""
    key_id = _id_of(key_id)
    with store.transaction():
        changed = keystore.mark_revoked(store, key_id)
        found = keystore.find(store, key_id)
        if found is None:  # nothing was changed: the transaction ends empty
            raise UnknownKey(key_id)
        key = found[0]
        store.audit(
            actor=revoked_by or actor(),
            command="keys revoke",
            action="revoke key",
            target=key.id,
            outcome="ok" if changed else "unchanged",
            detail=_describe(key) + ("" if changed else "; already revoked"),
        )
    if changed:
        keystore.announce(store)  # gateways forget what they remembered of it from their next request on
    return key, changed


def verify(store: Store, raw: str) -> ApiKey | None:
    """The active key whose value is `raw`, or None (unknown, malformed, revoked or wrong secret)."""
    match = _KEY.match(raw)
    if match is None:
        return None
    found = keystore.find(store, match.group(1))
    # compare in constant time: the id is public, so only the secret's hash must not leak through timing
    if found is None or not hmac.compare_digest(found[1], digest(raw)):
        return None
    key = found[0]
    return key if key.active else None


def _id_of(given: str) -> str:
    """An id, from an id or a whole key (a user may paste either)."""
    match = _KEY.match(given)
    if match:
        return match.group(1)
    return given.removeprefix(PREFIX + "_").strip()
