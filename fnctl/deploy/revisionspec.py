"""A deployed revision's Function, rebuilt from the canonical spec stored with it (`desired.canonical_spec`),
for work on revisions that the manifests no longer describe: rollback, live invocation, status.

The reader of the canonical spec's format: it reads the persisted keys written out below, never Python field
names, and refuses a format newer than it knows. Missing keys take their defaults (older and hand-made specs).
"""

from __future__ import annotations

from typing import Any

from fnctl.deploy.desired import SPEC_FORMAT, SPEC_VERSION_KEY
from fnctl.errors import FnctlError
from fnctl.manifest.kinds import parse_rollout
from fnctl.manifest.model import (
    Function,
    HealthCheck,
    Isolation,
    Limits,
    Network,
    Scaling,
    SecretRef,
    Warm,
)


class SpecFormatError(FnctlError):
    """A stored spec written by a newer fnctl, in a format this one cannot read."""


def spec_version(spec: dict[str, Any]) -> int:
    """The spec's format version: version 1 carries no version key (see `desired.SPEC_FORMAT`)."""
    return int(spec.get(SPEC_VERSION_KEY, 1))


def function_from_spec(name: str, spec: dict[str, Any], defaults: Limits) -> Function:
    version = spec_version(spec)
    if version != SPEC_FORMAT:
        raise SpecFormatError(
            f"a revision of {name} has spec format {version}, which this fnctl does not know "
            f"(it reads {SPEC_FORMAT}); upgrade fnctl"
        )
    return Function(
        name=name,
        labels=dict(spec.get("labels") or {}),
        runtime=spec.get("runtime", "python3.11"),
        source=(spec.get("source") or {}).get("path", ""),
        handler=spec["handler"],
        env=dict(spec.get("env") or {}),
        secrets=tuple(
            SecretRef(src["name"], src.get("fromEnv"), src.get("fromFile"))
            for src in (spec.get("secrets") or {}).get("sources", [])
        ),
        limits=_limits_v1(spec.get("limits") or {}, defaults),
        network=Network(spec.get("network", "none")),
        isolation=Isolation(spec.get("isolation", "container")),
        scaling=_scaling_v1(spec.get("scaling") or {}),
        roles=tuple((spec.get("access") or {}).get("roles", [])),
        parameters=spec.get("parameters"),
        returns=spec.get("returns"),
        health_checks=tuple(
            HealthCheck(c["event"], c["expect"]) if "expect" in c else HealthCheck(c["event"])
            for c in spec.get("healthCheck") or []
        ),
        rollout=parse_rollout(spec.get("rollout") or {"strategy": "immediate"}),
        spec=spec,
    )


def min_instances(spec: dict[str, Any]) -> int:
    """The spec's `scaling.min_instances` (1 in an empty spec), for the live state's drift check."""
    return int(_scaling_v1(spec.get("scaling") or {}).min_instances)


def _limits_v1(raw: dict[str, Any], defaults: Limits) -> Limits:
    return Limits(
        timeout=raw.get("timeout", defaults.timeout),
        memory=raw.get("memory", defaults.memory),
        cpu=raw.get("cpu", defaults.cpu),
        pids=raw.get("pids", defaults.pids),
        tmp=raw.get("tmp", defaults.tmp),
        payload=raw.get("payload", defaults.payload),
        output=raw.get("output", defaults.output),
    )


def _scaling_v1(raw: dict[str, Any]) -> Scaling:
    base = Scaling()  # version 1's snake_case keys (see `desired._scaling_v1`)
    return Scaling(
        min_instances=raw.get("min_instances", base.min_instances),
        max_instances=raw.get("max_instances", base.max_instances),
        concurrency=raw.get("concurrency", base.concurrency),
        warm=Warm(raw.get("warm", base.warm.value)),
    )
