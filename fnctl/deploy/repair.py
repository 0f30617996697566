"""Repairs, with the lock held: what a dead process left (`recover`: interrupted revisions, unrouted or
unready instances, containers the store does not know) and drift of a serving revision (`heal`: broken
instances replaced, a removed image rebuilt), each audited."""

from __future__ import annotations

import os
from collections.abc import Sequence

from fnctl.deploy.desired import DeploySpec
from fnctl.deploy.executor import Context, deploy, remove_row, start_checked
from fnctl.deploy.live import unknown_containers
from fnctl.engine import dockerio, images, instances
from fnctl.engine.sandbox import labels
from fnctl.errors import FnctlError
from fnctl.state.revisions import InstanceState, Revision, RevisionStatus


class ImageNotReproducible(FnctlError):
    """A removed revision image rebuilds under another tag: the base image or fnctl's runtime changed since."""


def recover(ctx: Context, orphans: Sequence[str] | None = None) -> list[str]:
    """Finish what a dead process left: fail pending revisions, remove instances nothing routes to, kill
    containers the store does not know (`orphans`, when the caller has just listed them). Returns what was
    done, in words; doing anything is audited."""
    done: list[str] = []
    store = ctx.store
    for revision in store.revisions():
        if revision.status is RevisionStatus.PENDING:
            store.set_revision_status(
                revision.function,
                revision.number,
                RevisionStatus.FAILED,
                "interrupted: the deploying process stopped before it finished",
            )
            done.append(f"{revision.function} revision {revision.number}: marked failed (interrupted)")
    routes = store.routes()
    for row in store.instances():
        # A revision in the table at 0% is kept warm (a preview, or the old one during scaleDownDelay).
        routed = row.revision in routes.get(row.function, {})
        if not routed or row.state not in (InstanceState.READY, InstanceState.PAUSED):
            remove_row(ctx, row)
            done.append(f"{row.function}: removed instance {row.id} (revision {row.revision}, {row.state.value})")
    done += _remove_orphans(ctx, orphans)
    if done:
        ctx.audit(
            "recover",
            "",
            "ok",
            "; ".join(done)[:4000],
        )
    return done


def _remove_orphans(ctx: Context, orphans: Sequence[str] | None) -> list[str]:
    if orphans is not None and not orphans:  # the caller has just listed none: no second engine call
        return []
    listed = dockerio.list_containers(labels(ctx.project, "", store=ctx.store.id))
    doomed = set(orphans if orphans is not None else unknown_containers(listed, ctx.store.instances()))
    done = []
    for container in listed:
        if container.id in doomed:
            dockerio.kill(container.id)
            _remove_socket_dir(container.labels.get("io.fnctl.socket-dir", ""))
            done.append(f"removed orphan container {container.name}")
    return done


def _remove_socket_dir(path: str) -> None:
    """An orphan's socket directory, named by its label: removed only where fnctl creates them."""
    if path and os.path.dirname(os.path.normpath(path)) == str(instances.runtime_root()):
        instances.remove_socket_dir(path)


def heal(
    ctx: Context,
    spec: DeploySpec,
    revision: Revision,
    secret_values: dict[str, str],
    broken: set[str],
    image_removed: bool,
) -> Revision | None:
    """Bring a serving revision back to its instance count: replace the `broken` instances (dead, missing
    or altered outside fnctl) and rebuild a removed image (same content, same tag). Audited either way.

    A removed image that no longer rebuilds identically cannot bring the revision back (revisions are
    immutable), so the same spec is deployed as a new revision instead, which is returned.
    """
    try:
        started = _heal(ctx, spec, revision, secret_values, broken, image_removed)
    except ImageNotReproducible as exc:
        ctx.progress(f"{spec.name}: {exc.message}; deploying the same spec as a new revision")
        return deploy(ctx, spec, secret_values)
    except FnctlError as exc:
        ctx.audit("heal", spec.name, "failed", f"revision {revision.number}: {exc.message}")
        raise
    ctx.audit(
        "heal",
        spec.name,
        "ok",
        f"revision {revision.number}: replaced {len(broken)}, started {started}",
    )
    return None


def _heal(
    ctx: Context,
    spec: DeploySpec,
    revision: Revision,
    secret_values: dict[str, str],
    broken: set[str],
    image_removed: bool,
) -> int:
    function = spec.function
    for row in ctx.store.instances(function.name):
        if row.id in broken:
            ctx.progress(f"{function.name}: replacing instance {row.id}")
            remove_row(ctx, row)
    if image_removed:
        ctx.progress(f"{function.name}: image {revision.image} was removed; rebuilding it")
        rebuilt = images.ensure_image(
            ctx.project, function.name, spec.source, ctx.base_image, ctx.progress, runtime_name=function.runtime
        )
        if rebuilt.tag != revision.image:
            raise ImageNotReproducible(
                f"the image of revision {revision.number} rebuilds as {rebuilt.tag}, not "
                f"{revision.image} (the base image or fnctl's runtime changed)"
            )
    running = [r for r in ctx.store.instances(function.name) if r.revision == revision.number]
    missing = max(function.scaling.min_instances - len(running), 0)
    if missing:
        start_checked(ctx, function, revision.number, revision.image, secret_values, missing)
    return missing
