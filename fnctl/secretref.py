"""Secret values, read at deploy or invoke time from the deployer's environment or a file.

Values go only to the instance, over its socket; everything that is stored or shown (spec hashes, the
state store, labels, logs) sees a salted hash at most.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fnctl.errors import BadInput
from fnctl.model import Function


def resolve(function: Function, root: Path) -> dict[str, str]:
    """The values of `function`'s secrets; a missing source is bad input that names the secret, not the value."""
    values: dict[str, str] = {}
    for secret in function.secrets:
        if secret.from_env is not None:
            value = os.environ.get(secret.from_env)
            if value is None:
                raise BadInput(f"function {function.name!r}: secret {secret.name} reads the environment variable "
                               f"{secret.from_env}, which is not set")
        else:
            assert secret.from_file is not None
            path = (root / secret.from_file) if not os.path.isabs(secret.from_file) else Path(secret.from_file)
            try:
                value = path.read_text(encoding="utf-8").rstrip("\n")
            except OSError as exc:
                raise BadInput(f"function {function.name!r}: secret {secret.name}: cannot read {path}: "
                               f"{exc.strerror or exc}") from None
        values[secret.name] = value
    return values


def fingerprint(values: dict[str, str], salt: str) -> str:
    """A hash that changes when any value changes, salted so it cannot be matched against guesses elsewhere."""
    digest = hashlib.sha256(salt.encode())
    for name in sorted(values):
        digest.update(name.encode() + b"\0" + values[name].encode() + b"\0")
    return digest.hexdigest()
