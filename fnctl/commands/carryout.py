"""Each function's change carried out by an apply: a new revision deployed and rolled out by its strategy,
a deletion (with --prune), drift healed, or (a preview) a revision started beside the live one at 0% of
traffic; and the refusal to redeploy a spec that was rolled back (quarantined) without --force."""

from __future__ import annotations

from fnctl.commands.deployreport import FunctionOutcome
from fnctl.deploy import executor, repair, rolloutdriver
from fnctl.deploy.desired import DeploySpec
from fnctl.deploy.diff import Change, ChangeKind, DriftKind, LiveState
from fnctl.deploy.session import Options
from fnctl.errors import FnctlError
from fnctl.manifest.model import Strategy
from fnctl.state.revisions import RevisionStatus


class Quarantined(FnctlError):
    """The manifests ask for a spec that was rolled back: deploying it again would undo the rollback."""


def refuse_quarantined(changes: list[Change], live: LiveState, force: bool) -> None:
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


def carry_out(
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
            redeployed = repair.heal(ctx, spec, live, secret_values[name], broken, image_removed)
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


def preview(
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
