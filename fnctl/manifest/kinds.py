"""Each kind's parsing: `build` turns one schema-valid document into its typed value, and a Function's own
parts (limits, rollout steps, analysis, health checks) are parsed here; the values live in `model`."""

from __future__ import annotations

from typing import Any

from fnctl.manifest.files import Document
from fnctl.manifest.model import (
    DEFAULT_DB_OPERATIONS,
    DEFAULT_TRANSACTION_RETRIES,
    NO_EXPECTATION,
    Analysis,
    Function,
    HealthCheck,
    Inconclusive,
    Isolation,
    Item,
    Kind,
    Limits,
    Network,
    Rollout,
    RolloutStep,
    RolloutStepKind,
    RunAs,
    Scaling,
    SecretRef,
    Strategy,
    Transaction,
    Trigger,
    TriggerType,
    Variant,
    View,
    Warm,
    duration_at,
    parse_collection,
    parse_policy,
    size_at,
)


def build(doc: Document, defaults: Limits) -> Item:
    """The typed value of one schema-valid document. Raises ParseError for unparsable durations or sizes."""
    data = doc.data
    name, spec, kind = data["metadata"]["name"], data["spec"], Kind(data["kind"])
    if kind is Kind.FUNCTION:
        return _function(name, data["metadata"].get("labels", {}), spec, defaults, doc)
    if kind is Kind.TRIGGER:
        ttype = next(t for t in TriggerType if t.value in spec)
        return Trigger(name, spec["function"], ttype, dict(spec[ttype.value]), doc)
    if kind is Kind.VIEW:
        cache = spec.get("cache", {})
        ttl = duration_at(cache["ttl"], ("spec", "cache", "ttl")) if "ttl" in cache else None
        return View(
            name, spec["function"], ttl, bool(cache.get("perCaller", False)), tuple(spec.get("dependsOn", ())), doc
        )
    if kind is Kind.COLLECTION:
        return parse_collection(name, spec, doc)
    return parse_policy(name, spec, doc)  # the schema requires `roles`: the same as the store's reading


def _function(name: str, labels: dict[str, str], spec: dict[str, Any], defaults: Limits, doc: Document) -> Function:
    scaling = spec.get("scaling", {})
    base = Scaling()
    return Function(
        name=name,
        labels=dict(labels),
        runtime=spec["runtime"],
        source=spec["source"],
        handler=spec["handler"],
        env=dict(spec.get("env", {})),
        secrets=tuple(SecretRef(s["name"], s.get("fromEnv"), s.get("fromFile")) for s in spec.get("secrets", ())),
        limits=_limits(spec.get("limits", {}), defaults),
        network=Network(spec.get("network", "none")),
        isolation=Isolation(spec.get("isolation", "container")),
        scaling=Scaling(
            scaling.get("minInstances", base.min_instances),
            scaling.get("maxInstances", max(base.max_instances, scaling.get("minInstances", 0))),
            scaling.get("concurrency", base.concurrency),
            Warm(scaling.get("warm", Warm.NONE.value)),
        ),
        roles=tuple(spec.get("access", {}).get("roles", ())),
        parameters=spec.get("parameters"),
        returns=spec.get("returns"),
        health_checks=tuple(_check(c, ("spec", "healthCheck", i)) for i, c in enumerate(spec.get("healthCheck", ()))),
        rollout=_rollout(spec.get("rollout", {"strategy": "immediate"})),
        spec=spec,
        document=doc,
        run_as=RunAs(spec.get("runAs", "caller")),
        transaction=(
            Transaction(spec["transaction"].get("retries", DEFAULT_TRANSACTION_RETRIES))
            if "transaction" in spec
            else None
        ),
        db_operations=int(spec.get("limits", {}).get("dbOperations", DEFAULT_DB_OPERATIONS)),
    )


def _limits(raw: dict[str, Any], defaults: Limits) -> Limits:
    at = ("spec", "limits")
    return Limits(
        timeout=duration_at(raw["timeout"], at + ("timeout",)) if "timeout" in raw else defaults.timeout,
        memory=size_at(raw["memory"], at + ("memory",)) if "memory" in raw else defaults.memory,
        cpu=float(raw.get("cpu", defaults.cpu)),
        pids=int(raw.get("pids", defaults.pids)),
        tmp=size_at(raw["tmp"], at + ("tmp",)) if "tmp" in raw else defaults.tmp,
        payload=size_at(raw["payload"], at + ("payload",)) if "payload" in raw else defaults.payload,
        output=size_at(raw["output"], at + ("output",)) if "output" in raw else defaults.output,
    )


def parse_rollout(raw: dict[str, Any]) -> Rollout:
    """A rollout from its manifest form (also how a revision's canonical spec keeps it)."""
    return _rollout(raw)


def _rollout(raw: dict[str, Any]) -> Rollout:
    at = ("spec", "rollout")
    sticky = raw.get("stickiness", {})
    pre = raw.get("prePromotionAnalysis")
    return Rollout(
        strategy=Strategy(raw["strategy"]),
        steps=tuple(_step(s, at + ("steps", i)) for i, s in enumerate(raw.get("steps", ()))),
        scale_down_delay=duration_at(raw["scaleDownDelay"], at + ("scaleDownDelay",))
        if "scaleDownDelay" in raw
        else 30.0,
        auto_promotion_seconds=raw.get("autoPromotionSeconds"),
        auto_promotion_enabled=raw.get("autoPromotionEnabled", True),
        pre_promotion_analysis=_analysis(pre, at + ("prePromotionAnalysis",)) if pre is not None else None,
        variants=tuple(Variant(v["name"], v["weight"], v["revision"]) for v in raw.get("variants", ())),
        stickiness_by=sticky.get("by", "caller"),
        stickiness_name=sticky.get("name"),
        confidence=raw.get("confidence", 0.95),
        min_samples=raw.get("minSamples", 100),
        expected_traffic=raw.get("expectedTraffic"),
    )


def _step(raw: dict[str, Any], at: tuple[str | int, ...]) -> RolloutStep:
    if "setWeight" in raw:
        return RolloutStep(RolloutStepKind.SET_WEIGHT, weight=raw["setWeight"])
    if "pause" in raw:
        pause = raw["pause"]
        if isinstance(pause, dict):
            seconds = duration_at(pause["duration"], at + ("pause", "duration")) if "duration" in pause else None
        else:
            seconds = duration_at(pause, at + ("pause",))
        return RolloutStep(RolloutStepKind.PAUSE, pause=seconds)
    return RolloutStep(RolloutStepKind.ANALYSIS, analysis=_analysis(raw["analysis"], at + ("analysis",)))


def _analysis(raw: dict[str, Any], at: tuple[str | int, ...]) -> Analysis:
    def seconds(key: str) -> float | None:
        return duration_at(raw[key], at + (key,)) if key in raw else None

    return Analysis(
        max_error_rate=raw.get("maxErrorRate"),
        max_error_rate_increase=raw.get("maxErrorRateIncrease"),
        max_p95_latency=seconds("maxP95Latency"),
        max_p95_latency_ratio=raw.get("maxP95LatencyRatio"),
        min_requests=raw.get("minRequests", 0),
        interval=seconds("interval") or 10.0,
        window=seconds("window"),
        failure_limit=raw.get("failureLimit", 1),
        inconclusive=Inconclusive(raw.get("inconclusive", "wait")),
        checks=tuple(_check(c, at + ("checks", i)) for i, c in enumerate(raw.get("checks", ()))),
    )


def _check(raw: dict[str, Any], at: tuple[str | int, ...]) -> HealthCheck:
    timeout = duration_at(raw["timeout"], at + ("timeout",)) if "timeout" in raw else None
    return HealthCheck(raw["event"], raw.get("expect", NO_EXPECTATION), timeout)
