"""Secret values, read at deploy or invoke time from the deployer's environment or a file.

Values go only to the instance, over its socket; everything that is stored or shown (spec hashes, the
state store, labels, logs) sees at most an HMAC-SHA256 of them keyed by a host-local key that is never in
the store (`fingerprint_key`): a copy of the store, or of a spec, lets nobody test guesses of a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets as _secrets
import stat
from pathlib import Path

from fnctl.errors import BadInput
from fnctl.manifest.model import Function


def resolve(function: Function, root: Path) -> dict[str, str]:
    """The values of `function`'s secrets; a missing source is bad input that names the secret, not the value."""
    values: dict[str, str] = {}
    for secret in function.secrets:
        if secret.from_env is not None:
            value = os.environ.get(secret.from_env)
            if value is None:
                raise BadInput(
                    f"function {function.name!r}: secret {secret.name} reads the environment variable "
                    f"{secret.from_env}, which is not set"
                )
        else:
            assert secret.from_file is not None
            path = (root / secret.from_file) if not os.path.isabs(secret.from_file) else Path(secret.from_file)
            try:
                value = path.read_text(encoding="utf-8").rstrip("\n")
            except OSError as exc:
                raise BadInput(
                    f"function {function.name!r}: secret {secret.name}: cannot read {path}: {exc.strerror or exc}"
                ) from None
        values[secret.name] = value
    return values


def fingerprint(values: dict[str, str], salt: str) -> str:
    """A salted hash that changes when any value changes: for local-only uses (a warm sandbox's key, whose
    salt never leaves the machine). Whatever is stored uses `keyed_fingerprint`."""
    digest = hashlib.sha256(salt.encode())
    digest.update(_serialise(values))
    return digest.hexdigest()


def keyed_fingerprint(values: dict[str, str], key: bytes) -> str:
    """HMAC-SHA256 of the values under `key` (`fingerprint_key`): changes when any value changes, and without
    the key says nothing about them, however many guesses are tried against it."""
    return hmac.new(key, b"fnctl-secrets/1\0" + _serialise(values), hashlib.sha256).hexdigest()


def _serialise(values: dict[str, str]) -> bytes:
    return b"".join(name.encode() + b"\0" + values[name].encode() + b"\0" for name in sorted(values))


KEY_ENV = "FNCTL_FINGERPRINT_KEY"  # the key itself (CI runners that deploy one project share it as a secret)
KEY_FILE_ENV = "FNCTL_FINGERPRINT_KEY_FILE"  # else a file holding it
_MIN_KEY = 32  # characters: 128 bits at least in hex


def key_path() -> Path:
    """$FNCTL_FINGERPRINT_KEY_FILE, else $XDG_CONFIG_HOME/fnctl/secret-fingerprint.key (~/.config by default)."""
    if os.environ.get(KEY_FILE_ENV):
        return Path(os.environ[KEY_FILE_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fnctl" / "secret-fingerprint.key"


def fingerprint_key() -> bytes:
    """The host-local key of secret fingerprints: $FNCTL_FINGERPRINT_KEY, else the key file (created on first
    use: 256 random bits, mode 0600 in a 0700 directory). A deployer with another key sees every secret as
    changed and redeploys those functions once: safe, but a rollout each."""
    given = os.environ.get(KEY_ENV)
    if given is not None:
        if len(given.strip()) < _MIN_KEY:
            raise BadInput(f"${KEY_ENV} must hold at least {_MIN_KEY} characters (e.g. `openssl rand -hex 32`)")
        return given.strip().encode()
    path = key_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # O_EXCL: of two deployers creating it at once, one writes and the other reads what it wrote
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _read_key(path)
        with os.fdopen(fd, "w") as out:
            out.write(_secrets.token_hex(32) + "\n")
        return _read_key(path)
    except OSError as exc:
        raise BadInput(f"cannot use the secret fingerprint key {path}: {exc.strerror or exc}") from None


def _read_key(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadInput(
            f"the secret fingerprint key {path} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 {path}"
        )
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < _MIN_KEY:  # a writer that died mid-way, or a file truncated by hand
        raise BadInput(
            f"the secret fingerprint key {path} holds fewer than {_MIN_KEY} characters: remove it "
            "to have a new one made (functions with secrets will be redeployed once)"
        )
    return key.encode()
