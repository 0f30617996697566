"""Authentication and authorization at the module level: API keys (real SQLite), JWTs (real PyJWT and
real RSA keys), the denial matrix and its audit, Policy grants, the `[auth]` config and `fnctl keys`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pgserver import RawDb
from polling import wait_until
from typer.testing import CliRunner

from fnctl.cli.app import app
from fnctl.errors import BadInput
from fnctl.gateway import keys
from fnctl.gateway.audit import AuditLog, start_access_log
from fnctl.gateway.auth import (
    ANONYMOUS,
    AuthConfig,
    Authenticator,
    Principal,
    PrincipalKind,
    Unauthenticated,
    authorize,
    may_pin,
)
from fnctl.manifest.project import load_project
from fnctl.state import keystore
from fnctl.state.location import StateLocation
from fnctl.state.store import Store, StoreError

AUDIENCE, ISSUER = "fnctl-gateway", "https://id.example.org"
HS_SECRET = "s" * 64
POLICIES: dict[str, dict[str, Any]] = {
    "shop": {
        "roles": {
            "shop-admin": {"invoke": ["*"], "read": ["*"]},
            "service": {"invoke": ["orders"]},
            "reader": {"read": ["orders"]},
        }
    },
}


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, str, rsa.RSAPrivateKey]:
    """The issuer's private key, its public key as PEM (what the gateway holds), and a stranger's key."""
    issuer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = (
        issuer.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return issuer, public, stranger


@pytest.fixture
def rs_config(tmp_path: Path, rsa_keys: tuple[Any, str, Any]) -> AuthConfig:
    (tmp_path / "jwt.pub").write_text(rsa_keys[1])
    return AuthConfig.from_mapping(
        {"jwt": {"algorithms": ["RS256"], "keyFile": "jwt.pub", "audience": AUDIENCE, "issuer": ISSUER}}, tmp_path
    )


@pytest.fixture
def authenticator(state_location: StateLocation, rs_config: AuthConfig) -> Iterator[Authenticator]:
    auth = Authenticator(state_location, rs_config)
    yield auth
    auth.close()


def claims(**overrides: Any) -> dict[str, Any]:
    base = {
        "sub": "alice",
        "roles": ["service"],
        "tenant": "acme",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "exp": int(time.time()) + 300,
        "iat": int(time.time()),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def rs256(private: Any, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), private, algorithm="RS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(alg: str, secret: bytes | None, **overrides: Any) -> str:
    """A token assembled by hand, as an attacker would: any `alg`, signed with any bytes (or not at all)."""
    head = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "." + _b64(json.dumps(claims(**overrides)).encode())
    signature = b"" if secret is None else hmac.new(secret, head.encode(), hashlib.sha256).digest()
    return head + "." + _b64(signature)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- the denial matrix ----------------------------------------------------------------------------------------


def denials(store: Store, rsa_keys: tuple[Any, str, Any]) -> dict[str, dict[str, str]]:
    """Every way in that must be refused with 401, by name."""
    issuer, public, stranger = rsa_keys
    _, good = keys.create(store, "ci", ("service",), None, "test")
    _, revoked = keys.create(store, "old", ("service",), None, "test")
    keys.revoke(store, revoked.split("_")[1])
    key_id = good.split("_")[1]
    return {
        "wrong key": {"Authorization": f"Bearer fnk_{key_id}_{'A' * 43}"},
        "unknown key id": bearer(f"fnk_{'0' * 12}_{good.split('_', 2)[2]}"),
        "malformed key": {"X-Api-Key": "fnk_short"},
        "revoked key": {"X-Api-Key": revoked},
        "expired JWT": bearer(rs256(issuer, exp=int(time.time()) - 60)),
        "JWT without exp": bearer(rs256(issuer, exp=None)),
        "alg none": bearer(forged("none", None)),
        "HS/RS confusion": bearer(forged("HS256", public.encode())),
        "wrong audience": bearer(rs256(issuer, aud="someone-else")),
        "no audience": bearer(rs256(issuer, aud=None)),
        "wrong issuer": bearer(rs256(issuer, iss="https://evil.example.org")),
        "signed by a stranger": bearer(rs256(stranger)),
        "not yet valid": bearer(rs256(issuer, nbf=int(time.time()) + 600)),
        "garbage token": bearer("not.a.jwt"),
        "basic scheme": {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        "empty bearer": {"Authorization": "Bearer "},
        "two credentials": {"Authorization": f"Bearer {good}", "X-Api-Key": good},
    }


def test_every_bad_credential_is_refused_without_detail_and_audited(
    store: Store, state_location: StateLocation, authenticator: Authenticator, rsa_keys: tuple[Any, str, Any]
) -> None:
    audit = AuditLog(state_location)
    matrix = denials(store, rsa_keys)
    for case, headers in matrix.items():
        with pytest.raises(Unauthenticated) as refused:
            authenticator.authenticate(headers)
        assert str(refused.value) == "authentication failed", case  # the reason stays in the server's logs
        assert refused.value.reason, case
        audit.record(
            request_id=f"req-{case}",
            principal=None,
            function="orders",
            revision=None,
            outcome="unauthenticated",
            status=401,
            duration_ms=0.2,
            source="127.0.0.1",
        )
    assert audit.flush(timeout=10)
    audit.close()
    rows = store.raw().query("SELECT request_id, outcome, status, function, source FROM invocations ORDER BY id")
    assert [r[0] for r in rows] == [f"req-{case}" for case in matrix]
    assert {(r[1], r[2], r[3], r[4]) for r in rows} == {("unauthenticated", 401, "orders", "127.0.0.1")}


def test_a_valid_principal_without_the_role_is_denied(
    authenticator: Authenticator, rsa_keys: tuple[Any, str, Any]
) -> None:
    principal = authenticator.authenticate(bearer(rs256(rsa_keys[0], roles=["viewer"])))
    assert principal.roles == ("viewer",)
    assert not authorize(principal, ("service",), POLICIES, "orders")
    assert not authorize(ANONYMOUS, ("service",), POLICIES, "orders")
    assert not authorize(ANONYMOUS, (), {}, "orders")  # no access.roles: nobody but Policy grants


def test_no_credentials_is_anonymous_and_reaches_public_functions_only(authenticator: Authenticator) -> None:
    principal = authenticator.authenticate({})
    assert principal == ANONYMOUS and principal.kind is PrincipalKind.ANONYMOUS
    assert authorize(principal, ("public",), {}, "hello")
    assert not authorize(principal, ("service",), {}, "orders")


def test_bearer_jwt_without_jwt_config_is_refused(
    state_location: StateLocation, rsa_keys: tuple[Any, str, Any]
) -> None:
    auth = Authenticator(state_location, AuthConfig())
    with pytest.raises(Unauthenticated):
        auth.authenticate(bearer(rs256(rsa_keys[0])))


# ---- what is let in --------------------------------------------------------------------------------------------


def test_a_valid_jwt_gives_subject_roles_and_tenant(
    authenticator: Authenticator, rsa_keys: tuple[Any, str, Any]
) -> None:
    principal = authenticator.authenticate({"authorization": f"bearer {rs256(rsa_keys[0])}"})
    assert principal == Principal("alice", ("service",), "acme", PrincipalKind.JWT)
    assert principal.audit_name == "jwt:alice"
    assert principal.as_caller() == {"subject": "alice", "roles": ["service"], "tenant": "acme", "kind": "jwt"}
    assert authorize(principal, ("service", "shop-admin"), {}, "orders")


def test_a_remembered_jwt_is_refused_once_it_expires(
    authenticator: Authenticator, rsa_keys: tuple[Any, str, Any]
) -> None:
    expires = int(time.time()) + 2
    token = rs256(rsa_keys[0], exp=expires)
    assert authenticator.authenticate(bearer(token)).subject == "alice"
    assert authenticator.authenticate(bearer(token)).subject == "alice"  # from the cache of verified tokens
    deadline = time.monotonic() + 10
    while time.time() <= expires:  # the named condition: the token's exp has passed
        assert time.monotonic() < deadline, "the clock did not pass the token's exp"
        time.sleep(0.05)
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(bearer(token))


def test_roles_from_a_nested_claim_or_a_space_separated_string(
    tmp_path: Path, state_location: StateLocation, rsa_keys: tuple[Any, str, Any]
) -> None:
    (tmp_path / "jwt.pub").write_text(rsa_keys[1])
    config = AuthConfig.from_mapping(
        {
            "jwt": {
                "algorithms": ["RS256", "PS256"],
                "keyFile": "jwt.pub",
                "rolesClaim": "realm_access.roles",
                "tenantClaim": "org",
            }
        },
        tmp_path,
    )
    auth = Authenticator(state_location, config)
    token = jwt.encode(
        {"sub": "bob", "exp": int(time.time()) + 60, "org": "acme", "realm_access": {"roles": ["a", "b", 3]}},
        rsa_keys[0],
        algorithm="PS256",
    )
    assert auth.authenticate(bearer(token)) == Principal("bob", ("a", "b"), "acme", PrincipalKind.JWT)
    token = jwt.encode(
        {"sub": "bob", "exp": int(time.time()) + 60, "realm_access.roles": "x y"}, rsa_keys[0], algorithm="RS256"
    )
    assert auth.authenticate(bearer(token)).roles == ("x", "y")


def test_hs256_when_configured(state_location: StateLocation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", HS_SECRET + "\n")  # a secret file's trailing newline is no part of the key
    config = AuthConfig.from_mapping({"jwt": {"algorithms": ["HS256"], "keyEnv": "JWT_SECRET"}}, tmp_path)
    auth = Authenticator(state_location, config)
    good = jwt.encode({"sub": "svc", "exp": int(time.time()) + 60, "roles": ["service"]}, HS_SECRET, algorithm="HS256")
    assert auth.authenticate(bearer(good)).subject == "svc"
    with pytest.raises(Unauthenticated):  # a token with an audience when none is configured names someone else
        auth.authenticate(
            bearer(jwt.encode({"sub": "svc", "exp": int(time.time()) + 60, "aud": "x"}, HS_SECRET, algorithm="HS256"))
        )
    with pytest.raises(Unauthenticated):  # HS384 is not in the list, even with the right secret
        auth.authenticate(
            bearer(jwt.encode({"sub": "svc", "exp": int(time.time()) + 60}, HS_SECRET, algorithm="HS384"))
        )


def test_api_key_principal_and_revocation_takes_effect_at_once(store: Store, authenticator: Authenticator) -> None:
    key, raw = keys.create(store, "billing", ("service", "reader"), "acme", "ada")
    principal = authenticator.authenticate({"X-Api-Key": raw})
    assert principal == Principal(f"key:{key.id}", ("service", "reader"), "acme", PrincipalKind.KEY)
    assert principal.audit_name == f"key:{key.id}"
    assert authenticator.authenticate(bearer(raw)) == principal
    revoked, changed = keys.revoke(store, key.id)
    assert changed and not revoked.active
    with pytest.raises(Unauthenticated):
        authenticator.authenticate(bearer(raw))
    assert keys.revoke(store, raw)[1] is False  # a pasted whole key names its id; revoking twice changes nothing


def test_policies_grant_invoke_by_role() -> None:
    def who(*roles: str) -> Principal:
        return Principal("p", roles, None, PrincipalKind.KEY)

    assert authorize(who("shop-admin"), (), POLICIES, "anything")  # invoke: ["*"]
    assert authorize(who("service"), (), POLICIES, "orders")
    assert not authorize(who("service"), (), POLICIES, "hello")
    assert not authorize(who("reader"), (), POLICIES, "orders")  # read is not invoke
    assert not authorize(who(), ("service",), POLICIES, "orders")
    assert authorize(who("other", "service"), ("service",), {}, "orders")


def test_pinning_needs_an_explicit_pin_grant() -> None:
    """Being allowed to invoke a function (a role in its access.roles, `public`, an `invoke` grant) never
    implies choosing its revision: only a Policy's `pin` grant does, and never for an anonymous caller."""

    def who(*roles: str, kind: PrincipalKind = PrincipalKind.KEY) -> Principal:
        return Principal("p", roles, None, kind)

    policies = {
        "release": {
            "roles": {
                "releaser": {"pin": ["orders"]},
                "ops": {"pin": ["*"], "invoke": ["*"]},
                "shop-admin": {"invoke": ["*"]},
            }
        }
    }
    assert may_pin(who("releaser"), policies, "orders")
    assert not may_pin(who("releaser"), policies, "hello")
    assert may_pin(who("ops"), policies, "hello")  # pin: ["*"]
    assert not may_pin(who("shop-admin"), policies, "orders")  # invoke is not pin
    assert not may_pin(who(), policies, "orders")
    assert not may_pin(ANONYMOUS, policies, "orders")
    assert not may_pin(who("ops", kind=PrincipalKind.ANONYMOUS), policies, "orders")


def test_policy_schema_takes_the_pin_grant(tmp_path: Path) -> None:
    from fnctl.manifest.validate import validate_paths

    (tmp_path / "fnctl.toml").write_text('[project]\nname = "p"\n')
    (tmp_path / "p.yaml").write_text(
        "apiVersion: fnctl/v1\nkind: Policy\nmetadata: {name: release}\n"
        "spec: {roles: {releaser: {pin: ['*'], invoke: ['*']}}}\n"
    )
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: fnctl/v1\nkind: Policy\nmetadata: {name: bad}\nspec: {roles: {releaser: {pin: orders}}}\n"
    )
    project = load_project(tmp_path)
    good = validate_paths(project, [tmp_path / "p.yaml"])
    assert good.ok, good.diagnostics
    assert not validate_paths(project, [tmp_path / "bad.yaml"]).ok  # a list of functions, not a name


# ---- key storage ---------------------------------------------------------------------------------------------


def test_keys_are_random_and_stored_only_as_hashes(
    store: Store, state_location: StateLocation, authenticator: Authenticator
) -> None:
    raws = [keys.create(store, f"k{i}", ("service",), None, "test")[1] for i in range(5)]
    assert len(set(raws)) == 5 and all(len(r.split("_", 2)[2]) == 43 for r in raws)  # 256 random bits each
    for raw in raws:
        authenticator.authenticate(bearer(raw))
    store.close()
    authenticator.close()
    files = [p for p in state_location.path.parent.iterdir() if p.name.startswith(state_location.path.name)]
    content = b"".join(p.read_bytes() for p in files if p.is_file())
    if state_location.is_postgres:  # every row of the database as text, beside the host-local files
        db = RawDb(state_location)
        content += db.dump().encode()
        db.close()
    for raw in raws:
        assert raw.encode() not in content and raw.split("_", 2)[2].encode() not in content
        assert keys.digest(raw).encode() in content or _hash_in_db(state_location, raw)


def _hash_in_db(location: StateLocation, raw: str) -> bool:
    db = RawDb(location)
    try:
        return db.execute("SELECT COUNT(*) FROM api_keys WHERE key_hash = ?", (keys.digest(raw),)) == [(1,)]
    finally:
        db.close()


def test_key_creation_refuses_bad_input(store: Store) -> None:
    for name, roles in (("", ("service",)), ("ci", ()), ("ci", ("Not A Role",))):
        with pytest.raises(BadInput):
            keys.create(store, name, roles, None, "test")
    with pytest.raises(keys.UnknownKey):
        keys.revoke(store, "000000000000")


# ---- the [auth] config ---------------------------------------------------------------------------------------


def test_config_from_fnctl_toml(tmp_path: Path, rsa_keys: tuple[Any, str, Any]) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwt.pub").write_text(rsa_keys[1])
    (tmp_path / "fnctl.toml").write_text(
        '[project]\nname = "t"\n[auth.jwt]\nalgorithms = ["RS256"]\n'
        'keyFile = "keys/jwt.pub"\naudience = ["a", "b"]\nissuer = "i"\n'
    )
    config = AuthConfig.from_project(load_project(tmp_path))
    assert config.jwt is not None and config.jwt.algorithms == ("RS256",) and config.jwt.audience == ("a", "b")
    assert config.jwt.roles_claim == "roles" and config.jwt.tenant_claim == "tenant"
    (tmp_path / "fnctl.toml").write_text('[project]\nname = "t"\n')
    assert AuthConfig.from_project(load_project(tmp_path)).jwt is None


@pytest.mark.parametrize(
    "jwt_section",
    [
        {"algorithms": ["none"], "key": HS_SECRET},  # refused by the schema
        {"algorithms": ["RS256", "HS256"], "keyFile": "jwt.pub"},  # two families: the confusion, by config
        {"algorithms": ["HS256"], "key": "short"},
        {"algorithms": ["HS256"], "keyFile": "jwt.pub"},  # a public key is no HMAC secret
        {"algorithms": ["RS256"], "key": HS_SECRET},
        {"algorithms": ["RS256"], "keyFile": "private.pem"},  # the gateway must not hold the signing key
        {"algorithms": ["RS256"], "keyFile": "missing.pem"},
        {"algorithms": ["RS256"], "keyFile": "jwt.pub", "key": HS_SECRET},
    ],
)
def test_unsafe_or_broken_configs_are_refused(
    tmp_path: Path, rsa_keys: tuple[Any, str, Any], jwt_section: dict[str, Any]
) -> None:
    import tomli_w

    (tmp_path / "jwt.pub").write_text(rsa_keys[1])
    (tmp_path / "private.pem").write_bytes(
        rsa_keys[0].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "fnctl.toml").write_text(tomli_w.dumps({"project": {"name": "t"}, "auth": {"jwt": jwt_section}}))
    with pytest.raises(BadInput):
        AuthConfig.from_project(load_project(tmp_path))


# ---- the command line ------------------------------------------------------------------------------------------


def test_keys_commands(state_location: StateLocation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FNCTL_STATE", state_location.to_arg())
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "ci", "--role", "service", "-r", "reader", "--tenant", "acme"])
    assert created.exit_code == 0, created.output
    raw = created.stdout.strip()
    assert keys.looks_like_key(raw) and raw not in created.stderr  # stdout holds the key alone
    listed = runner.invoke(app, ["keys", "list", "-o", "json"])
    assert listed.exit_code == 0
    [entry] = json.loads(listed.stdout)
    key_id = raw.split("_")[1]
    assert entry["id"] == key_id and entry["roles"] == ["service", "reader"] and entry["tenant"] == "acme"
    secret = raw.split("_", 2)[2]
    for text in (listed.stdout, runner.invoke(app, ["keys", "list"]).stdout):
        assert secret not in text and keys.digest(raw) not in text
    assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
    auth = Authenticator(state_location, AuthConfig())
    with pytest.raises(Unauthenticated):
        auth.authenticate(bearer(raw))
    auth.close()
    assert json.loads(runner.invoke(app, ["keys", "list", "-o", "json"]).stdout) == []
    assert json.loads(runner.invoke(app, ["keys", "list", "--all", "-o", "json"]).stdout)[0]["active"] is False


def test_a_remembered_key_is_refused_at_the_next_request_after_its_revocation(
    store: Store, state_location: StateLocation
) -> None:
    # The authenticator remembers verified keys while the store is unchanged; a revocation committed by another
    # connection (here: `store`, as `fnctl keys revoke` would) must end that at once.
    key, raw = keys.create(store, "ci", ("service",), "acme", "test")
    auth = Authenticator(state_location, AuthConfig())
    try:
        first = auth.authenticate(bearer(raw))
        assert auth.authenticate(bearer(raw)) == first  # the remembered principal
        assert first.roles == ("service",) and first.tenant == "acme"
        keys.revoke(store, key.id)
        with pytest.raises(Unauthenticated):
            auth.authenticate(bearer(raw))
        with pytest.raises(Unauthenticated):  # a wrong secret for a remembered key's id is never taken
            auth.authenticate(bearer(f"fnk_{key.id}_{'A' * 43}"))
    finally:
        auth.close()


def test_a_remembered_key_outlives_commits_that_change_no_key(
    store: Store, state_location: StateLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The audit and metrics writers commit to the store every fraction of a second: the authenticator's memory
    # of verified keys depends on the keys' generation, not on any commit, so those commits cost no new check.
    key, raw = keys.create(store, "ci", ("service",), None, "test")
    checked: list[str] = []
    verify = keys.verify

    def counted(s: Store, r: str) -> keystore.ApiKey | None:
        checked.append(r)
        return verify(s, r)

    monkeypatch.setattr(keys, "verify", counted)
    auth = Authenticator(state_location, AuthConfig())
    try:
        first = auth.authenticate(bearer(raw))
        for n in range(3):  # another connection commits, as the audit writer would
            store.audit(actor="test", command="serve", action="request", target=f"r{n}", outcome="ok")
            assert auth.authenticate(bearer(raw)) == first
        assert checked == [raw]  # verified once, remembered across the commits
        _, other = keys.create(store, "other", ("service",), None, "test")  # a key change: the memory goes
        assert auth.authenticate(bearer(raw)) == first and checked == [raw, raw]
        keys.revoke(store, key.id)
        with pytest.raises(Unauthenticated):
            auth.authenticate(bearer(raw))
        assert auth.authenticate(bearer(other)).subject.startswith("key:")
    finally:
        auth.close()


def test_a_revocation_whose_announcement_was_lost_is_still_found(
    store: Store, state_location: StateLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stamp file is only a hint: a revocation committed without it (a crash right after the commit) is
    # found when the authenticator reads the keys' generation itself, every KEYS_RECHECK seconds; and without
    # a stamp at all, every commit to the store makes it read the generation.
    monkeypatch.setattr(keystore, "KEYS_RECHECK", 0.2)
    key, raw = keys.create(store, "ci", ("service",), None, "test")
    auth = Authenticator(state_location, AuthConfig())
    try:
        auth.authenticate(bearer(raw))
        with store.transaction():
            assert keystore.mark_revoked(store, key.id)  # no announcement
        assert keystore.KeysStamp(state_location.path).read() == (keystore.generation(store) - 1).to_bytes(8, "little")

        def refused() -> bool:
            try:
                auth.authenticate(bearer(raw))
            except Unauthenticated:
                return True
            return False

        wait_until(refused, what="the unannounced revocation to be found", timeout=10)
    finally:
        auth.close()
    keystore.stamp_path(state_location.path).unlink()
    keystore.stamp_path(
        state_location.path
    ).mkdir()  # no stamp can be mapped: the store's data_version says when to look
    other, raw = keys.create(store, "other", ("service",), None, "test")
    unstamped = Authenticator(state_location, AuthConfig())
    try:
        assert unstamped._stamp.read() is None
        unstamped.authenticate(bearer(raw))
        with store.transaction():
            keystore.mark_revoked(store, other.id)
        with pytest.raises(Unauthenticated):
            unstamped.authenticate(bearer(raw))
    finally:
        unstamped.close()


# ---- the audit log -----------------------------------------------------------------------------------------------


def test_audit_rows_are_append_only_and_access_lines_are_json(store: Store, state_location: StateLocation) -> None:
    stream = io.StringIO()
    stop_logging = start_access_log(stream)
    try:
        audit = AuditLog(state_location, interval=60)  # a long interval: flush() must wake the writer itself
        for n in range(3):
            audit.record(
                request_id=f"r{n}",
                principal="key:abc",
                function="hello",
                revision=2,
                outcome="ok",
                status=200,
                duration_ms=1.5,
                source="127.0.0.1:5000",
                access={"method": "POST", "path": "/invoke/hello"},
            )
        audit.access(method="GET", path="/healthz", status=200)
        assert audit.flush(timeout=10)
        audit.close()
    finally:
        stop_logging()
    rows = store.raw().query(
        "SELECT request_id, principal, function, revision, outcome, status, duration_ms, source "
        "FROM invocations ORDER BY id"
    )
    assert rows == [(f"r{n}", "key:abc", "hello", 2, "ok", 200, 1.5, "127.0.0.1:5000") for n in range(3)]
    with pytest.raises(StoreError):
        store.raw().execute("UPDATE invocations SET status = 500")
    with pytest.raises(StoreError):
        store.raw().execute("DELETE FROM invocations")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("requestId") for line in lines] == ["r0", "r1", "r2", None]
    assert lines[0]["method"] == "POST" and lines[0]["status"] == 200 and lines[0]["principal"] == "key:abc"
    assert lines[0]["time"].endswith("Z") and lines[3]["path"] == "/healthz"
    assert not logging.getLogger("fnctl.access").handlers  # stopping restores the logger
