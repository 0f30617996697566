"""The pools' blocking work under `engine = "swarm"` (docs/swarm.md): the gateway of a node adopts the tasks
its node runs, over their sockets, and never starts, stops or pauses one (Swarm owns their lifecycle): its
pools adopt only, as a follower worker of `fnctl serve --workers` does (fnctl.gateway.pools).

`SwarmActions` is `DockerActions` with the engine side swapped: its ready instances are this node's running
task containers of the routed revisions (`NodeAgent.local_instances`), read again on every look, so that a
task Swarm places or replaces here is adopted within a look; before each look the node's instance
directories follow the project's services (`NodeAgent.sync`), so that Swarm can place any task here. A
pool that finds no task of its revision on this node answers 503 (forwarding to a node that has one is
docs/scale-out.md's next step).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fnctl.engine import instances, swarmio
from fnctl.engine.sandbox import LABEL, labels
from fnctl.engine.swarm import NodeAgent, SwarmEngine
from fnctl.errors import FnctlError
from fnctl.gateway.poolactions import DockerActions, Rows
from fnctl.gateway.poolhost import Target, Unavailable
from fnctl.invocation.outcome import Failure
from fnctl.manifest.project import Project
from fnctl.state.location import StateLocation

log = logging.getLogger(__name__)

EXIT_WAIT = 2.0  # how long a dead runtime's container may take to be seen as exited


class SwarmActions(DockerActions):
    """The pools' blocking work on a Swarm node: adopt the node's tasks, start and stop nothing."""

    adopts_only = True  # the pools follow what Swarm runs (fnctl.gateway.pools)
    follow_interval = 0.5  # seconds between looks at the node's tasks (a sync with the manager, a task list)

    def __init__(self, store_path: StateLocation, project: Project, max_wait: float | None = None) -> None:
        super().__init__(store_path, project, max_wait)
        settings = project.swarm
        self.manager = SwarmEngine(settings.manager, settings.instance_root)
        self.agent = NodeAgent(settings.node, settings.instance_root)

    def ready_rows(self) -> tuple[Rows, set[str]]:
        """This node's running tasks of the project, by (function, revision): (instance id, container, socket
        directory), the instance id naming the container (a replacement in the same slot is another one)."""
        try:
            self.agent.sync(self.manager, self.project.name)
        except FnctlError as exc:  # the manager unreachable: the tasks already here still serve
            log.warning("following the swarm's services: %s", exc.message)
        rows: Rows = {}
        for task in swarmio.task_containers(self.agent.engine, labels(self.project.name, "")):
            function, revision = task.labels.get(f"{LABEL}.function", ""), task.labels.get(f"{LABEL}.revision", "")
            if task.running and function and revision.isdigit():
                socket_dir = str(self.agent.socket_dir(task.service, task.slot))
                instance_id = f"{task.service}.{task.slot}@{task.id[:12]}"
                rows.setdefault((function, int(revision)), []).append((instance_id, task.id, socket_dir))
        return rows, set()

    def start(self, target: Target, instance_id: str, attach: Callable[[instances.Launched], None]) -> None:
        raise Unavailable(
            f"{target.function.name} revision {target.revision} has no free task on this node "
            f"({self.agent.hostname}): Swarm runs its instances (its service's replicas)"
        )

    def death_cause(self, target: Target, container_id: str) -> tuple[Failure | None, str]:
        """Why a task's runtime went away: out of memory, a crash, or None when it exited cleanly or its
        container is gone (its service removed or scaled down: Swarm stopped it, and a runtime that is stopped
        finishes every invocation it accepted, so a request it dropped never ran)."""
        deadline = time.monotonic() + EXIT_WAIT
        while True:
            try:
                state = swarmio.inspect_container(self.agent.engine, container_id).get("State") or {}
            except FnctlError:
                return None, "the task was stopped by Swarm"
            if not state.get("Running") or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if state.get("OOMKilled"):
            limit = target.function.limits.memory // 2**20
            return Failure.OUT_OF_MEMORY, f"the function ran out of memory (limit {limit}Mi); Swarm replaces the task"
        if not state.get("Running") and state.get("ExitCode") == 0:
            return None, "the task was drained"
        return Failure.CRASHED, "the task crashed during the invocation; Swarm replaces it"


def pool_actions(store_path: StateLocation, project: Project, max_wait: float | None) -> DockerActions:
    """The pools' blocking work for the project's engine: the one place the gateway chooses it."""
    if project.engine == "swarm":
        return SwarmActions(store_path, project, max_wait)
    return DockerActions(store_path, project, max_wait)
