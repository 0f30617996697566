"""`fnctl sandbox check`: the hardening profile of every running instance, read back from the engine."""

from __future__ import annotations

from dataclasses import dataclass

from fnctl.engine import dockerio
from fnctl.engine.sandbox import HardeningCheck, check_container, labels


@dataclass(frozen=True)
class InstanceReport:
    function: str
    instance: str
    container: str
    checks: list[HardeningCheck]


def check_instances(project: str, function: str | None) -> list[InstanceReport]:
    selector = labels(project, function or "")
    reports = []
    for info in dockerio.list_containers(selector, all_states=False):
        data = dockerio.inspect_container(info.id)
        reports.append(
            InstanceReport(
                info.labels.get("io.fnctl.function", "?"),
                info.labels.get("io.fnctl.instance", "?"),
                info.name,
                check_container(data),
            )
        )
    return sorted(reports, key=lambda r: (r.function, r.instance))
