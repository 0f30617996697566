"""The deploy commands end to end: `diff`, `plan`, `apply` (and `sync`'s apply; `rollback` and `delete` are
in fnctl.commands.rollback). Each function's change is carried out by `carryout`, the gateway's resources and
the collections published by `publish`, the outcome reported by `deployreport`.

Each takes the store's lock, repairs what a dead process left (`repair.recover`), then decides purely
(`diff`, `plan`) and acts (`executor`), auditing every change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fnctl.commands.carryout import carry_out, refuse_quarantined
from fnctl.commands.carryout import preview as preview_change
from fnctl.commands.deployreport import ApplyReport, FunctionOutcome, record_deploy
from fnctl.commands.publish import desired_collections, publish_resources, refuse_drops, sync_collections
from fnctl.commands.rollouts import Follower, OnEvent, OnTick, Snapshot
from fnctl.deploy import executor, pickup, repair, rolloutdriver
from fnctl.deploy.desired import DeploySpec
from fnctl.deploy.diff import (
    Change,
    CollectionChange,
    Desired,
    LiveState,
    diff,
    diff_collections,
)
from fnctl.deploy.live import read_live
from fnctl.deploy.plan import live_summary, make_plan, plan_to_json, stale_reasons
from fnctl.deploy.session import Options, Progress, desired_state, session
from fnctl.errors import BadInput
from fnctl.gitops.commit import WorkTree
from fnctl.gitops.gitrepo import work_tree
from fnctl.manifest.model import DesiredState
from fnctl.manifest.project import CONFIG_FILE, Project
from fnctl.state import rolloutstore


def compute_diff(
    project: Project, options: Options, paths: list[Path] | None, progress: Progress = lambda _: None
) -> tuple[list[Change], LiveState, list[CollectionChange]]:
    """`fnctl diff`: read-only, no lock (and no data file created)."""
    changes, live, _, collections = _diff_with_specs(project, options, paths, progress)
    return changes, live, collections


def _diff_with_specs(
    project: Project, options: Options, paths: list[Path] | None, progress: Progress = lambda _: None
) -> tuple[list[Change], LiveState, list[DeploySpec], list[CollectionChange]]:
    with session(project, options, "diff", progress, mutating=False) as ctx:
        specs, _, state = desired_state(project, ctx.store, paths)
        live = read_live(ctx.store, project.name, ctx.swarm)
    return (
        diff([Desired(s.name, s.spec, s.spec_hash) for s in specs], live),
        live,
        specs,
        diff_collections(desired_collections(state), live),
    )


def make_plan_file(project: Project, options: Options, paths: list[Path] | None) -> dict[str, Any]:
    """`fnctl plan -o plan.json`: the plan (with each rollout's timeline) plus what it was made against."""
    changes, live, specs, collections = _diff_with_specs(project, options, paths)
    plan = make_plan(
        project.name,
        changes,
        live,
        prune=options.prune,
        rollouts={s.name: s.function.rollout for s in specs},
        collections=collections,
    )
    document = plan_to_json(plan, live_summary(live))
    document["paths"] = [str(p.resolve()) for p in paths] if paths else None
    return document


def apply(
    project: Project,
    options: Options,
    paths: list[Path] | None,
    progress: Progress,
    plan_file: dict[str, Any] | None = None,
    on_event: OnEvent | None = None,
    on_tick: OnTick | None = None,
) -> ApplyReport:
    """`fnctl apply`: from a git work tree, only a committed state (unless --allow-dirty), recorded as live."""
    tree = work_tree(project.root)

    dirty: list[Path] = []

    def refuse_dirty(specs: list[DeploySpec]) -> None:  # after validation: invalid manifests say more
        if tree is not None:
            dirty.extend(
                _deployed_changes(project, tree, [*(paths or project.manifest_paths), *(s.source for s in specs)])
            )
        if dirty and not options.allow_dirty:
            shown = [os.path.relpath(p, project.root) for p in dirty[:10]]
            more = f"\n  ... and {len(dirty) - 10} more" if len(dirty) > 10 else ""
            raise BadInput(
                "uncommitted changes in what would be deployed:\n  "
                + "\n  ".join(shown)
                + more
                + "\nCommit them (every revision names its commit), or pass --allow-dirty."
            )

    with session(project, options, "apply", progress, source=tree) as ctx:
        started = time.time()
        report = apply_in(ctx, project, options, paths, plan_file, on_event, on_tick, guard=refuse_dirty)
        if tree is not None:
            record_deploy(ctx, report, started, source=str(project.root), ref=None, dirty=bool(dirty))
        return report


def _deployed_changes(project: Project, tree: WorkTree, deployed: list[Path]) -> list[Path]:
    """The uncommitted changes in what a deploy reads (manifests, function sources, fnctl.toml): with them,
    a revision would name a commit that does not hold what runs."""
    bases = [p.resolve() for p in (*deployed, project.root / CONFIG_FILE)]
    return [p for p in tree.dirty if any(p == b or b in p.parents or p in b.parents for b in bases)]


def apply_in(
    ctx: executor.Context,
    project: Project,
    options: Options,
    paths: list[Path] | None,
    plan_file: dict[str, Any] | None = None,
    on_event: OnEvent | None = None,
    on_tick: OnTick | None = None,
    preview: bool = False,
    guard: Callable[[list[DeploySpec]], None] = lambda _: None,
) -> ApplyReport:
    """Apply the manifests with the lock held: recover, diff, plan, carry out, follow the rollouts; or,
    as a `preview`, only deploy changed functions beside the live ones at 0% of traffic. `guard` may refuse
    once the manifests are known to be valid."""
    specs, secret_values, state = desired_state(project, ctx.store, paths)
    guard(specs)
    before = pickup.change_mark(ctx.store)
    live = read_live(ctx.store, project.name, ctx.swarm)
    if plan_file is not None:
        _check_plan(plan_file, project.name, live, specs, state)
    recovered = repair.recover(ctx, live.orphans)
    if recovered:  # the repairs changed the live state: read it again (else one engine listing is enough)
        live = read_live(ctx.store, project.name, ctx.swarm)
    changes = diff([Desired(s.name, s.spec, s.spec_hash) for s in specs], live)
    collections = [] if preview else diff_collections(desired_collections(state), live)
    plan = make_plan(
        project.name,
        changes,
        live,
        prune=options.prune,
        rollouts={s.name: s.function.rollout for s in specs},
        collections=collections,
    )
    refuse_quarantined(changes, live, options.force)
    refuse_drops(collections, options)
    report = ApplyReport(plan, recovered=recovered)
    report.outcomes += sync_collections(ctx, state, collections, options)
    by_name = {s.name: s for s in specs}
    watermark = rolloutstore.last_event_id(ctx.store)
    for change in changes:
        if preview:
            outcome = preview_change(ctx, change, by_name.get(change.function), secret_values, live)
        else:
            outcome = carry_out(ctx, change, by_name.get(change.function), secret_values, options)
        if outcome is not None:
            report.outcomes.append(outcome)
    if preview:  # a preview changes no trigger, view or policy, and has no rollout to follow
        _routable(ctx, before)
        return report
    published = publish_resources(ctx, state)
    if published:
        report.outcomes.append(FunctionOutcome("(gateway)", "publish", True, None, "published " + ", ".join(published)))
    _routable(ctx, before)
    report.rollouts = _follow_rollouts(ctx, project, options, set(by_name), watermark, on_event, on_tick)
    return report


def _routable(ctx: executor.Context, before: int) -> None:
    """When this apply changed the store (new functions, revisions, triggers...), wait (bounded) until a
    running gateway routes by it: a request sent once apply returns must not find a 404 or an old route."""
    if pickup.change_mark(ctx.store) > before:
        pickup.wait_for_gateway(ctx.store)


def _follow_rollouts(
    ctx: executor.Context,
    project: Project,
    options: Options,
    names: set[str],
    watermark: int,
    on_event: OnEvent | None,
    on_tick: OnTick | None,
) -> list[Snapshot]:
    """The manifests' rollouts, driven by this process (it holds the lock) until they settle; with
    --no-wait, advanced as far as they go without waiting. Their events after `watermark` are reported."""
    ids = [row.id for row in rolloutdriver.unfinished(ctx.store) if row.function in names]
    if not ids:
        return []
    follower = Follower(project, options, ids, held=ctx, seen={i: watermark for i in ids})
    if on_event is not None:
        follower.on_event = on_event
    if on_tick is not None:
        follower.on_tick = on_tick
    return follower.run(options.timeout, settle=options.wait)


def _check_plan(
    plan_file: dict[str, Any], project: str, live: LiveState, specs: list[DeploySpec], state: DesiredState
) -> None:
    if plan_file.get("project") != project:
        raise BadInput(f"the plan was made for project {plan_file.get('project')!r}, not {project!r}")
    reasons = stale_reasons(plan_file.get("live", {}), live_summary(live))
    planned = {c["collection"]: c["change"] for c in plan_file.get("collections", [])}  # absent: none
    now = {c.name: c.kind.value for c in diff_collections(desired_collections(state), live)}
    if planned != now:
        reasons.append("the collections to create, update or drop changed since the plan was made")
    wanted = {s.name: s.spec_hash for s in specs}
    if wanted != plan_file.get("desired", {}):
        changed = sorted(
            n
            for n in set(wanted) | set(plan_file.get("desired", {}))
            if wanted.get(n) != plan_file.get("desired", {}).get(n)
        )
        reasons.append("the manifests changed since the plan was made: " + ", ".join(changed))
    if reasons:
        raise BadInput("the plan is stale; make a new one with `fnctl plan`:\n  " + "\n  ".join(reasons))
