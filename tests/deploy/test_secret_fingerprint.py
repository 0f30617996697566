"""Secret fingerprints nobody can test guesses against (issue item 6): an HMAC keyed by a host-local key
that is never in the store, the salt gone from the store, and no spec hash of a function without secrets
changed by the upgrade (golden values computed with fnctl before this change).

Real SQLite in tmp_path, real manifests through validation; no Docker needed: `diff` and `apply` decide on
these spec hashes (a changed hash is an update, an equal one is unchanged).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
from pathlib import Path

import pytest

from fnctl.deploy.secrets import fingerprint_key, keyed_fingerprint
from fnctl.deploy.session import desired_specs
from fnctl.errors import BadInput
from fnctl.manifest.project import load_project
from fnctl.state.migrations import MIGRATIONS
from fnctl.state.migrations import statements as _statements
from fnctl.state.store import Store, connect

# The salt of a store made by fnctl before this change, and what that fnctl computed from it for the
# project below (`plain` has no secrets; `secretive` reads API_TOKEN="tok").
OLD_SALT = "c0ffee" * 5 + "00"
GOLDEN_PLAIN_SPEC_HASH = "0249d89767b873a9b1ed1ba7708a5df0b65f8a68879d22a78c5aa90bef2c37d4"
OLD_SECRETIVE_VALUES_HASH = "f28fe8cf3e72e1c5"


def write_project(root: Path) -> Path:
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    (root / "functions" / "plain").mkdir(parents=True, exist_ok=True)
    (root / "fnctl.toml").write_text('[project]\nname = "golden"\n\n[build]\nbaseImage = "fnctl-base:golden"\n')
    (root / "functions" / "plain" / "main.py").write_text("def handler(event):\n    return {'ok': True}\n")
    (root / "manifests" / "fns.yaml").write_text(
        "apiVersion: fnctl/v1\nkind: Function\nmetadata: {name: plain}\nspec:\n  runtime: python3.11\n"
        "  source: ../functions/plain\n  handler: main.handler\n---\n"
        "apiVersion: fnctl/v1\nkind: Function\nmetadata: {name: secretive}\nspec:\n  runtime: python3.11\n"
        "  source: ../functions/plain\n  handler: main.handler\n"
        "  secrets: [{name: API_TOKEN, fromEnv: GOLDEN_API_TOKEN}]\n"
    )
    return root


@pytest.fixture(autouse=True)
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A host of its own: its config directory (where the key lives), the secret's value."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for variable in ("FNCTL_FINGERPRINT_KEY", "FNCTL_FINGERPRINT_KEY_FILE", "FNCTL_BASE_IMAGE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("GOLDEN_API_TOKEN", "tok")
    return tmp_path / "config" / "fnctl" / "secret-fingerprint.key"


def old_store(path: Path) -> None:
    """A store as fnctl left it before this change (schema 5), with its salt."""
    raw = sqlite3.connect(path, isolation_level=None)
    for number in range(5):
        for statement in _statements(str(MIGRATIONS[number])):
            raw.execute(statement)
    raw.execute("PRAGMA user_version = 5")
    raw.execute("INSERT INTO settings VALUES ('secret-salt', ?)", (OLD_SALT,))
    raw.close()


def hashes(project_root: Path, store: Store) -> dict[str, tuple[str, str]]:
    """Each function's (spec hash, secrets valuesHash), as diff and apply compute them."""
    specs, _ = desired_specs(load_project(project_root), store, None)
    return {s.name: (s.spec_hash, s.spec["secrets"]["valuesHash"]) for s in specs}


def test_upgrading_keeps_a_secret_less_functions_spec_hash_and_drops_the_salt(tmp_path: Path, host: Path) -> None:
    project = write_project(tmp_path / "project")
    path = tmp_path / "state.db"
    old_store(path)
    store = connect(path)
    try:
        found = hashes(project, store)
        assert found["plain"][0] == GOLDEN_PLAIN_SPEC_HASH  # no redeploy of a function without secrets
        assert store.raw().query("SELECT value FROM settings WHERE key = 'secret-salt'") == []
        # a function with secrets is redeployed once: its fingerprint is now keyed, not salted
        assert found["secretive"][1] != OLD_SECRETIVE_VALUES_HASH
        assert found["secretive"][1] == keyed_fingerprint({"API_TOKEN": "tok"}, host.read_text().strip().encode())[:16]
    finally:
        store.close()
    raw = path.read_bytes() + (
        path.with_name("state.db-wal").read_bytes() if path.with_name("state.db-wal").exists() else b""
    )
    assert OLD_SALT.encode() not in raw  # not even in free pages or the WAL: a copy of the file has no salt


def test_the_old_fingerprint_needed_the_salt_that_is_gone() -> None:
    """Why deleting the salt is enough for old revisions' 64-bit fingerprints: with the salt a guess is one
    hash away, without it a guess must be tried under each of 2^128 salts."""
    guess = hashlib.sha256(OLD_SALT.encode())
    guess.update(b"API_TOKEN\0tok\0")
    assert guess.hexdigest()[:16] == OLD_SECRETIVE_VALUES_HASH
    assert hashlib.sha256(b"API_TOKEN\0tok\0").hexdigest()[:16] != OLD_SECRETIVE_VALUES_HASH


def test_a_changed_secret_changes_the_spec_and_an_unchanged_one_does_not(
    tmp_path: Path, host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = write_project(tmp_path / "project")
    store = connect(tmp_path / "state.db")
    try:
        first = hashes(project, store)
        assert hashes(project, store) == first  # unchanged value: the same revision, nothing redeployed
        monkeypatch.setenv("GOLDEN_API_TOKEN", "rotated")
        changed = hashes(project, store)
        assert changed["secretive"][0] != first["secretive"][0]  # diff and apply see an update
        assert changed["plain"] == first["plain"]
    finally:
        store.close()
    assert oct(host.stat().st_mode & 0o777) == "0o600" and oct(host.parent.stat().st_mode & 0o777) == "0o700"


def test_the_store_holds_nothing_that_reproduces_a_fingerprint_without_the_host_key(tmp_path: Path, host: Path) -> None:
    project = write_project(tmp_path / "project")
    path = tmp_path / "state.db"
    store = connect(path)
    try:
        before = hashes(project, store)["secretive"]
        stored = [str(v) for (v,) in store.raw().query("SELECT value FROM settings")]
        # everything in the store, tried as key or salt, fails to turn the right guess into the fingerprint
        for candidate in stored:
            assert keyed_fingerprint({"API_TOKEN": "tok"}, candidate.encode())[:16] != before[1]
            salted = hashlib.sha256(candidate.encode() + b"API_TOKEN\0tok\0").hexdigest()[:16]
            assert salted != before[1]
        host.unlink()  # another host (or a thief with the store only): a key of its own
        after = hashes(project, store)["secretive"]
        assert after != before  # it cannot reproduce the fingerprint: it sees the secret as changed
    finally:
        store.close()
    assert b"tok" not in path.read_bytes().replace(b"golden", b"")


def test_hosts_sharing_the_key_agree_and_others_do_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = write_project(tmp_path / "project")
    store = connect(tmp_path / "state.db")
    try:
        monkeypatch.setenv("FNCTL_FINGERPRINT_KEY", "k" * 40)
        shared = hashes(project, store)["secretive"]
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "runner-2"))
        assert hashes(project, store)["secretive"] == shared  # CI runners given the same key: no redeploy
        assert not (tmp_path / "runner-2").exists()  # an environment key never writes a file
        monkeypatch.setenv("FNCTL_FINGERPRINT_KEY", "j" * 40)
        assert hashes(project, store)["secretive"] != shared
        expected = hmac.new(b"j" * 40, b"fnctl-secrets/1\0API_TOKEN\0tok\0", hashlib.sha256).hexdigest()[:16]
        assert hashes(project, store)["secretive"][1] == expected  # the documented construction
    finally:
        store.close()


def test_a_key_file_readable_by_others_or_a_short_key_is_refused(
    host: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fingerprint_key()
    os.chmod(host, 0o644)
    with pytest.raises(BadInput, match="readable by others"):
        fingerprint_key()
    monkeypatch.setenv("FNCTL_FINGERPRINT_KEY", "short")
    with pytest.raises(BadInput, match="at least 32"):
        fingerprint_key()
    monkeypatch.delenv("FNCTL_FINGERPRINT_KEY")
    monkeypatch.setenv("FNCTL_FINGERPRINT_KEY_FILE", str(tmp_path / "elsewhere" / "fp.key"))
    assert fingerprint_key() == (tmp_path / "elsewhere" / "fp.key").read_text().strip().encode()


def test_a_project_without_secrets_never_needs_the_key(tmp_path: Path, host: Path) -> None:
    project = write_project(tmp_path / "project")
    manifest = project / "manifests" / "fns.yaml"
    manifest.write_text(manifest.read_text().split("---")[0])
    store = connect(tmp_path / "state.db")
    try:
        hashes(project, store)
    finally:
        store.close()
    assert not host.exists()
