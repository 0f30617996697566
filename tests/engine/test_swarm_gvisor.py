"""isolation: gvisor on Swarm: no runtime per service, so a gVisor function's tasks go to nodes whose daemon
runs runsc by default (docs/swarm.md). One such node on this machine: the task answers over its socket from
inside gVisor, and every row of the sandbox check holds, `runtime runsc` included."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from polling import wait_until
from sandbox_handlers.harness import find_function, probes_tag, project_fixture
from swarm_helpers import SwarmNodes, swarm_nodes

from fnctl.engine.swarm import NodeAgent, SwarmEngine, service_name
from fnctl.engine.swarmspec import Placement
from fnctl.manifest.project import Project

pytestmark = pytest.mark.docker

FUNCTIONS: dict[str, dict[str, Any]] = {"boxed": {"handler": "probes.identity", "isolation": "gvisor"}}


project = project_fixture("swarm", FUNCTIONS)


@pytest.fixture(scope="module")
def swarm(project: Project) -> Iterator[tuple[SwarmNodes, str]]:
    image = probes_tag(project)
    with swarm_nodes(1, name="fnsg", runtime="runsc") as nodes:
        nodes.load(image)
        yield nodes, image


def test_gvisor_task_runs_on_a_runsc_node_and_checks_clean(swarm: tuple[SwarmNodes, str], project: Project) -> None:
    nodes, image = swarm
    function = find_function(project, "boxed")
    engine = SwarmEngine(nodes.manager, nodes.instance_root)
    agent = NodeAgent(nodes.socket(1), nodes.instance_root)
    service = service_name(project.name, "boxed", "1")
    agent.prepare(service, 1)
    engine.deploy(function, project=project.name, revision="1", image=image, placement=Placement(1))
    try:
        engine.wait_running(service, 1, timeout=60)
        local = wait_until(lambda: agent.local_instances(project.name, service), what="the gVisor task")[0]
        instance = agent.connect(function, local, {}, timeout=30)
        try:
            result = instance.transport.invoke({}, invocation_id="probe", deadline=time.time() + 20, timeout=20)
        finally:
            instance.transport.close()
        assert result.ok, result.error
        assert result.result["uid"] == 65534 and result.result["interfaces"] == ["lo"]
        reports = agent.check(project.name, service=service)
        rows = {c.name: c for c in reports[0].checks}
        assert rows["runtime runsc"].ok
        assert [f"{c.name}: {c.detail}" for c in rows.values() if not c.ok] == []
    finally:
        engine.remove(service)
