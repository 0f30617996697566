"""What each function should be deployed as: its canonical spec (defaults applied, code hashed, secrets
fingerprinted with a host-local key) and that spec's hash, the identity of a revision.

The canonical spec is persisted (every revision's row keeps it, `fnctl.deploy.revisionspec` reads it back) and
hashed, so its shape is a format of its own, written out key by key here: never derived from Python names,
since renaming a field would then change every spec hash and redeploy every function on upgrade.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnctl.manifest.model import DEFAULT_DB_OPERATIONS, NO_EXPECTATION, Function, Limits, RunAs, Scaling, Warm
from fnctl.manifest.source import code_hash

# The canonical spec's format. Version 1 carries no version key: adding one would change the hash of every
# revision deployed before formats were numbered. A later version must write `"specVersion": N` (and keep
# reading version 1); `revisionspec.spec_version` reads it. Its keys are frozen as they are, including the
# snake_case ones inside "scaling" (written by `asdict()` once): tests/golden/spec/ holds the exact JSON and
# hashes, recorded before this writer existed.
SPEC_FORMAT = 1
SPEC_VERSION_KEY = "specVersion"


@dataclass(frozen=True)
class DeploySpec:
    function: Function
    source: Path
    spec: dict[str, Any]
    spec_hash: str

    @property
    def name(self) -> str:
        return self.function.name


def deploy_spec(function: Function, base_image: str, secrets_hash: str) -> DeploySpec:
    """`secrets_hash`: the keyed fingerprint of the function's secret values (`secretref.keyed_fingerprint`),
    or for a function without secrets the store's `secrets-none-hash` (see `canonical_spec`)."""
    assert function.document is not None
    source = function.document.file.parent / function.source
    spec = canonical_spec(function, code_hash(source), base_image, secrets_hash)
    return DeploySpec(function, source, spec, spec_hash(spec))


def canonical_spec(function: Function, code: str, base_image: str, secrets: str) -> dict[str, Any]:
    """Everything that defines a revision, with effective values (so a changed default changes it too), in
    format version 1 (`SPEC_FORMAT`).

    `secrets` is in the revision's identity: a changed secret value is a new revision. Its first 16 hex
    digits are kept, as before fnctl stopped salting them: for a function without secrets that value (once
    the hash of the store's salt, now kept in its place) leaves the spec hash, so the revision, unchanged."""
    raw = function.spec
    spec = {
        "runtime": function.runtime,
        "handler": function.handler,
        "source": {"path": function.source, "hash": code},
        "baseImage": base_image,
        "labels": dict(sorted(function.labels.items())),
        "env": dict(sorted(function.env.items())),
        # Where each value comes from (never the value): the gateway reads them itself to start instances.
        "secrets": {
            "names": [s.name for s in function.secrets],
            "valuesHash": secrets[:16],
            "sources": [
                {"name": s.name, **({"fromEnv": s.from_env} if s.from_env else {"fromFile": s.from_file})}
                for s in function.secrets
            ],
        },
        "limits": _limits_v1(function.limits),
        "network": function.network.value,
        "isolation": function.isolation.value,
        "scaling": _scaling_v1(function.scaling),
        "access": {"roles": list(function.roles)},
        "parameters": function.parameters,
        "returns": function.returns,
        "healthCheck": [
            {"event": c.event, **({"expect": c.expect} if c.expect is not NO_EXPECTATION else {})}
            for c in function.health_checks
        ],
        "rollout": raw.get("rollout", {"strategy": "immediate"}),
    }
    # The data plane's fields join the spec only when set to something else than their default: a function
    # that does not use them keeps the spec hash, so the revision, it had before they existed.
    if function.db_operations != DEFAULT_DB_OPERATIONS:
        spec["limits"]["dbOperations"] = function.db_operations
    if function.run_as is not RunAs.CALLER:
        spec["runAs"] = function.run_as.value
    if function.transaction is not None:
        spec["transaction"] = {"retries": function.transaction.retries}
    return spec


def _limits_v1(limits: Limits) -> dict[str, Any]:
    # The values as they are (no int/float coercion): the JSON text of each number is in the hash.
    return {
        "timeout": limits.timeout,
        "memory": limits.memory,
        "cpu": limits.cpu,
        "pids": limits.pids,
        "tmp": limits.tmp,
        "payload": limits.payload,
        "output": limits.output,
    }


def _scaling_v1(scaling: Scaling) -> dict[str, Any]:
    # snake_case inside a camelCase document, frozen: these keys are in the hash of every revision.
    frozen: dict[str, Any] = {
        "min_instances": scaling.min_instances,
        "max_instances": scaling.max_instances,
        "concurrency": scaling.concurrency,
    }
    # Only when asked for, so that a function without it keeps its spec hash (and its revision).
    return frozen if scaling.warm is Warm.NONE else frozen | {"warm": scaling.warm.value}


def spec_hash(spec: dict[str, Any]) -> str:
    """Of the spec's JSON with sorted keys and no spaces: this exact text is what identifies a revision."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
