"""engine.swarmspec, pure: the sandbox profile as a Swarm ServiceSpec, and the rows of `fnctl sandbox check`
read from a task container (each can fail)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from sandbox_handlers.harness import find_function, write_project

from fnctl.engine.sandbox import ContainerSpec
from fnctl.engine.swarm import SwarmEngine, SwarmUnsupported, service_name
from fnctl.engine.swarmspec import (
    Placement,
    check_task,
    interfaces,
    mount_source,
    no_new_privs,
    service_spec,
    socket_dir,
    task_slot,
)

SPEC = ContainerSpec(
    name="fnctl-p-hello-3",
    image="fnctl/p-hello:abc",
    user="65534:65534",
    environment={"FNCTL_HANDLER": "main.handler"},
    labels={"io.fnctl.project": "p", "io.fnctl.isolation": "container"},
    socket_dir="/run/fnctl/swarm/{{.Node.Hostname}}/fnctl-p-hello-3/{{.Task.Slot}}",
    socket_target="/run/fnctl",
    memory=64 * 2**20,
    nano_cpus=500_000_000,
    pids=32,
    tmp_size=8 * 2**20,
    nofile=1024,
    fsize=8 * 2**20,
    network="none",
    runtime=None,
    log_max_size="1m",
)
LO_ONLY = "Inter-|   Receive\n face |bytes\n    lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"


def test_service_spec_carries_the_profile() -> None:
    body = service_spec(SPEC, Placement(3, max_per_node=1), instance_root="/run/fnctl/swarm")
    container = body["TaskTemplate"]["ContainerSpec"]
    assert (container["User"], container["ReadOnly"], container["CapabilityDrop"]) == ("65534:65534", True, ["ALL"])
    assert body["TaskTemplate"]["Resources"]["Limits"] == {
        "NanoCPUs": 500_000_000,
        "MemoryBytes": 64 * 2**20,
        "Pids": 32,
    }
    assert {u["Name"] for u in container["Ulimits"]} == {"nofile", "fsize"}
    bind, tmp = container["Mounts"]
    assert bind == {"Type": "bind", "Source": SPEC.socket_dir, "Target": "/run/fnctl", "ReadOnly": True}
    assert tmp["TmpfsOptions"]["SizeBytes"] == 8 * 2**20
    assert "Networks" not in body["TaskTemplate"]
    assert body["TaskTemplate"]["LogDriver"]["Options"]["max-size"] == "1m"
    assert body["TaskTemplate"]["Placement"] == {"Constraints": [], "MaxReplicas": 1}
    assert body["Mode"] == {"Replicated": {"Replicas": 3}}
    gvisor = service_spec(SPEC, Placement(1, gvisor=True), instance_root="/r")
    assert gvisor["TaskTemplate"]["Placement"]["Constraints"] == ["engine.labels.io.fnctl.default-runtime==runsc"]


def test_names_and_directories() -> None:
    assert mount_source("/r", "svc") == "/r/{{.Node.Hostname}}/svc/{{.Task.Slot}}"
    assert str(socket_dir("/r", "node-1", "svc", 2)) == "/r/node-1/svc/2"
    assert task_slot("fnctl-p-hello-3.2.x8k2") == 2 and task_slot("odd") is None
    assert service_name("p", "hello", "3") == "fnctl-p-hello-3"
    long = service_name("p" * 40, "f" * 40, "12")
    assert len(long) == 63 and long != service_name("p" * 40, "f" * 40, "13")
    assert no_new_privs("Name:\tpython3\nNoNewPrivs:\t1\n") and not no_new_privs("NoNewPrivs:\t0\n")
    assert interfaces(LO_ONLY) == ["lo"]


GOOD: dict[str, Any] = {
    "Config": {"User": "65534:65534", "Labels": {"io.fnctl.isolation": "container"}},
    "HostConfig": {
        "CapDrop": ["ALL"],
        "ReadonlyRootfs": True,
        "Memory": 64 * 2**20,
        "NanoCpus": 500_000_000,
        "PidsLimit": 32,
        "Ulimits": [{"Name": "nofile"}, {"Name": "fsize"}],
        "LogConfig": {"Config": {"max-size": "1m"}},
        "Mounts": [
            {"Type": "bind", "Source": "/r/n1/svc/1", "Target": "/run/fnctl", "ReadOnly": True},
            {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": 8 * 2**20}},
        ],
    },
}
ARGS: dict[str, Any] = {
    "proc_status": "NoNewPrivs:\t1\n",
    "net_dev": LO_ONLY,
    "node_runtime": "runc",
    "node_swap": 0,
    "socket_dir": "/r/n1/svc/1",
}


def failing(inspect: dict[str, Any], **args: Any) -> list[str]:
    return [c.name for c in check_task(inspect, **(ARGS | args)) if not c.ok]


def test_every_row_holds_for_a_hardened_task() -> None:
    assert failing(GOOD) == []


@pytest.mark.parametrize(
    ("change", "args", "row"),
    [
        (("Config", "User", ""), {}, "non-root user"),
        (("HostConfig", "CapDrop", []), {}, "capabilities dropped"),
        (None, {"proc_status": "NoNewPrivs:\t0\n"}, "no-new-privileges"),
        (("HostConfig", "ReadonlyRootfs", False), {}, "read-only root"),
        (None, {"node_swap": 2**30}, "memory limit, no swap"),
        (("HostConfig", "PidsLimit", 0), {}, "pids limit"),
        (("HostConfig", "Ulimits", []), {}, "nofile/fsize ulimits"),
        (None, {"net_dev": LO_ONLY + "  eth0: 0 0\n"}, "network none (loopback only)"),
        (None, {"socket_dir": "/r/n2/svc/1"}, "only its socket directory mounted"),
        (None, {"node_runtime": "runsc"}, "runtime runc"),
    ],
)
def test_each_row_can_fail(change: tuple[str, str, Any] | None, args: dict[str, Any], row: str) -> None:
    inspect = copy.deepcopy(GOOD)
    if change:
        inspect[change[0]][change[1]] = change[2]
    assert failing(inspect, **args) == [row]


def test_a_writable_socket_mount_fails() -> None:
    inspect = copy.deepcopy(GOOD)
    inspect["HostConfig"]["Mounts"][0]["ReadOnly"] = False
    assert failing(inspect) == ["no writable host path"]


def test_egress_is_refused_before_anything_is_asked_of_the_engine(tmp_path: Path) -> None:
    project = write_project(
        tmp_path, "p-egress", "unused:base", {"out": {"handler": "probes.echo", "network": "egress"}}
    )
    engine = SwarmEngine("/nonexistent/docker.sock")
    with pytest.raises(SwarmUnsupported, match="network: egress"):
        engine.deploy(find_function(project, "out"), project="p", revision="1", image="i", placement=Placement(1))
