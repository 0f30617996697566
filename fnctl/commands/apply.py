"""The deploy commands end to end: `diff`, `plan`, `apply` (and `sync`'s apply; `rollback` and `delete` are
in fnctl.commands.rollback).

Each takes the store's lock, repairs what a dead process left (`executor.recover`), then decides purely
(`diff`, `plan`) and acts (`executor`), auditing every change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fnctl.commands.rollouts import Follower, OnEvent, OnTick, Snapshot
from fnctl.data.collections import stored_spec
from fnctl.data.plane import DataPlane
from fnctl.deploy import executor, pickup, rolloutdriver
from fnctl.deploy.desired import DeploySpec
from fnctl.deploy.diff import (
    Change,
    ChangeKind,
    CollectionChange,
    Desired,
    DriftKind,
    LiveState,
    diff,
    diff_collections,
    refused_drops,
)
from fnctl.deploy.live import read_live
from fnctl.deploy.plan import Plan, live_summary, make_plan, plan_to_json, stale_reasons
from fnctl.deploy.session import Options, Progress, desired_state, session
from fnctl.errors import BadInput, ExitCode, FnctlError
from fnctl.gitops import deploys
from fnctl.gitops.gitrepo import WorkTree, work_tree
from fnctl.manifest.model import DesiredState, Strategy
from fnctl.manifest.project import CONFIG_FILE, Project
from fnctl.state import docstore, rolloutstore
from fnctl.state.store import RevisionStatus


@dataclass
class FunctionOutcome:
    function: str
    action: str
    ok: bool
    revision: int | None = None
    message: str = ""
    detail: str | None = None
    kind: str = "function"  # or "collection" (then `function` holds the collection's name)


@dataclass
class ApplyReport:
    plan: Plan
    outcomes: list[FunctionOutcome] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    rollouts: list[Snapshot] = field(default_factory=list)  # as they settled (or stood, with --no-wait)

    @property
    def failed(self) -> bool:
        return any(not o.ok for o in self.outcomes)

    @property
    def exit_code(self) -> ExitCode:
        """Failed beats rolled back beats waiting at a gate (the exit codes of docs/ci.md)."""
        codes = {s.exit_code for s in self.rollouts}
        if self.failed:
            return ExitCode.FAILED
        return next((c for c in (ExitCode.ROLLED_BACK, ExitCode.WAITING) if c in codes), ExitCode.OK)


def publish_resources(ctx: executor.Context, state: DesiredState) -> list[str]:
    """Make the store's triggers, views, policies and collections those of the manifests (the gateway serves them);
    returns what changed, in words. Unchanged kinds are not rewritten, so a no-op apply writes nothing."""
    changed = []
    for kind, items in (
        ("Trigger", state.triggers),
        ("View", state.views),
        ("Policy", state.policies),
        ("Collection", state.collections),
    ):
        # Stored as the manifest's spec, as written: its shape is the manifest format's (schemas/, apiVersion
        # fnctl/v1), never a Python value's, and the gateway reads it as such.
        wanted = {item.name: item.document.data["spec"] for item in items if item.document is not None}
        if ctx.store.resources(kind) != wanted:
            with ctx.store.transaction():
                ctx.store.set_resources(kind, wanted)
                ctx.store.audit(
                    actor=ctx.actor,
                    command=ctx.command,
                    action="publish",
                    target=kind,
                    outcome="ok",
                    **ctx.git_fields,
                    detail=", ".join(sorted(wanted)) or "(none)",
                )
            changed.append(f"{len(wanted)} {kind.lower()}{'s' if len(wanted) != 1 else ''}")
    return changed


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
        live = read_live(ctx.store, project.name)
    return (
        diff([Desired(s.name, s.spec, s.spec_hash) for s in specs], live),
        live,
        specs,
        diff_collections(desired_collections(state), live),
    )


def desired_collections(state: DesiredState) -> dict[str, dict[str, Any]]:
    """The manifests' collections as the data store keeps their specs."""
    return {c.name: stored_spec(c) for c in state.collections}


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
    live = read_live(ctx.store, project.name)
    if plan_file is not None:
        _check_plan(plan_file, project.name, live, specs, state)
    recovered = executor.recover(ctx, live.orphans)
    if recovered:  # the repairs changed the live state: read it again (else one engine listing is enough)
        live = read_live(ctx.store, project.name)
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
    _refuse_quarantined(changes, live, options.force)
    _refuse_drops(collections, options)
    report = ApplyReport(plan, recovered=recovered)
    report.outcomes += sync_collections(ctx, state, collections, options)
    by_name = {s.name: s for s in specs}
    watermark = rolloutstore.last_event_id(ctx.store)
    for change in changes:
        if preview:
            outcome = _preview(ctx, change, by_name.get(change.function), secret_values, live)
        else:
            outcome = _carry_out(ctx, change, by_name.get(change.function), secret_values, options)
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


class NonEmptyCollection(BadInput):
    """apply --prune would drop collections that still hold documents, without --force."""


def _refuse_drops(collections: list[CollectionChange], options: Options) -> None:
    refused = refused_drops(collections, prune=options.prune, force=options.force)
    if refused:
        raise NonEmptyCollection(
            "refusing to drop collections that still hold documents: "
            + ", ".join(f"{c.name} ({c.documents} document{'s' if c.documents != 1 else ''})" for c in refused)
            + "\nData is never dropped silently: export it first (`fnctl data export NAME`), or pass "
            "--prune --force to drop the collections with their documents."
        )


def sync_collections(
    ctx: executor.Context, state: DesiredState, collections: list[CollectionChange], options: Options
) -> list[FunctionOutcome]:
    """Create, update and (with --prune) drop the data store's collections, in one transaction of the data
    file, each audited. Nothing to do (and no data file created) when no collection changes."""
    acting = [
        c
        for c in collections
        if c.kind in (ChangeKind.CREATE, ChangeKind.UPDATE) or (c.kind is ChangeKind.DELETE and options.prune)
    ]
    if not acting:
        return []
    store = docstore.connect(docstore.data_path(ctx.store.path))
    try:
        result = DataPlane(store, lambda: ()).sync_collections(state.collections, options.prune, options.force)
    except FnctlError as exc:
        ctx.store.audit(
            actor=ctx.actor,
            command=ctx.command,
            action="collections",
            target="(collections)",
            outcome="failed",
            **ctx.git_fields,
            detail=exc.message,
        )
        return [FunctionOutcome("(collections)", "sync", False, None, exc.message, kind="collection")]
    finally:
        store.close()
    by_name = {c.name: c for c in collections}
    outcomes = []
    for action, names in (("create", result.created), ("update", result.updated), ("drop", result.dropped)):
        for name in names:
            change = by_name.get(name)
            if action == "update" and change is not None:
                message = "updated " + ", ".join(sorted({f.path.split(".")[0] for f in change.fields}))
            elif action == "drop":
                held = change.documents if change is not None else 0
                message = f"dropped with its {held} document{'s' if held != 1 else ''}" if held else "dropped (empty)"
            else:
                message = "created"
            ctx.store.audit(
                actor=ctx.actor,
                command=ctx.command,
                action=f"collection-{action}",
                target=name,
                outcome="ok",
                **ctx.git_fields,
                detail=message,
            )
            outcomes.append(FunctionOutcome(name, f"{action} collection", True, None, message, kind="collection"))
    return outcomes


def _routable(ctx: executor.Context, before: int) -> None:
    """When this apply changed the store (new functions, revisions, triggers...), wait (bounded) until a
    running gateway routes by it: a request sent once apply returns must not find a 404 or an old route."""
    if pickup.change_mark(ctx.store) > before:
        pickup.wait_for_gateway(ctx.store)


_OUTCOMES = {
    ExitCode.OK: "ok",
    ExitCode.FAILED: "failed",
    ExitCode.ROLLED_BACK: "rolled-back",
    ExitCode.WAITING: "waiting",
}


def record_deploy(
    ctx: executor.Context,
    report: ApplyReport,
    started: float,
    *,
    source: str,
    ref: str | None,
    dirty: bool,
    preview: bool = False,
) -> None:
    """Record which commit this apply or sync made live (what the next sync compares with)."""
    if ctx.git is not None:
        deploys.record(
            ctx.store,
            at=started,
            actor=ctx.actor,
            command=ctx.command,
            source=source,
            ref=ref,
            commit=ctx.git,
            dirty=dirty,
            preview=preview,
            outcome=_OUTCOMES.get(report.exit_code, "failed"),
        )


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


class Quarantined(FnctlError):
    """The manifests ask for a spec that was rolled back: deploying it again would undo the rollback."""


def _refuse_quarantined(changes: list[Change], live: LiveState, force: bool) -> None:
    refused = [
        f"{c.function}: this spec is quarantined ({live.quarantined[c.spec_hash]})"
        for c in changes
        if c.kind in (ChangeKind.CREATE, ChangeKind.UPDATE) and c.spec_hash in live.quarantined
    ]
    if refused and not force:
        raise Quarantined(
            "refusing to redeploy a rolled-back revision:\n  "
            + "\n  ".join(refused)
            + "\nRevert the commit or push a fix (a changed function deploys normally), "
            "or pass --force to deploy it anyway."
        )


def _carry_out(
    ctx: executor.Context,
    change: Change,
    spec: DeploySpec | None,
    secret_values: dict[str, dict[str, str]],
    options: Options,
) -> FunctionOutcome | None:
    name = change.function
    try:
        if change.kind in (ChangeKind.CREATE, ChangeKind.UPDATE):
            assert spec is not None
            return _deploy(ctx, change, spec, secret_values[name])
        if change.kind is ChangeKind.DELETE:
            if not options.prune:
                return FunctionOutcome(
                    name, "kept", True, change.live_revision, "not in the manifests; --prune deletes it"
                )
            executor.delete(ctx, name)
            return FunctionOutcome(name, "delete", True, change.live_revision, "deleted")
        if change.drift and spec is not None and change.live_revision is not None:
            live = ctx.store.revision(name, change.live_revision)
            assert live is not None
            broken = {d.instance for d in change.drift if d.instance}
            image_removed = any(d.kind is DriftKind.IMAGE_REMOVED for d in change.drift)
            redeployed = executor.heal(ctx, spec, live, secret_values[name], broken, image_removed)
            what = "; ".join(d.detail for d in change.drift)
            if redeployed is not None:
                return FunctionOutcome(
                    name, "heal", True, redeployed.number, f"{what}; redeployed as revision {redeployed.number}"
                )
            return FunctionOutcome(name, "heal", True, live.number, what)
    except FnctlError as exc:
        action = "heal" if change.kind is ChangeKind.UNCHANGED else change.kind.value  # drift was being healed
        return FunctionOutcome(name, action, False, None, exc.message, exc.detail)
    return None


def _preview(
    ctx: executor.Context,
    change: Change,
    spec: DeploySpec | None,
    secret_values: dict[str, dict[str, str]],
    live: LiveState,
) -> FunctionOutcome | None:
    """A changed function deployed beside the live revision at 0% of traffic: only pinned requests reach it
    (`X-Fnctl-Revision`, `fnctl invoke --revision`), until the function's next deploy replaces it."""
    name = change.function
    if change.kind is not ChangeKind.UPDATE or spec is None:
        return (
            None
            if spec is None
            else FunctionOutcome(name, "preview", True, None, "not live yet: nothing to preview beside")
        )
    current = live.functions[name]
    twin = next((n for n, h in current.spec_hashes.items() if h == spec.spec_hash), None)
    if twin is not None:
        return FunctionOutcome(name, "preview", True, twin, f"already previewed as revision {twin}")
    if current.rollout is not None:
        return FunctionOutcome(name, "preview", False, None, "a rollout is under way: preview after it ends")
    try:
        number = executor.prepare(ctx, spec, secret_values[name])
    except FnctlError as exc:
        return FunctionOutcome(name, "preview", False, None, exc.message, exc.detail)
    executor.switch(
        ctx,
        name,
        {**current.weights, number: 0},
        f"preview of revision {number}",
        also=lambda: ctx.store.set_revision_status(name, number, RevisionStatus.PREVIEW, None),
    )
    return FunctionOutcome(
        name,
        "preview",
        True,
        number,
        f"revision {number} takes no traffic; reach it with the header X-Fnctl-Revision: {number}",
    )


def _deploy(ctx: executor.Context, change: Change, spec: DeploySpec, secret_values: dict[str, str]) -> FunctionOutcome:
    """A new revision, rolled out by its strategy over the live one (a first deploy is always immediate)."""
    name, strategy = change.function, spec.function.rollout.strategy
    number = executor.prepare(ctx, spec, secret_values)
    if change.kind is ChangeKind.UPDATE and change.live_revision is not None and strategy is not Strategy.IMMEDIATE:
        row = rolloutdriver.begin(ctx, spec.function, change.live_revision, number)
        rolloutdriver.advance(ctx, row)  # its first steps at once (e.g. the first setWeight), even with --no-wait
        return FunctionOutcome(name, "rollout", True, number, f"revision {number}: {strategy.value} started")
    executor.go_live(
        ctx, spec.function, number, also=lambda: rolloutdriver.retire(ctx, name, f"superseded by revision {number}")
    )
    return FunctionOutcome(name, change.kind.value, True, number, f"revision {number} is live")
