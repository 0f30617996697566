"""A cold start's CPU (issue 18, item 4): an instance the gateway starts keeps its start-up CPU
(sandbox.STARTUP_CPUS) until its first request is answered, and gets its function's own quota right after;
the engine's update no longer runs beside that first request (it took CPU from it and cut its quota while
the runtime forked its first worker). Against real Docker, with the gateway's PoolManager.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import docker
import pytest
from deploy_helpers import Project, cleanup, make_project
from polling import eventually, eventually_awaited
from test_pool import call

from fnctl.engine.sandbox import STARTUP_CPUS
from fnctl.gateway import pools
from fnctl.gateway.pools import PoolManager
from fnctl.manifest.project import load_project
from fnctl.state.location import StateLocation

SPEC = """\
apiVersion: fnctl/v1
kind: Function
metadata: {name: slow}
spec:
  runtime: python3.11
  source: ../functions/slow
  handler: main.handler
  limits: {timeout: 30s, memory: 64Mi, cpu: 0.5}
  scaling: {minInstances: 0, maxInstances: 1, concurrency: 1}
"""
# Reads its cgroup's quota after a pause: an update made beside the request has landed by then.
CODE = """\
import os
import sys
import time


def handler(event, context):
    time.sleep(event.get("wait", 0))
    try:  # cgroup v2, else v1
        with open("/sys/fs/cgroup/cpu.max") as limit:
            quota, period = limit.read().split()
    except FileNotFoundError:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as q, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as p:
            quota, period = q.read(), p.read()
    return {"cpus": int(quota) / int(period), "ctypes": "ctypes" in sys.modules, "ppid": os.getppid()}
"""


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, base_image: str
) -> Iterator[Project]:
    project = make_project(tmp_path_factory.mktemp("coldcpu") / "project", docker_client, base_image)
    try:
        project.own_function("slow", CODE, SPEC)
        project.ok("apply")
        yield project
    finally:
        cleanup(project)


def _quotas(project: Project) -> list[int]:
    return [int(c.attrs["HostConfig"]["CpuQuota"]) for c in project.containers("slow")]


@pytest.mark.docker
def test_the_first_request_runs_with_the_start_up_cpu_and_the_quota_is_set_after_it(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No cap in the way: whatever the machine's load, the quota waits for the answer.
    monkeypatch.setattr(pools, "SETTLE_WAIT", 60.0)

    async def main() -> None:
        manager = PoolManager(load_project(project.root), StateLocation(project.state), idle_seconds=60)
        await manager.start()
        try:
            first = await call(manager, "slow", {"wait": 1.0})
            assert first.cold_start and first.outcome.ok, first.outcome
            assert first.outcome.result is not None and first.outcome.result["cpus"] == STARTUP_CPUS
            await eventually(lambda: _quotas(project) == [50_000], "the function's own CPU quota after the answer")

            async def own_quota() -> bool:  # the engine records it before its cgroup write lands
                result = (await call(manager, "slow", {})).outcome.result
                return result is not None and result["cpus"] == 0.5

            await eventually_awaited(own_quota, "the instance's cgroup at the function's own quota")
            assert [s.id for s in manager._pools[("slow", 1)].slots.values()] == [first.instance]
        finally:
            await manager.close(timeout=30)

    asyncio.run(asyncio.wait_for(main(), timeout=180))


@pytest.mark.docker
def test_a_long_first_request_keeps_the_start_up_cpu_only_until_the_cap(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pools, "SETTLE_WAIT", 0.2)

    async def main() -> None:
        manager = PoolManager(load_project(project.root), StateLocation(project.state), idle_seconds=60)
        await manager.start()
        try:
            running = asyncio.ensure_future(call(manager, "slow", {"wait": 12.0}))
            # Set while the first request still runs (it sleeps 12 s): the cap, not the answer, ended it.
            await eventually(lambda: _quotas(project) == [50_000], "the function's own CPU quota at the cap", 11.0)
            assert not running.done()
            first = await running
            assert first.cold_start and first.outcome.result is not None and first.outcome.result["cpus"] == 0.5
        finally:
            await manager.close(timeout=30)

    asyncio.run(asyncio.wait_for(main(), timeout=180))


@pytest.mark.docker
def test_the_first_worker_is_forked_without_loading_ctypes_in_a_container(project: Project) -> None:
    """The supervisor is its container's PID 1: a worker cannot outlive it (the kernel kills the namespace
    with its init), so no PR_SET_PDEATHSIG, and no ctypes loaded for it before the first fork."""

    async def main() -> None:
        manager = PoolManager(load_project(project.root), StateLocation(project.state), idle_seconds=60)
        await manager.start()
        try:
            first = await call(manager, "slow", {})
            assert first.cold_start and first.outcome.ok, first.outcome
            # Run by a forked worker of the supervisor (PID 1), which did not load ctypes for it.
            assert first.outcome.result is not None and first.outcome.result["ppid"] == 1
            assert first.outcome.result["ctypes"] is False
        finally:
            await manager.close(timeout=30)

    asyncio.run(asyncio.wait_for(main(), timeout=180))
