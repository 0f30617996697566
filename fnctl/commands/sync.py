"""`fnctl sync`: deploy a commit of a git repository with the same plan and apply as `fnctl apply`.

The commit is fetched into fnctl's cache (`fnctl.gitops.gitrepo`) and checked out into a work tree of its own. Under
the store's lock, the last deploy decides (`fnctl.gitops.deploys.decide`): nothing to do when the commit is live and
nothing changed since, a refusal when it would roll production back, else the apply. `watch` polls a ref.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from fnctl.commands.apply import apply_in
from fnctl.commands.deployreport import ApplyReport, record_deploy
from fnctl.commands.rollouts import OnEvent, OnTick
from fnctl.deploy.session import Options, Progress, session
from fnctl.errors import BadInput, FnctlError
from fnctl.gitops import deploys
from fnctl.gitops.commit import Commit, WorkTree
from fnctl.gitops.deploys import Decision
from fnctl.gitops.gitrepo import Mirror
from fnctl.manifest.files import find_manifest_files
from fnctl.manifest.project import CONFIG_FILE, Project, inside, project_at


@dataclass(frozen=True)
class SyncOptions:
    repo: str
    ref: str | None = None  # branch, tag or commit; the repository's default branch when None
    path: str | None = None  # the manifests inside the repository; fnctl.toml's, else manifests/
    allow_rewind: bool = False
    preview: bool = False  # deploy changed functions at 0% of traffic, for pinned requests only
    heal: bool = False  # plan even when the commit is live (pull mode's drift check)
    apply: Options = field(default_factory=Options)
    cache: Path | None = None  # fnctl's repository cache; $XDG_CACHE_HOME/fnctl/git when None


@dataclass
class SyncReport:
    repo: str
    commit: Commit
    decision: Decision
    apply: ApplyReport | None = None
    changed: bool = False  # the apply changed the live state (it wrote to the audit log: deploy, heal, route, ...)
    timings: dict[str, float] = field(default_factory=dict)  # phase → seconds (fetch, plan+apply)


class RewindRefused(BadInput):
    """The commit is older than the live one, or not a descendant of it."""


class FailedBefore(FnctlError):
    """Pull mode: the commit's deploy failed and nothing changed since, so it is not tried again by itself."""


def sync(
    options: SyncOptions, progress: Progress, on_event: OnEvent | None = None, on_tick: OnTick | None = None
) -> SyncReport:
    """Deploy the commit `options.ref` names, as the module says; its work tree is kept until the end."""
    started = time.monotonic()
    mirror = Mirror(options.repo, options.cache)
    with mirror.checkout(options.ref) as (tree, commit):
        report = SyncReport(mirror.url, commit, Decision.DEPLOY, timings={"fetch": time.monotonic() - started})
        return _sync_commit(mirror, tree, report, options, progress, on_event, on_tick)


def _sync_commit(
    mirror: Mirror,
    tree: Path,
    report: SyncReport,
    options: SyncOptions,
    progress: Progress,
    on_event: OnEvent | None,
    on_tick: OnTick | None,
) -> SyncReport:
    """The checked-out commit, under the store's lock: decide, then refuse, do nothing, or apply."""
    fetched, commit = time.monotonic(), report.commit
    with _as_the_repository_names_them(tree, mirror.url):
        project, paths = _project(tree, options, mirror.url)
    apply_options = replace(options.apply, prune=options.apply.prune and not options.preview)
    with session(project, apply_options, "sync", progress, source=WorkTree(commit, ())) as ctx:
        last, mark = deploys.last(ctx.store), deploys.audit_mark(ctx.store)
        relation = mirror.relation(last.commit.sha, commit.sha) if last is not None else None
        # A preview takes no traffic: it never rewinds the live commit.
        decision = (
            Decision.DEPLOY
            if options.preview
            else deploys.decide(
                last, commit.sha, relation, deploys.mark_since(ctx.store, last) if last else mark, pulling=options.heal
            )
        )
        if decision is Decision.NOTHING and options.heal:
            decision = Decision.HEAL  # plan anyway; recorded only if it changed anything
        report.decision = decision
        _refuse(decision, options, commit, last)
        if decision is Decision.NOTHING:
            progress(f"commit {commit.sha[:12]} is already live: nothing to do")
            return report
        if decision is not Decision.HEAL:
            verb = "previewing" if options.preview else "deploying"
            progress(f"{verb} commit {commit.sha[:12]} ({commit.author}): {commit.subject}")
        began = time.time()
        with _as_the_repository_names_them(tree, mirror.url):
            report.apply = apply_in(
                ctx, project, apply_options, paths, on_event=on_event, on_tick=on_tick, preview=options.preview
            )
        # Whatever changes the live state is audited: an unchanged mark means the drift check found nothing
        # (a function kept without --prune, or a rollout still at its gate, is no change to record every interval).
        report.changed = deploys.audit_mark(ctx.store) != mark
        if decision is not Decision.HEAL or report.changed:
            record_deploy(
                ctx, report.apply, began, source=mirror.url, ref=options.ref, dirty=False, preview=options.preview
            )
        report.timings["apply"] = time.monotonic() - fetched
        return report


def _refuse(decision: Decision, options: SyncOptions, commit: Commit, last: deploys.Deploy | None) -> None:
    if decision in (Decision.REWIND, Decision.DIVERGED) and not options.allow_rewind:
        assert last is not None
        raise RewindRefused(_rewind_message(decision, commit, last))
    if decision is Decision.FAILED:
        raise FailedBefore(
            f"the last deploy of commit {commit.sha[:12]} ({commit.subject}) failed; pull mode does not "
            "retry it by itself (each try would build, start and fail again): push a fix, or run "
            "`fnctl sync` once to retry (`fnctl history NAME` says what failed)"
        )


def _project(tree: Path, options: SyncOptions, url: str) -> tuple[Project, list[Path]]:
    """The project a checkout holds, and its manifest paths, refusing anything that leads out of it."""
    escaping = escaping_links(tree)
    if escaping:
        raise BadInput(
            "the commit has symbolic links that lead out of the repository (refused):\n  " + "\n  ".join(escaping[:10])
        )
    project = project_at(tree, default_name=Path(url.rstrip("/")).name.removesuffix(".git"))
    paths = [tree / options.path] if options.path is not None else list(project.manifest_paths)
    # fnctl.toml's manifests too: out of the checkout lie the cache's other checkouts, and the host's files.
    outside = [p for p in paths if not inside(tree, p)]
    if outside:
        named = (
            f"--path {options.path}"
            if options.path is not None
            else f"{CONFIG_FILE}'s project.manifests {_as_written(tree, outside[0])}"
        )
        raise BadInput(f"{named} leads out of the repository")
    if not all(p.exists() for p in paths) or not any(_has_manifests(p) for p in paths):
        raise BadInput(
            f"the commit has no manifests under {', '.join(_as_written(tree, p) for p in paths)} "
            f"(pass --path to name where they are)"
        )
    state = project.state_path
    if options.apply.state is None and not os.environ.get("FNCTL_STATE") and state is not None and inside(tree, state):
        raise BadInput(
            f"{CONFIG_FILE}'s state.path lies inside the repository, which fnctl checks out afresh for "
            "each commit: pass --state or set FNCTL_STATE"
        )
    return project, paths


def _as_written(tree: Path, path: Path) -> str:
    """`path` as fnctl.toml or --path gave it: relative to the checkout (`..` kept), or absolute."""
    return str(path.relative_to(tree)) if path.is_relative_to(tree) else str(path)


@contextmanager
def _as_the_repository_names_them(tree: Path, url: str) -> Iterator[None]:
    """Bad input names the checkout's files as the repository does, not by their place in fnctl's cache."""
    try:
        yield
    except BadInput as exc:
        message = exc.message.replace(f"{tree}{os.sep}", "").replace(str(tree), url)
        raise type(exc)(message, detail=exc.detail) from None


def escaping_links(tree: Path) -> list[str]:
    """Symbolic links in the checkout (git's own directory aside) whose target lies outside it."""
    found = []
    for root, dirs, files in os.walk(tree):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in (*dirs, *files):
            path = Path(root, name)
            if path.is_symlink() and not inside(tree, path):
                found.append(f"{path.relative_to(tree)} -> {os.readlink(path)}")
    return sorted(found)


def _has_manifests(path: Path) -> bool:
    return bool(find_manifest_files([path])[0])


def _rewind_message(decision: Decision, commit: Commit, last: deploys.Deploy) -> str:
    # A commit made live by `fnctl apply` may be one the repository never had: say where it came from.
    came = f", applied from {last.source}" if last.command == "apply" else ""
    live = f"{last.commit.sha[:12]} ({last.commit.subject}{came})"
    if decision is Decision.REWIND:
        what = f"commit {commit.sha[:12]} is older than the live commit {live}: deploying it would roll production back"
    else:
        what = (
            f"commit {commit.sha[:12]} does not descend from the live commit {live}: the branch was rewritten "
            "(force-push?) or another branch was given"
        )
    return (
        f"{what}.\nTo go back on purpose, revert the change and push (or `fnctl rollback` a function); "
        "to deploy this commit anyway, pass --allow-rewind."
    )


def watch(
    options: SyncOptions,
    interval: float,
    progress: Progress,
    stop: threading.Event,
    on_report: Callable[[SyncReport | FnctlError], None],
) -> None:
    """Pull mode: sync the ref every `interval` seconds until `stop` is set. A new commit deploys; the same
    commit is planned again, so that drift (a dead instance, a change made by hand) is healed. The store
    records what is live, so a restarted watcher never deploys a commit twice."""
    last_error: str | None = None
    while not stop.is_set():
        try:
            report = sync(replace(options, heal=True), progress)
            last_error = None
            on_report(report)
        except FnctlError as exc:
            if exc.message != last_error:  # the same refusal every interval would only be noise
                on_report(exc)
            last_error = exc.message
        stop.wait(interval)
