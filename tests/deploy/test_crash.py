"""Crash safety: `fnctl apply` killed with SIGKILL between any two deploy steps leaves a state that the next
apply completes or cleans up, and a lock holder killed the same way never blocks anyone.

The kill is aimed with the executor's test hook `FNCTL_TEST_CRASH_AT=<step>`: the process sends itself
SIGKILL right after that step, as a power cut or the OOM killer would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from deploy_helpers import Project, cleanup, make_project
from pgserver import StateFactory

from fnctl.state.auditlog import AuditFilter, audit_records

pytestmark = pytest.mark.docker

# Every step after which the executor records or changes something, in the order a deploy takes them.
# For each, what the next apply must find and repair (as it reports it), {old} and {new} being revisions.
STEPS = {
    "revision-recorded": ["revision {new}: marked failed (interrupted)"],
    "image-built": ["revision {new}: marked failed (interrupted)"],
    "instance-recorded": ["revision {new}: marked failed (interrupted)", "(revision {new}, starting)"],
    "container-started": ["revision {new}: marked failed (interrupted)", "(revision {new}, starting)"],
    "health-checked": ["revision {new}: marked failed (interrupted)", "(revision {new}, ready)"],
    "route-switched": ["(revision {old}, ready)"],  # the switch happened: only the old instance is left over
    "old-instance-stopped": [],  # the deploy had nothing left to do
}


class Deployment:
    """One project for the whole module, its function alternating between two code versions so that
    every crash interrupts a real update while only two images are ever built."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.version = "one"

    def next_version(self) -> str:
        self.version = "two" if self.version == "one" else "one"
        self.project.function("hello", version=self.version)
        return self.version


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    base_image: str,
    project_states: StateFactory,
) -> Iterator[Deployment]:
    project = make_project(tmp_path_factory.mktemp("crash") / "project", docker_client, base_image, project_states)
    project.function("hello", version="one")
    try:
        project.ok("apply")
        yield Deployment(project)
    finally:
        cleanup(project)


@pytest.mark.parametrize("step", STEPS)
def test_apply_killed_at_step_is_completed_by_the_next_apply(deployment: Deployment, step: str) -> None:
    project = deployment.project
    before = project.live_revision("hello")
    version = deployment.next_version()

    crashed = project.fnctl("apply", env={"FNCTL_TEST_CRASH_AT": step})
    assert crashed.code == -signal.SIGKILL, f"apply was not killed at {step}:\n{crashed.text}"
    # Routing never points at a revision without ready instances, even before anyone repairs anything.
    routed = project.live_revision("hello")
    with project.store() as store:
        rows = [r for r in store.instances("hello") if r.revision == routed]
        revision = store.revision("hello", routed)
    assert rows and all(r.state.value == "ready" for r in rows), f"routed to r{routed} without ready instances"
    assert revision is not None and revision.status.value == "ready"
    assert routed in (before, before + 1)

    repaired = project.ok("apply")
    for repair in STEPS[step]:
        assert repair.format(old=before, new=before + 1) in repaired.err, repaired.text
    assert ("recovered:" in repaired.err) == bool(STEPS[step])
    assert project.invoke("hello")["version"] == version, repaired.text
    project.assert_consistent()
    with project.store() as store:
        revisions = store.revisions("hello")
        recovered = [e for e in audit_records(store, AuditFilter(), limit=5) if e.action == "recover"]
    if routed == before:  # the crash came before the switch: the interrupted revision is failed, with why
        interrupted = revisions[before]  # numbering starts at 1: this is revision before + 1
        assert interrupted.status.value == "failed" and "interrupted" in (interrupted.reason or "")
        assert recovered and recovered[0].outcome == "ok"
    assert project.fnctl("diff").code == 0


def test_rollback_killed_before_the_switch_can_be_run_again(deployment: Deployment) -> None:
    project = deployment.project
    current = project.live_revision("hello")
    crashed = project.fnctl("rollback", "hello", env={"FNCTL_TEST_CRASH_AT": "health-checked"})
    assert crashed.code == -signal.SIGKILL, crashed.text
    assert project.live_revision("hello") == current and project.invoke("hello")["version"] == deployment.version

    rolled = project.ok("rollback", "hello")
    assert f"rolled back from revision {current}" in rolled.out
    with project.store() as store:
        revision = store.revision("hello", current)
        assert revision is not None and revision.status.value == "quarantined"
        (repair,) = [
            e
            for e in audit_records(store, AuditFilter(target=""), limit=3)
            if e.command == "rollback" and e.action == "recover"
        ]
    assert "removed instance" in (repair.detail or ""), "the half-started instance was not cleaned up"
    project.assert_consistent()
    # The manifests follow the rollback (as a revert commit would), so that later applies have nothing to do.
    deployment.next_version()
    assert project.invoke("hello")["version"] == deployment.version
    assert project.fnctl("diff").code == 0


def test_first_deploy_killed_before_the_switch_is_retried(deployment: Deployment) -> None:
    project = deployment.project
    project.function("fresh", version=deployment.version)
    crashed = project.fnctl("apply", env={"FNCTL_TEST_CRASH_AT": "health-checked"})
    assert crashed.code == -signal.SIGKILL, crashed.text
    with project.store() as store:
        assert "fresh" not in store.routes()
    assert project.containers("fresh"), "the crash left the new instance running, for apply to clean up"

    project.ok("apply")
    assert project.invoke("fresh")["version"] == deployment.version
    project.assert_consistent()
    project.remove_function("fresh")
    project.ok("apply", "--prune")
    assert project.containers("fresh") == []


def test_lock_holder_killed_with_sigkill_blocks_nobody(deployment: Deployment, tmp_path: Path) -> None:
    project = deployment.project
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\nfrom pathlib import Path\nfrom fnctl.deploy.lock import held\n"
            "from fnctl.state import pgopener\nfrom fnctl.state.location import parse\npgopener.install()\n"
            "with held(parse(sys.argv[1]), 5, 'fnctl apply (to be killed)'):\n"
            "    print('held', flush=True)\n"
            "    deadline = time.monotonic() + 300  # it is killed long before: a leftover never lingers\n"
            "    while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:\n"
            "        time.sleep(0.02)\n",
            project.location.to_arg(),
            str(tmp_path / "never-created"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        waiting = project.fnctl("apply", "--lock-timeout", "0.5")
        assert waiting.code == 1 and f"pid {holder.pid}" in waiting.err
    finally:
        holder.kill()  # SIGKILL: no `finally`, no unlock; the kernel drops the flock with the process
        holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    # The holder's description is still in the lock file, but nothing holds the lock: no wait at all.
    resumed = project.fnctl("apply", "--lock-timeout", "30")
    assert resumed.code == 0, resumed.text
    project.assert_consistent()
