"""engine = "swarm" on a swarm of 3 nodes on this machine (tests/swarm_helpers.py): a revision's hardened
service answers on each node's socket, every row of `fnctl sandbox check` holds, and a lost node's instances
come back on the others."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from polling import wait_until
from sandbox_handlers.harness import find_function, probes_tag, project_fixture, run_cli
from swarm_helpers import SwarmNodes, swarm_nodes

from fnctl.engine import instances
from fnctl.engine.swarm import NodeAgent, SwarmEngine, service_name
from fnctl.engine.swarmspec import Placement
from fnctl.errors import EngineUnavailable
from fnctl.manifest.model import Function
from fnctl.manifest.project import Project

pytestmark = pytest.mark.docker

FUNCTIONS: dict[str, dict[str, Any]] = {
    "identity": {"handler": "probes.identity", "limits": {"memory": "64Mi", "cpu": 0.5, "pids": 32, "tmp": "8Mi"}},
    "echo": {"handler": "probes.echo_context", "limits": {"memory": "64Mi", "cpu": 0.5}},
    "boxed": {"handler": "probes.identity", "isolation": "gvisor"},
}


project = project_fixture("swarm", FUNCTIONS)


@pytest.fixture(scope="module")
def swarm(project: Project) -> Iterator[SwarmNodes]:
    image = probes_tag(project)
    with swarm_nodes(3) as nodes:
        nodes.load(image)
        yield nodes


@pytest.fixture(scope="module")
def image(project: Project, swarm: SwarmNodes) -> str:
    return probes_tag(project)


def agents(swarm: SwarmNodes, nodes: range | list[int]) -> list[NodeAgent]:
    return [NodeAgent(swarm.socket(k), swarm.instance_root) for k in nodes]


def deploy(
    swarm: SwarmNodes, project: Project, image: str, revision: str, placement: Placement, name: str = "identity"
) -> tuple[SwarmEngine, Function, str]:
    function = find_function(project, name)
    engine = SwarmEngine(swarm.manager, swarm.instance_root)
    service = service_name(project.name, function.name, revision)
    assert engine.deploy(function, project=project.name, revision=revision, image=image, placement=placement) == service
    for agent in agents(swarm, range(1, swarm.count + 1)):
        assert service in agent.sync(engine, project.name)  # each node's gateway does this for its own node
    engine.wait_running(service, placement.replicas, timeout=60)
    return engine, function, service


def ask(agent: NodeAgent, function: Function, local: Any) -> dict[str, Any]:
    instance = agent.connect(function, local, {})
    try:
        result = instance.transport.invoke({}, invocation_id="probe", deadline=time.time() + 10, timeout=10)
    finally:
        instance.transport.close()
    assert result.ok, result.error
    assert isinstance(result.result, dict)
    return result.result


def test_hardened_service_answers_on_each_nodes_socket(swarm: SwarmNodes, project: Project, image: str) -> None:
    engine, function, service = deploy(swarm, project, image, "1", Placement(3, max_per_node=1))
    try:
        seen = []
        for agent in agents(swarm, range(1, 4)):
            local = wait_until(lambda: agent.local_instances(project.name, service), what=f"a task on {agent.hostname}")
            assert [(i.slot, i.socket_dir.parent.parent.name) for i in local][0][1] == agent.hostname
            answer = ask(agent, function, local[0])
            assert answer["uid"] == answer["euid"] == 65534
            assert answer["cap_eff"] == answer["cap_prm"] == "0000000000000000"
            assert answer["no_new_privs"] == "1"  # set by the runtime: these node daemons do not
            assert answer["root_write"] == "EROFS"
            assert answer["interfaces"] == ["lo"]
            assert answer["routes"] == [] and answer["routes6"] == []
            seen.append(local[0].slot)
        assert sorted(seen) == [1, 2, 3]
    finally:
        engine.remove(service)


def test_sandbox_check_rows_hold_under_swarm(swarm: SwarmNodes, project: Project, image: str) -> None:
    engine, function, service = deploy(swarm, project, image, "2", Placement(3, max_per_node=1))
    try:
        for agent in agents(swarm, range(1, 4)):
            for local in wait_until(lambda: agent.local_instances(project.name, service), what="a task"):
                ask(agent, function, local)  # its runtime is up: it sets no-new-privileges before it connects
            reports = wait_until(
                lambda: agent.check(project.name, service=service), what=f"a task to check on {agent.hostname}"
            )
            assert [r.function for r in reports] == ["identity"]
            rows = {c.name: c for c in reports[0].checks}
            assert set(rows) >= {
                "non-root user", "capabilities dropped", "no-new-privileges", "read-only root",
                "/tmp size-limited tmpfs", "memory limit, no swap", "cpu quota", "pids limit",
                "nofile/fsize ulimits", "network none (loopback only)", "capped logs",
                "only its socket directory mounted", "no writable host path", "runtime runc",
            }  # fmt: skip
            assert [f"{c.name}: {c.detail}" for c in rows.values() if not c.ok] == []
        # The command, as an operator on node 2 runs it: its own node's tasks, each row passing.
        config = project.root / "fnctl.toml"
        original = config.read_text()
        config.write_text(f'engine = "swarm"\n{original}\n[swarm]\nmanager = "unix://{swarm.manager}"\n'
                          f'node = "unix://{swarm.socket(2)}"\ninstanceRoot = "{swarm.instance_root}"\n')  # fmt: skip
        try:
            done = run_cli(project, "sandbox", "check", "-o", "json")
        finally:
            config.write_text(original)
        assert done.returncode == 0, done.stdout + done.stderr
        reported = [r for r in json.loads(done.stdout) if r["instance"].startswith(service + ".")]
        assert len(reported) == 1 and all(c["ok"] for c in reported[0]["checks"]), reported
    finally:
        engine.remove(service)


class NodeLoad(threading.Thread):
    """Requests one after another to the instance on one node of whichever service `active` names."""

    def __init__(self, agent: NodeAgent, function: Function, project: str, active: list[str]) -> None:
        super().__init__(daemon=True)
        self.agent, self.function, self.project, self.active = agent, function, project, active
        self.served: list[tuple[str, str]] = []  # (service asked, revision that answered)
        self.failed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        connections: dict[str, instances.Instance] = {}
        try:
            while not self.stop.is_set():
                service = self.active[0]
                try:
                    if service not in connections:
                        local = self.agent.local_instances(self.project, service)[0]
                        connections[service] = self.agent.connect(self.function, local, {})
                    result = connections[service].transport.invoke(
                        {"n": len(self.served)}, invocation_id=f"r{len(self.served)}", deadline=time.time() + 10
                    )
                    if result.ok:
                        self.served.append((service, result.result["revision"]))
                    else:
                        self.failed.append(f"{service}: {result.error}")
                except Exception as exc:  # every failure counts, whatever it is
                    self.failed.append(f"{service}: {exc!r}")
        finally:
            for connection in connections.values():
                connection.transport.close()


def test_blue_green_switch_across_3_nodes_under_load_fails_nothing(
    swarm: SwarmNodes, project: Project, image: str
) -> None:
    engine, function, blue = deploy(swarm, project, image, "10", Placement(3, max_per_node=1), "echo")
    green = ""
    active = [blue]
    loads = [NodeLoad(agent, function, project.name, active) for agent in agents(swarm, range(1, 4))]
    try:
        for load in loads:
            load.start()
        wait_until(lambda: all(len(load.served) >= 20 for load in loads), what="blue serving on every node")
        _, _, green = deploy(swarm, project, image, "11", Placement(3, max_per_node=1), "echo")
        switched = [len(load.served) for load in loads]
        active[0] = green  # the switch: every node's traffic goes to green from its next request
        engine.remove(blue)  # blue's tasks get SIGTERM and finish what they accepted (StopGracePeriod)
        wait_until(
            lambda: all(len(load.served) >= n + 50 for load, n in zip(loads, switched, strict=True)),
            what="green serving on every node",
            timeout=30,
        )
    finally:
        for load in loads:
            load.stop.set()
            load.join(timeout=15)
        for service in (blue, green):
            if service and engine.running(service):
                engine.remove(service)
    total = sum(len(load.served) for load in loads)
    print(f"\nblue-green across 3 nodes: {total} requests, {sum(len(load.failed) for load in loads)} failed")
    assert [load.failed for load in loads] == [[], [], []]
    for load in loads:
        assert {"10", "11"} <= {revision for _, revision in load.served}
        assert all(revision == "11" for _, revision in load.served[-20:])


def test_a_changed_spec_rolls_over_every_task(
    swarm: SwarmNodes, project: Project, image: str, docker_client: docker.DockerClient
) -> None:
    """Swarm's rolling update (one task at a time, stop-first): the same revision on a rebuilt image ends with
    every task replaced, each answering on its node's socket."""
    engine, function, service = deploy(swarm, project, image, "30", Placement(3, max_per_node=1))
    rebuilt = image.rsplit(":", 1)[0] + ":rebuilt"
    docker_client.images.get(image).tag(rebuilt)
    swarm.load(rebuilt)
    try:
        before = {t.container_id for t in engine.running(service)}
        engine.deploy(function, project=project.name, revision="30", image=rebuilt, placement=Placement(3, 1))
        wait_until(lambda: engine.update_state(service) == "completed", what="the rolling update", timeout=90)
        after = engine.wait_running(service, 3)
        assert len(after) == 3 and not before & {t.container_id for t in after}
        for agent in agents(swarm, range(1, 4)):
            local = wait_until(lambda: agent.local_instances(project.name, service), what="a task")
            assert ask(agent, function, local[0])["uid"] == 65534
    finally:
        engine.remove(service)


def test_a_gvisor_function_is_placed_only_on_runsc_nodes(swarm: SwarmNodes, project: Project, image: str) -> None:
    """These nodes run runc by default: its tasks wait, and the engine says why (tests/engine/test_swarm_gvisor.py
    runs one on a runsc node)."""
    function = find_function(project, "boxed")
    engine = SwarmEngine(swarm.manager, swarm.instance_root)
    service = engine.deploy(function, project=project.name, revision="1", image=image, placement=Placement(1))
    try:
        with pytest.raises(EngineUnavailable, match="0 of 1 tasks running.*no suitable node"):
            engine.wait_running(service, 1, timeout=3)
    finally:
        engine.remove(service)


def test_nodes_follow_the_services_directories(swarm: SwarmNodes, project: Project, image: str) -> None:
    engine, _, service = deploy(swarm, project, image, "20", Placement(2))
    agent = NodeAgent(swarm.socket(2), swarm.instance_root)
    assert [p.name for p in sorted((Path(swarm.instance_root) / agent.hostname / service).iterdir())] == ["1", "2"]
    engine.scale(service, 3)  # a third slot: its directory on every node, and its task running
    for each in agents(swarm, range(1, 4)):
        assert service in each.sync(engine, project.name)
    assert (Path(swarm.instance_root) / agent.hostname / service / "3").is_dir()
    assert {t.slot for t in engine.wait_running(service, 3)} == {1, 2, 3}
    engine.remove(service)
    assert service not in agent.sync(engine, project.name)
    assert not (Path(swarm.instance_root) / agent.hostname / service).exists()


def test_socket_directories_are_per_node(swarm: SwarmNodes) -> None:
    agent = NodeAgent(swarm.socket(1), swarm.instance_root)
    agent.prepare("fnctl-x-y-1", 2)
    try:
        assert agent.socket_dir("fnctl-x-y-1", 2) == Path(swarm.instance_root) / swarm.hostname(1) / "fnctl-x-y-1" / "2"
        assert oct(agent.socket_dir("fnctl-x-y-1", 2).stat().st_mode & 0o777) == oct(instances.SOCKET_DIR_MODE)
        assert oct(Path(swarm.instance_root).stat().st_mode & 0o777) == "0o700"
    finally:
        agent.forget("fnctl-x-y-1")
    assert not (Path(swarm.instance_root) / swarm.hostname(1) / "fnctl-x-y-1").exists()


def test_lost_nodes_instances_come_back_on_the_others(swarm: SwarmNodes, project: Project, image: str) -> None:
    """Last in this module: node 3 stays lost."""
    engine, function, service = deploy(swarm, project, image, "3", Placement(3))
    try:
        hostnames = engine.hostnames()
        lost = {t.slot for t in engine.running(service) if hostnames[t.node_id] == swarm.hostname(3)}
        assert lost, "Swarm put no task on node 3"
        survivors = agents(swarm, [1, 2])
        killed = time.monotonic()
        swarm.kill(3)

        def answering() -> list[int] | None:
            slots = []
            for agent in survivors:
                for local in agent.local_instances(project.name, service):
                    try:
                        ask(agent, function, local)
                    except Exception:
                        return None
                    slots.append(local.slot)
            return sorted(slots) if sorted(slots) == [1, 2, 3] else None

        wait_until(answering, what="all 3 slots answering on nodes 1 and 2", timeout=30, interval=0.2)
        print(
            f"\nnode 3 lost: slots {sorted(lost)} answering again on nodes 1-2 after {time.monotonic() - killed:.1f}s"
        )
    finally:
        engine.remove(service)
