"""What an apply publishes besides revisions: the manifests' triggers, views, policies and collections as the
gateway reads them from the store (`publish_resources`), and the collections' tables in the data file
(`sync_collections`), never dropping one that holds documents without --prune --force."""

from __future__ import annotations

from typing import Any

from fnctl.commands.deployreport import FunctionOutcome
from fnctl.data.collections import stored_spec
from fnctl.data.plane import DataPlane
from fnctl.deploy import executor
from fnctl.deploy.diff import ChangeKind, CollectionChange, refused_drops
from fnctl.deploy.session import Options
from fnctl.errors import BadInput, FnctlError
from fnctl.manifest.model import DesiredState
from fnctl.state import docstore


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
                ctx.audit(
                    "publish",
                    kind,
                    "ok",
                    ", ".join(sorted(wanted)) or "(none)",
                )
            changed.append(f"{len(wanted)} {kind.lower()}{'s' if len(wanted) != 1 else ''}")
    return changed


def desired_collections(state: DesiredState) -> dict[str, dict[str, Any]]:
    """The manifests' collections as the data store keeps their specs."""
    return {c.name: stored_spec(c) for c in state.collections}


class NonEmptyCollection(BadInput):
    """apply --prune would drop collections that still hold documents, without --force."""


def refuse_drops(collections: list[CollectionChange], options: Options) -> None:
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
    store = docstore.open_at(ctx.store.location)
    try:
        result = DataPlane(store, lambda: ()).sync_collections(state.collections, options.prune, options.force)
    except FnctlError as exc:
        ctx.audit("collections", "(collections)", "failed", exc.message)
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
            ctx.audit(f"collection-{action}", name, "ok", message)
            outcomes.append(FunctionOutcome(name, f"{action} collection", True, None, message, kind="collection"))
    return outcomes
