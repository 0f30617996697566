"""Carrying out deploy steps against the engine, recording each in the store before acting on it, so that
whoever holds the lock next can finish or clean up after a process that died mid-way (`repair.recover`).

Invariant: the routing table only ever points at revisions whose instances passed their checks; traffic
moves in one transaction, and old instances stop only after it has moved.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnctl.deploy import pickup, swarmdeploy
from fnctl.deploy.desired import DeploySpec
from fnctl.engine import dockerio, images, instances
from fnctl.engine.sandbox import labels
from fnctl.errors import FnctlError
from fnctl.gitops.commit import Commit
from fnctl.manifest.model import NO_EXPECTATION, Function, HealthCheck
from fnctl.manifest.project import Project, SwarmSettings
from fnctl.manifest.schemas import instance_error
from fnctl.state.revisions import InstanceRow, InstanceState, Revision, RevisionStatus
from fnctl.state.store import Store

Progress = Callable[[str], None]


def checkpoint(step: str) -> None:
    """Test hook: `FNCTL_TEST_CRASH_AT=<step>` makes the process SIGKILL itself right after `step`.

    Crash safety must hold between any two steps, and a signal sent from outside cannot aim at one; this is
    the only way the crash tests (tests/deploy/test_crash.py) can stop `fnctl apply` exactly there. Unset, it costs
    one environment lookup per step.
    """
    if os.environ.get("FNCTL_TEST_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


class DeployFailed(FnctlError):
    """A new revision failed to build, start or pass its checks; traffic stayed where it was."""


@dataclass(frozen=True)
class Context:
    store: Store
    project: str
    base_image: str
    actor: str
    command: str
    git: Commit | None  # the commit of the manifests being deployed
    progress: Progress
    # engine = "swarm": a revision's instances are a Swarm service (fnctl.deploy.swarmdeploy), else containers
    # on the local engine. The executor's two engine points, `start_checked` and `remove_row`, switch on it.
    swarm: SwarmSettings | None = None
    root: Path | None = None  # the project's directory: where a rollout's checks read the function's secrets

    def audit(self, action: str, target: str, outcome: str, detail: str | None = None) -> None:
        """One audit record of this command's, with its actor and commit."""
        self.store.audit(
            actor=self.actor,
            command=self.command,
            action=action,
            target=target,
            outcome=outcome,
            **self.git_fields,
            detail=detail,
        )

    @property
    def git_fields(self) -> dict[str, str | None]:
        """The commit's sha, author and subject, as the store's audit and revision columns want them."""
        git = self.git
        return {
            "git_commit": git.sha if git else None,
            "git_author": git.author if git else None,
            "git_subject": git.subject if git else None,
        }


def engine_settings(project: Project) -> SwarmSettings | None:
    """The Swarm settings a Context carries when the project's engine is Swarm, else None (the local engine)."""
    return project.swarm if project.engine == "swarm" else None


def deploy(ctx: Context, spec: DeploySpec, secret_values: dict[str, str]) -> Revision:
    """Build, create the revision, start its instances, check them, switch 100% of traffic, stop the old."""
    number = prepare(ctx, spec, secret_values)
    return go_live(ctx, spec.function, number)


def prepare(ctx: Context, spec: DeploySpec, secret_values: dict[str, str]) -> int:
    """Build, create the revision, start its instances and check them; no traffic reaches it yet."""
    store, function = ctx.store, spec.function
    number = store.next_revision_number(function.name)
    with store.transaction():
        git = ctx.git_fields
        store.add_revision(
            Revision(
                function.name,
                number,
                spec.spec_hash,
                spec.spec,
                "",
                git["git_commit"],
                git["git_author"],
                time.time(),
                ctx.actor,
                RevisionStatus.PENDING,
                None,
                git["git_subject"],
            )
        )
    checkpoint("revision-recorded")
    try:
        ctx.progress(f"{function.name}: building image for revision {number}")
        image = images.ensure_image(
            ctx.project,
            function.name,
            spec.source,
            ctx.base_image,
            lambda line: ctx.progress(f"{function.name}: {line}"),
            runtime_name=function.runtime,
        )
        store.set_revision_image(function.name, number, image.tag)
        checkpoint("image-built")
        start_checked(ctx, function, number, image.tag, secret_values, max(1, function.scaling.min_instances))
    except FnctlError as exc:
        _fail(ctx, function.name, number, exc)
        live = any(weight > 0 for weight in store.routes().get(function.name, {}).values())
        where = "traffic stays on the previous revision" if live else f"{function.name} has no live revision"
        raise DeployFailed(
            f"{function.name}: revision {number} failed: {exc.message}; {where}", detail=exc.detail
        ) from None
    return number


def go_live(ctx: Context, function: Function, number: int, also: Callable[[], None] = lambda: None) -> Revision:
    """Switch 100% of traffic to a prepared revision at once (with the writes `also` makes, in the same
    transaction), then stop the others."""
    switch(ctx, function.name, {number: 100}, f"deployed revision {number}", also=also)
    checkpoint("route-switched")
    stop_other_revisions(ctx, function.name, keep={number})
    if function.scaling.min_instances == 0:  # scale to zero: the checked instance is not kept
        stop_other_revisions(ctx, function.name, keep=set())
    revision = ctx.store.revision(function.name, number)
    assert revision is not None
    return revision


def _fail(ctx: Context, name: str, number: int, exc: FnctlError) -> None:
    for row in ctx.store.instances(name):
        if row.revision == number:
            remove_row(ctx, row)
    reason = exc.message + (f"\n{exc.detail}" if exc.detail else "")
    with ctx.store.transaction():
        ctx.store.set_revision_status(name, number, RevisionStatus.FAILED, reason[:4000])
        ctx.audit("deploy", name, "failed", f"revision {number}: {exc.message}")


def start_checked(
    ctx: Context, function: Function, revision: int, image: str, secret_values: dict[str, str], count: int
) -> None:
    """Start `count` instances and health-check each; on any failure the ones started here are removed
    (so nothing unchecked is left behind for traffic to reach) and the error propagates."""
    if ctx.swarm is not None:
        swarmdeploy.start_checked(
            ctx.store,
            ctx.swarm,
            ctx.project,
            function,
            revision,
            image,
            secret_values,
            count,
            progress=ctx.progress,
            health_check=health_check,
        )
        checkpoint("health-checked")
        return
    started: list[instances.Instance] = []
    try:
        started = start_instances(ctx, function, revision, image, secret_values, count)
        ctx.progress(f"{function.name}: health-checking revision {revision}")
        for instance in started:
            health_check(instance)
        checkpoint("health-checked")
    except FnctlError:
        fresh = {instance.id for instance in started}
        for row in ctx.store.instances(function.name):
            if row.id in fresh:
                remove_row(ctx, row)
        raise
    finally:
        for instance in started:
            instance.transport.close()


def start_instances(
    ctx: Context, function: Function, revision: int, image: str, secret_values: dict[str, str], count: int
) -> list[instances.Instance]:
    """Start `count` instances, each recorded before its container exists; a failure removes the one
    being started and propagates (those already started stay, for the caller to keep or remove)."""
    started: list[instances.Instance] = []
    for _ in range(count):
        instance_id = instances.new_instance_id()
        ctx.progress(f"{function.name}: starting instance {instance_id} of revision {revision}")
        # Recorded first: a crash from here on leaves a row that `recover` cleans up by label.
        ctx.store.add_instance(
            InstanceRow(
                instance_id,
                function.name,
                revision,
                None,
                str(instances.runtime_root() / instance_id),
                InstanceState.STARTING,
                time.time(),
            )
        )
        checkpoint("instance-recorded")
        try:
            instance = instances.start(
                function,
                image=image,
                revision=str(revision),
                secret_values=secret_values,
                labels=labels(ctx.project, function.name, revision=str(revision), store=ctx.store.id),
                instance_id=instance_id,
            )
        except BaseException:
            ctx.store.remove_instance(instance_id)
            raise
        checkpoint("container-started")
        ctx.store.update_instance(instance_id, state=InstanceState.READY, container_id=instance.container_id)
        started.append(instance)
    return started


def health_check(instance: instances.Instance) -> None:
    """Each `healthCheck` invocation must succeed and match `expect`, or else the `returns` schema."""
    try:
        problems = check_problems(instance, instance.function.health_checks, "healthCheck")
    finally:
        instance.transport.close()
    if problems:
        raise FnctlError(problems[0].message, detail=problems[0].detail)


def check_problems(
    instance: instances.Instance, checks: Sequence[HealthCheck], name: str = "check"
) -> list[FnctlError]:
    """Run `checks` on `instance` in order, up to the first that fails: its problem (or none)."""
    function = instance.function
    for index, check in enumerate(checks):
        outcome = instances.invoke(instance, check.event)
        where = f"{name}[{index}]"
        if not outcome.ok:
            return [
                FnctlError(
                    f"{where} failed ({outcome.failure.value if outcome.failure else 'error'}): {outcome.message}",
                    detail=(outcome.traceback + outcome.logs).strip() or None,
                )
            ]
        if check.expect is not NO_EXPECTATION and outcome.result != check.expect:
            return [
                FnctlError(
                    f"{where} returned an unexpected result",
                    detail=f"expected: {check.expect!r}\n     got: {outcome.result!r}",
                )
            ]
        problem = returns_problem(function, outcome.result)
        if problem:
            return [FnctlError(f"{where}: the result does not match `returns`: {problem}")]
    return []


def returns_problem(function: Function, result: Any) -> str | None:
    if function.returns is None:
        return None
    error = instance_error(function.returns, result)  # jsonschema, imported only when there is a `returns`
    return None if error is None else f"{'/'.join(map(str, error[0])) or '(result)'}: {error[1]}"


def switch(
    ctx: Context, name: str, weights: dict[int, int], what: str, also: Callable[[], None] = lambda: None
) -> None:
    """One atomic change of the routing table, audited in the same transaction (as are the writes `also`
    makes, which must land together with it)."""
    with ctx.store.transaction():
        also()
        for revision, weight in weights.items():
            current = ctx.store.revision(name, revision)
            if weight > 0 and current is not None and current.status is RevisionStatus.PENDING:
                ctx.store.set_revision_status(name, revision, RevisionStatus.READY, None)
        ctx.store.set_route(name, weights)
        ctx.audit(
            "route",
            name,
            "ok",
            f"{what}: " + ", ".join(f"r{r}={w}%" for r, w in weights.items()),
        )
    ctx.progress(f"{name}: traffic → " + ", ".join(f"revision {r}: {w}%" for r, w in weights.items()))


def stop_other_revisions(ctx: Context, name: str, keep: set[int]) -> None:
    rows = [row for row in ctx.store.instances(name) if row.revision not in keep]
    if rows:  # draining before a running gateway routes by the switch would refuse requests it sent there
        pickup.wait_for_gateway(ctx.store)
    for row in rows:
        if row.revision not in keep:
            ctx.progress(f"{name}: draining instance {row.id} of revision {row.revision}")
            remove_row(ctx, row, drain=True)
            checkpoint("old-instance-stopped")


def remove_row(ctx: Context, row: InstanceRow, *, drain: bool = False) -> None:
    if ctx.swarm is not None:  # the revision's service goes (Swarm drains its tasks), with all its slots' rows
        swarmdeploy.remove(ctx.store, ctx.swarm, row)
        return
    ctx.store.update_instance(row.id, state=InstanceState.STOPPING)
    drained = False
    if drain and row.container_id:
        transport = instances.host_transport(row.socket_dir, row.container_id)
        try:
            transport.connect(timeout=1.0)
            transport.drain(timeout=30.0)
            drained = True
        except FnctlError:
            pass  # already gone or unresponsive: killed below either way
        finally:
            transport.close()
    if drained and row.container_id:
        # A drained runtime exits by itself with code 0, which tells a gateway that a request it had just
        # sent never ran and may be retried; killing it at once would look like a crash (exit 137).
        dockerio.stop(row.container_id, timeout=5)
    # A row without its container ID (its start was interrupted) finds the container by label.
    doomed = (
        [row.container_id]
        if row.container_id
        else [c.id for c in dockerio.list_containers({"io.fnctl.instance": row.id})]
    )
    for container_id in doomed:
        dockerio.kill(container_id)
    instances.remove_socket_dir(row.socket_dir)
    ctx.store.remove_instance(row.id)


def delete(ctx: Context, name: str) -> None:
    # Out of the routing table first, and seen so by a running gateway, then the instances stop: a gateway
    # that saw them go while the function was still routed would start replacements (issue: they then ran
    # unrouted, unseen by `status`). A crash in between leaves unrouted instances, which `recover` removes.
    with ctx.store.transaction():
        ctx.store.delete_route(name)
        ctx.audit("delete", name, "ok")
    pickup.wait_for_gateway(ctx.store)
    for row in ctx.store.instances(name):
        remove_row(ctx, row, drain=True)
    ctx.progress(f"{name}: deleted (its revisions stay in the history)")
