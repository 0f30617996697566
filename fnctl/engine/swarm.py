"""`engine = "swarm"`: a revision's instances as a Docker Swarm service (docs/swarm.md).

Two sides. `SwarmEngine` talks to a manager: it creates a revision's service (replicas, placement, restart
policy, rolling update: all Swarm's), scales it, waits for its tasks, removes it. `NodeAgent` runs beside a
gateway on each node: it makes the instance directories of its node (the bind mounts' sources: one per
service and slot, under `instance_root/<node hostname>/`), finds the task containers its node runs, and
connects to their runtimes over their sockets with the same peer check as on one host (a process of that
container's cgroup); it never sends a packet to a task. Swarm, not fnctl, restarts and replaces tasks, so
an instance that fails is left to Swarm.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fnctl.engine import swarmio
from fnctl.engine.inspection import InstanceReport
from fnctl.engine.instances import SOCKET_DIR_MODE, Instance, host_transport
from fnctl.engine.sandbox import LABEL, container_spec, labels
from fnctl.engine.swarmspec import Placement, check_task, mount_source, service_spec
from fnctl.engine.swarmspec import socket_dir as task_socket_dir
from fnctl.errors import BadInput, EngineUnavailable, FnctlError
from fnctl.manifest.model import Function, Isolation, Network
from fnctl.manifest.project import DEFAULT_INSTANCE_ROOT

SERVICE_NAME_MAX = 63  # a service name is a DNS label


class SwarmUnsupported(BadInput):
    """The function asks for something fnctl cannot give it on Swarm (docs/swarm.md)."""


def service_name(project: str, function: str, revision: str) -> str:
    """`fnctl-<project>-<function>-<revision>`, shortened with a hash when it is too long for a DNS label."""
    name = f"fnctl-{project}-{function}-{revision}"
    if len(name) <= SERVICE_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: SERVICE_NAME_MAX - 11]}-{digest}"


@dataclass(frozen=True)
class SwarmEngine:
    manager: str  # a manager's engine socket
    instance_root: str = DEFAULT_INSTANCE_ROOT

    def deploy(self, function: Function, *, project: str, revision: str, image: str, placement: Placement) -> str:
        """Create the revision's service, or roll its tasks over to a changed spec; returns its name."""
        if function.network is Network.EGRESS:
            raise SwarmUnsupported(
                f'{function.name}: network: egress is not available with engine = "swarm" yet (docs/swarm.md)'
            )
        name = service_name(project, function.name, revision)
        spec = container_spec(
            function,
            image=image,
            name=name,
            socket_dir=mount_source(self.instance_root, name),
            revision=revision,
            container_labels=labels(project, function.name, revision=revision, engine="swarm"),
        )
        if function.isolation is Isolation.GVISOR:
            placement = Placement(placement.replicas, placement.max_per_node, gvisor=True)
        body = service_spec(spec, placement, instance_root=self.instance_root)
        if swarmio.inspect_service(self.manager, name) is None:
            swarmio.create_service(self.manager, body)
        else:
            swarmio.update_service(self.manager, body)
        return name

    def scale(self, service: str, replicas: int) -> None:
        current = swarmio.inspect_service(self.manager, service)
        if current is None:
            raise FnctlError(f"scaling {service}: no such service")
        spec = dict(current["Spec"])
        spec["Mode"] = {"Replicated": {"Replicas": replicas}}
        swarmio.update_service(self.manager, spec)

    def update_state(self, service: str) -> str:
        """Where Swarm's rolling update of the service stands: "" (none yet), updating, paused, completed,
        rollback_started, rollback_completed, ..."""
        found = swarmio.inspect_service(self.manager, service) or {}
        return str((found.get("UpdateStatus") or {}).get("State") or "")

    def remove(self, service: str) -> None:
        swarmio.remove_service(self.manager, service)

    def running(self, service: str) -> list[swarmio.SwarmTask]:
        """The service's tasks that run and are meant to."""
        return [t for t in swarmio.tasks(self.manager, service) if t.state == "running" and t.desired == "running"]

    def wait_running(self, service: str, replicas: int, *, timeout: float = 60.0) -> list[swarmio.SwarmTask]:
        """Wait until `replicas` tasks of the service run; EngineUnavailable naming the last task error."""
        deadline = time.monotonic() + timeout
        while True:
            every = swarmio.tasks(self.manager, service)
            up = [t for t in every if t.state == "running" and t.desired == "running"]
            if len(up) >= replicas:
                return up
            missing = sorted({t.error for t in every if "No such image" in t.error})
            if missing:  # a node without the image: no retry brings it there (docs/swarm.md, "Images")
                raise EngineUnavailable(f"{service}: {missing[0]}")
            if time.monotonic() > deadline:
                errors = sorted({t.error for t in every if t.error})
                raise EngineUnavailable(
                    f"{service}: {len(up)} of {replicas} tasks running after {timeout:g}s"
                    + (f" ({'; '.join(errors)})" if errors else "")
                )
            time.sleep(0.1)

    def services(self, project: str) -> dict[str, int]:
        """Each service of `project` in the swarm, with its replicas."""
        return swarmio.services(self.manager, labels(project, ""))

    def hostnames(self) -> dict[str, str]:
        """Node ID → hostname, for every node of the swarm."""
        return {n.id: n.hostname for n in swarmio.nodes(self.manager)}


def prepare_slots(instance_root: str, hostname: str, service: str, slots: int) -> None:
    """The instance directories of slots 1..`slots` of `service` on node `hostname`, before Swarm places a
    task there (a bind mount's source must exist): owned by this user, mode 0755, under a private root."""
    root = Path(instance_root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    for slot in range(1, slots + 1):
        path = Path(task_socket_dir(instance_root, hostname, service, slot))
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, SOCKET_DIR_MODE)


def forget_slots(instance_root: str, hostname: str, service: str) -> None:
    """Remove a removed service's directories of node `hostname`."""
    shutil.rmtree(Path(instance_root) / hostname / service, ignore_errors=True)


@dataclass(frozen=True)
class LocalInstance:
    """A task of a revision's service that runs on this agent's node."""

    service: str
    slot: int
    container_id: str
    socket_dir: Path


class NodeAgent:
    """The node side: instance directories, the node's task containers, connections to their runtimes."""

    def __init__(self, engine: str, instance_root: str = DEFAULT_INSTANCE_ROOT) -> None:
        self.engine = engine
        self.instance_root = instance_root
        self.hostname = swarmio.info(engine).hostname

    def socket_dir(self, service: str, slot: int) -> Path:
        return Path(task_socket_dir(self.instance_root, self.hostname, service, slot))

    def prepare(self, service: str, slots: int) -> None:
        prepare_slots(self.instance_root, self.hostname, service, slots)

    def forget(self, service: str) -> None:
        forget_slots(self.instance_root, self.hostname, service)

    def sync(self, manager: SwarmEngine, project: str) -> set[str]:
        """Make this node ready for every service of `project` the swarm has (each slot's directory, so that
        Swarm can place any task here, a rescheduled one too) and remove the directories of services that are
        gone; returns the services. What the gateway of a node runs on a timer and whenever the routes change."""
        services = manager.services(project)
        for name, replicas in services.items():
            self.prepare(name, replicas)
        here = Path(self.instance_root) / self.hostname
        for gone in sorted(p.name for p in here.iterdir() if p.name not in services) if here.is_dir() else []:
            self.forget(gone)
        return set(services)

    def local_instances(
        self, project: str, service: str | None = None, *, service_id: str | None = None
    ) -> list[LocalInstance]:
        """This node's running task containers of `project` (of `service`; of the service with `service_id`
        only: a service created again under a removed one's name meets the old one's tasks still stopping)."""
        selector = labels(project, "") | ({"com.docker.swarm.service.name": service} if service else {})
        if service_id:
            selector["com.docker.swarm.service.id"] = service_id
        return sorted(
            (
                LocalInstance(c.service, c.slot, c.id, self.socket_dir(c.service, c.slot))
                for c in swarmio.task_containers(self.engine, selector)
                if c.running
            ),
            key=lambda i: (i.service, i.slot),
        )

    def connect(
        self, function: Function, local: LocalInstance, secret_values: Mapping[str, str], *, timeout: float = 10.0
    ) -> Instance:
        """A connection to the runtime of `local` (only a process of its container is accepted), configured
        with the function's secrets: they travel over the socket, never in the service's spec."""
        transport = host_transport(local.socket_dir, local.container_id)
        try:
            transport.connect(timeout=timeout)
            transport.configure(secret_values)
        except BaseException:
            transport.close()
            raise
        return Instance(f"{local.service}.{local.slot}", local.container_id, local.socket_dir, transport, function)

    def check(self, project: str, function: str | None = None, *, service: str | None = None) -> list[InstanceReport]:
        """`fnctl sandbox check` for the running task containers of this node (of one service, if given)."""
        node_runtime = swarmio.info(self.engine).default_runtime
        swap = _swap_total()
        reports = []
        for local in self.local_instances(project, service):
            data = swarmio.inspect_container(self.engine, local.container_id)
            container_labels = (data.get("Config") or {}).get("Labels") or {}
            name = str(container_labels.get(f"{LABEL}.function", "?"))
            if function and name != function:
                continue
            pid = int((data.get("State") or {}).get("Pid") or 0)
            checks = check_task(
                data,
                proc_status=_read(f"/proc/{pid}/status") if pid else "",
                net_dev=_read(f"/proc/{pid}/net/dev") if pid else "",
                node_runtime=node_runtime,
                node_swap=swap,
                socket_dir=str(local.socket_dir),
            )
            reports.append(InstanceReport(name, f"{local.service}.{local.slot}", str(data.get("Name", "")), checks))
        return sorted(reports, key=lambda r: (r.function, r.instance))


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def _swap_total() -> int:
    """This machine's swap in bytes (/proc/meminfo), -1 when unknown."""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("SwapTotal:"):
            return int(line.split()[1]) * 1024
    return -1
