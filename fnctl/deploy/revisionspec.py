"""A deployed revision's Function, rebuilt from the canonical spec stored with it (`desired.canonical_spec`),
for work on revisions that the manifests no longer describe: rollback, live invocation, status.
"""

from __future__ import annotations

from typing import Any

from fnctl.manifest.model import (
    Function,
    HealthCheck,
    Isolation,
    Limits,
    Network,
    Scaling,
    SecretRef,
    parse_rollout,
)


def function_from_spec(name: str, spec: dict[str, Any], defaults: Limits) -> Function:
    limits = spec.get("limits") or {}
    scaling = spec.get("scaling") or {}
    return Function(
        name=name, labels=dict(spec.get("labels") or {}), runtime=spec.get("runtime", "python3.11"),
        source=(spec.get("source") or {}).get("path", ""), handler=spec["handler"], env=dict(spec.get("env") or {}),
        secrets=tuple(SecretRef(src["name"], src.get("fromEnv"), src.get("fromFile"))
                      for src in (spec.get("secrets") or {}).get("sources", [])),
        limits=Limits(**{k: limits.get(k, getattr(defaults, k)) for k in Limits.__dataclass_fields__}),
        network=Network(spec.get("network", "none")), isolation=Isolation(spec.get("isolation", "container")),
        scaling=Scaling(**{k: scaling.get(k, getattr(Scaling(), k)) for k in Scaling.__dataclass_fields__}),
        roles=tuple((spec.get("access") or {}).get("roles", [])),
        parameters=spec.get("parameters"), returns=spec.get("returns"),
        health_checks=tuple(HealthCheck(c["event"], c["expect"]) if "expect" in c else HealthCheck(c["event"])
                            for c in spec.get("healthCheck") or []),
        rollout=parse_rollout(spec.get("rollout") or {"strategy": "immediate"}),
        spec=spec,
    )
