"""Who is calling and may they invoke this function: API keys and JWT bearer tokens to a `Principal`,
and the access rule (a function's `access.roles`, `public`, and the roles Policy documents grant).

JWTs are checked with the algorithms of the project's `[auth.jwt]` only, never the token's own choice,
and must carry `exp` (and `aud`/`iss` when configured). The one module that imports PyJWT.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt

from fnctl.errors import BadInput, FnctlError
from fnctl.gateway import keys
from fnctl.invocation.protocol import EncodedJson
from fnctl.jsontext import compact_encoder
from fnctl.manifest.project import CONFIG_FILE, Project, read_config
from fnctl.state import keystore
from fnctl.state.location import StateLocation
from fnctl.state.store import Store, connect

PUBLIC = "public"  # the role that lets anyone in, anonymous callers included
ANY_FUNCTION = "*"
_TOKEN_CACHE = 4096  # verified JWTs remembered (each until its exp)
WWW_AUTHENTICATE = 'Bearer realm="fnctl"'  # what a 401 answers with: no reason, no detail
# Algorithms that share a key type: a config may list several of one family, never two families, so a
# public key can never be taken for an HMAC secret (the classic RS256/HS256 confusion).
_FAMILIES = {
    "HS": ("HS256", "HS384", "HS512"),
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES256K", "ES384", "ES512"),
    "OKP": ("EdDSA",),
}


_CALLER_JSON = compact_encoder(allow_nan=False)


class PrincipalKind(StrEnum):
    ANONYMOUS = "anonymous"
    KEY = "key"
    JWT = "jwt"


@dataclass(frozen=True)
class Principal:
    subject: str  # "anonymous", "key:<key id>" or the JWT's `sub`
    roles: tuple[str, ...]
    tenant: str | None
    kind: PrincipalKind

    @property
    def audit_name(self) -> str:
        """The principal as the audit records it: its kind is always visible (`jwt:alice`, `key:1a2b…`)."""
        return self.subject if self.kind is not _JWT else f"jwt:{self.subject}"

    def as_caller(self) -> dict[str, Any]:
        """The identity handed to the handler (`context.caller`): built once per principal (the anonymous one
        and a cached JWT's serve many requests); only ever encoded, never changed."""
        caller: dict[str, Any] | None = self.__dict__.get("_caller")
        if caller is None:
            caller = {
                "subject": self.subject,
                "roles": list(self.roles),
                "tenant": self.tenant,
                "kind": self.kind.value,
            }
            object.__setattr__(self, "_caller", caller)  # a cache on a frozen value, outside its fields
        return caller

    def encoded_caller(self) -> EncodedJson:
        """`as_caller` as JSON text, encoded once per principal, as an invoke frame takes it (spliced in as it
        is): every invocation carries it."""
        encoded: EncodedJson | None = self.__dict__.get("_encoded_caller")
        if encoded is None:
            encoded = EncodedJson(_CALLER_JSON(self.as_caller()))
            object.__setattr__(self, "_encoded_caller", encoded)
        return encoded

    def caller_json(self) -> str:
        """`encoded_caller`'s text (every HTTP Trigger event carries it)."""
        return self.encoded_caller().text


ANONYMOUS = Principal("anonymous", (), None, PrincipalKind.ANONYMOUS)
_JWT = PrincipalKind.JWT  # a module constant: an enum member looked up on its class costs more (Python 3.11)


class Unauthenticated(FnctlError):
    """Credentials were given but are not valid (→ 401). `reason` is for the server's logs only."""

    def __init__(self, reason: str) -> None:
        super().__init__("authentication failed")
        self.reason = reason


@dataclass(frozen=True)
class JwtConfig:
    algorithms: tuple[str, ...]
    key: Any  # the verification key, parsed once (an HMAC secret as bytes, or a public key object)
    audience: tuple[str, ...] | None = None
    issuer: str | None = None
    roles_claim: str = "roles"
    tenant_claim: str = "tenant"
    leeway: float = 0.0


@dataclass(frozen=True)
class AuthConfig:
    jwt: JwtConfig | None = None  # None: bearer JWTs are refused; API keys still work

    @classmethod
    def from_project(cls, project: Project) -> AuthConfig:
        """The `[auth]` section of the project's fnctl.toml (schema-checked on reading)."""
        if not project.has_config:
            return cls()
        data = read_config(project.root / CONFIG_FILE).get("auth", {})
        return cls.from_mapping(data, project.root)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], root: Path) -> AuthConfig:
        section = data.get("jwt")
        return cls(None if section is None else _jwt_config(section, root))


def _jwt_config(section: Mapping[str, Any], root: Path) -> JwtConfig:
    where = f"{root / CONFIG_FILE}: auth.jwt"
    algorithms = tuple(section.get("algorithms", ()))
    families = {f for f, members in _FAMILIES.items() for a in algorithms if a in members}
    if not algorithms or len(families) != 1 or not all(a in _FAMILIES[next(iter(families))] for a in algorithms):
        raise BadInput(
            f"{where}.algorithms: list one or more algorithms of one family "
            '(HS*, RS*/PS*, ES* or EdDSA), e.g. ["RS256"]'
        )
    audience = section.get("audience")
    return JwtConfig(
        algorithms=algorithms,
        key=_verification_key(section, root, algorithms[0], where),
        audience=None if audience is None else ((audience,) if isinstance(audience, str) else tuple(audience)),
        issuer=section.get("issuer"),
        roles_claim=section.get("rolesClaim", "roles"),
        tenant_claim=section.get("tenantClaim", "tenant"),
        leeway=float(section.get("leeway", 0)),
    )


def _verification_key(section: Mapping[str, Any], root: Path, algorithm: str, where: str) -> Any:
    if "keyFile" in section:
        path = root / section["keyFile"]
        try:
            material = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"{where}.keyFile: cannot read {path}: {exc}") from None
    elif "keyEnv" in section:
        material = os.environ.get(section["keyEnv"], "")
        if not material:
            raise BadInput(f"{where}.keyEnv: the environment variable {section['keyEnv']} is not set")
    else:
        material = str(section.get("key", ""))
    if algorithm.startswith("HS"):
        material = material.rstrip("\r\n")  # `echo secret > file` adds a newline nobody means as key
    try:
        key = jwt.get_algorithm_by_name(algorithm).prepare_key(material)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise BadInput(f"{where}: the key does not suit {algorithm}: {exc}") from None
    if hasattr(key, "private_bytes"):  # a signing key: the gateway verifies only, and must not hold it
        raise BadInput(f"{where}: give the public key, not the private key")
    if algorithm.startswith("HS") and len(key) < 32:
        raise BadInput(f"{where}: an HMAC secret needs at least 32 bytes")
    return key


class Authenticator:
    """Credentials in request headers to a Principal. A key verified once is remembered (by its hash, never
    the key itself) while the keys' generation in the store is unchanged: a key added or revoked by any
    connection empties that memory before the next request is checked, so a revocation still takes effect at
    once. Other commits to the store (the audit and metrics writers', every fraction of a second) do not touch
    it. Whether the generation moved is read from the keys' stamp (`keystore.KeysStamp`: a memory map, no SQL
    on the request's path), and from the store itself when the stamp moved, every KEYS_RECHECK seconds (an
    announcement lost), or, without a stamp, whenever the store's data_version moved. The store connection
    stays on the thread that calls."""

    def __init__(self, store_path: StateLocation, config: AuthConfig) -> None:
        self._store_path = store_path
        self._config = config
        self._store: Store | None = None
        self._tokens: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._keys: dict[str, Principal] = {}  # digest of a verified key → its principal
        self._stamp = keystore.KeysStamp(store_path.path)
        # What the keys' generation was last read after (the stamp, or the store's data_version without one),
        # when to read it again regardless, and that generation: what _keys is valid for.
        self._seen: bytes | int | None = None
        self._recheck_at = 0.0
        self._keys_generation = -1

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """Anonymous without credentials; raises Unauthenticated for any credential that does not check out."""
        token = _credential(headers)
        if token is None:
            return ANONYMOUS
        if keys.looks_like_key(token):
            return self._from_key(token)
        if self._config.jwt is None:
            raise Unauthenticated("a bearer token that is no API key, and no [auth.jwt] is configured")
        return self._from_jwt(token, self._config.jwt)

    def _from_jwt(self, token: str, config: JwtConfig) -> Principal:
        """Verified tokens are remembered until their `exp`: a client sends the same token many times, and
        checking one costs far more than the rest of a request."""
        cached = self._tokens.get(token)
        if cached is not None:
            if time.time() < cached[1]:
                return cached[0]
            del self._tokens[token]
        principal, expires = _verify_jwt(token, config)
        if len(self._tokens) >= _TOKEN_CACHE:
            self._tokens.popitem(last=False)  # the oldest entry
        self._tokens[token] = (principal, expires)
        return principal

    def _from_key(self, raw: str) -> Principal:
        if self._store is None:
            self._store = connect(self._store_path)
        seen: bytes | int | None = self._stamp.read()
        if seen is None:
            seen = self._store.data_version()
        now = time.monotonic()
        if seen != self._seen or now >= self._recheck_at:
            self._seen, self._recheck_at = seen, now + keystore.KEYS_RECHECK
            generation = keystore.generation(self._store)
            if generation != self._keys_generation:
                self._keys.clear()
                self._keys_generation = generation
        hashed = keys.digest(raw)
        known = self._keys.get(hashed)
        if known is not None:
            return known
        key = keys.verify(self._store, raw)
        if key is None:
            raise Unauthenticated("unknown, revoked or wrong API key")
        principal = Principal(f"key:{key.id}", key.roles, key.tenant, PrincipalKind.KEY)
        if len(self._keys) >= _TOKEN_CACHE:
            self._keys.clear()
        self._keys[hashed] = principal
        return principal

    def close(self) -> None:
        self._stamp.close()
        if self._store is not None:
            self._store.close()
            self._store = None


def _credential(headers: Mapping[str, str]) -> str | None:
    """The one token offered: `Authorization: Bearer <key or JWT>` or `X-Api-Key: <key>`."""
    authorization = headers.get("Authorization")
    api_key = headers.get("X-Api-Key")
    if isinstance(headers, dict):  # aiohttp's headers are case-insensitive; plain dicts get a second chance
        if authorization is None:
            authorization = headers.get("authorization")
        if api_key is None:
            api_key = headers.get("x-api-key")
    if authorization is not None and api_key is not None:
        raise Unauthenticated("two credentials in one request")
    if api_key is not None:
        if not keys.looks_like_key(api_key.strip()):
            raise Unauthenticated("X-Api-Key does not hold an API key")
        return api_key.strip()
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("only the Bearer scheme is accepted")
    return token.strip()


def _verify_jwt(token: str, config: JwtConfig) -> tuple[Principal, float]:
    """The token's principal and its expiry time; raises Unauthenticated."""
    required = ["exp", "sub"] + (["aud"] if config.audience else []) + (["iss"] if config.issuer else [])
    try:
        claims = jwt.decode(
            token,
            config.key,
            algorithms=list(config.algorithms),
            audience=list(config.audience) if config.audience else None,
            issuer=config.issuer,
            leeway=config.leeway,
            options={"require": required},
        )
    except (jwt.PyJWTError, ValueError) as exc:
        raise Unauthenticated(f"invalid JWT: {type(exc).__name__}: {exc}") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("invalid JWT: `sub` is not a non-empty string")
    tenant = _claim(claims, config.tenant_claim)
    principal = Principal(
        subject,
        _roles(_claim(claims, config.roles_claim)),
        str(tenant) if isinstance(tenant, (str, int)) and not isinstance(tenant, bool) else None,
        PrincipalKind.JWT,
    )
    return principal, float(claims["exp"])


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (Keycloak's `realm_access.roles`)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _roles(value: Any) -> tuple[str, ...]:
    """A list of names, or one space-separated string (the OAuth `scope` style); anything else: no roles."""
    items: Iterable[Any] = value.split() if isinstance(value, str) else value if isinstance(value, list) else ()
    return tuple(dict.fromkeys(r for r in items if isinstance(r, str) and r))


def authorize(
    principal: Principal, function_roles: tuple[str, ...], policies: Mapping[str, Mapping[str, Any]], function: str
) -> bool:
    """May `principal` invoke `function`? Yes when its access.roles has `public` or one of the principal's
    roles, or when a Policy grants one of the principal's roles `invoke` on the function (or on `*`)."""
    if PUBLIC in function_roles:
        return True
    held = set(principal.roles)
    if held.intersection(function_roles):
        return True
    for policy in policies.values():
        for role, grant in policy.get("roles", {}).items():
            if role in held and isinstance(grant, Mapping):
                targets = grant.get("invoke", ())
                if function in targets or ANY_FUNCTION in targets:
                    return True
    return False


PIN = "pin"  # the Policy grant that allows `X-Fnctl-Revision` (pinning a revision) on the functions it names


def may_pin(principal: Principal, policies: Mapping[str, Mapping[str, Any]], function: str) -> bool:
    """May `principal` choose the revision of `function` (`X-Fnctl-Revision`)? Only when a Policy grants one
    of its roles `pin` on the function (or on `*`): reaching a revision without traffic (a preview, a canary
    at 0%) is a privilege of its own, never implied by being allowed to invoke. Anonymous callers never may."""
    if principal.kind is PrincipalKind.ANONYMOUS:
        return False
    held = set(principal.roles)
    for policy in policies.values():
        for role, grant in policy.get("roles", {}).items():
            if role in held and isinstance(grant, Mapping):
                targets = grant.get(PIN, ())
                if function in targets or ANY_FUNCTION in targets:
                    return True
    return False
