"""GitOps commands: sync (once, or --watch), and the push hook (hook install, uninstall, run).

Thin like `cli`: parse, call `sync` or `hooks`, render with `render_git`.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from fnctl.cli.options import LockOpt, StateOpt, deploy_options, parse_timeout
from fnctl.cli.render import Output, OutputOpt, Progress, console
from fnctl.errors import BadInput, ExitCode, FnctlError

if TYPE_CHECKING:
    from fnctl.commands.sync import SyncOptions, SyncReport

app = typer.Typer()


hook_app = typer.Typer(
    help="Deploy on `git push` to a bare repository.\n\nExample: fnctl hook install --repo /srv/git/shop.git",
    no_args_is_help=True,
)
app.add_typer(hook_app, name="hook")

NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Start rollouts and return: `fnctl serve` carries them on.")]
RepoOpt = Annotated[
    str, typer.Option("--repo", help="The repository: a path or a URL git can fetch.", show_default=False)
]
PathOpt = Annotated[
    Optional[str],
    typer.Option(
        "--path",
        help="The manifests inside the repository (default: its fnctl.toml's, else manifests/).",
        show_default=False,
    ),
]


@app.command()
def sync(
    repo: RepoOpt,
    ref: Annotated[
        Optional[str],
        typer.Option(
            "--ref", help="Branch, tag or commit (default: the repository's default branch).", show_default=False
        ),
    ] = None,
    path: PathOpt = None,
    state: StateOpt = None,
    lock_timeout: LockOpt = 600.0,
    allow_rewind: Annotated[
        bool, typer.Option("--allow-rewind", help="Deploy a commit older than the live one, or not descending from it.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Deploy a spec even though it was rolled back (quarantined).")
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete deployed functions that are no longer in the manifests.")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Pull mode: sync every --interval, healing drift, until stopped.")
    ] = False,
    interval: Annotated[str, typer.Option("--interval", help="How often --watch polls.")] = "30s",
    no_wait: NoWaitOpt = False,
    timeout: Annotated[
        Optional[str],
        typer.Option("--timeout", help="Stop following rollouts after this long: exit 1.", show_default=False),
    ] = None,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Deploy a commit of a git repository: fetch it, then plan and apply it as `fnctl apply` would.

    The commit is recorded with every revision and audit entry. A commit that is already live does nothing;
    one older than the live commit (or not descending from it) is refused unless --allow-rewind; a spec
    rolled back with `fnctl rollback` is refused unless --force. Exit codes as for apply.

    \b
    Examples:
      fnctl sync --repo https://git.example.com/team/functions.git --ref main
      fnctl sync --repo /srv/git/functions.git --ref v1.4.0 --path deploy/manifests
      fnctl sync --repo /srv/git/functions.git --watch --interval 30s
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.sync import SyncOptions
    from fnctl.manifest.units import parse_duration

    options = SyncOptions(
        repo,
        ref,
        path,
        allow_rewind,
        apply=replace(
            deploy_options(state, lock_timeout, prune, force), timeout=parse_timeout(timeout), wait=not no_wait
        ),
    )
    if not watch:
        raise typer.Exit(_sync_once(options, output))
    try:
        every = parse_duration(interval)
    except ValueError as exc:
        raise BadInput(f"--interval: {exc}") from None
    _watch(options, every, output)


def _sync_once(options: SyncOptions, output: Output) -> int:
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.cli.render_git import render_sync
    from fnctl.commands.sync import sync

    with Progress(quiet=output is Output.JSON) as progress:
        report = sync(options, progress)
    render_sync(report, output)
    return exit_code(report)


def exit_code(report: SyncReport) -> int:
    return int(report.apply.exit_code) if report.apply is not None else int(ExitCode.OK)


def _watch(options: SyncOptions, every: float, output: Output) -> None:
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.cli.render_git import render_sync, render_watch_error
    from fnctl.commands.sync import watch
    from fnctl.gitops.deploys import Decision

    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()  # the sync under way finishes; the loop ends before the next

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)

    def report(result: SyncReport | FnctlError) -> None:
        if isinstance(result, FnctlError):
            render_watch_error(result, output)
        elif result.changed or result.decision is not Decision.HEAL:  # a new commit, or drift healed
            render_sync(result, output, one_line=True)

    with Progress(quiet=output is Output.JSON) as progress:
        watch(options, every, progress, stop, report)


@hook_app.command("install")
def hook_install(
    repo: Annotated[Path, typer.Option("--repo", help="The bare repository pushes go to.", show_default=False)],
    branch: Annotated[str, typer.Option("--branch", help="Pushes to this branch deploy.")] = "main",
    preview: Annotated[
        bool, typer.Option("--preview", help="Deploy pushes to other branches as previews that take no traffic.")
    ] = False,
    state: StateOpt = None,
    path: PathOpt = None,
    no_wait: NoWaitOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a post-receive hook that is not fnctl's.")] = False,
) -> None:
    """Make `git push` to a bare repository deploy: a post-receive hook runs `fnctl sync` on the pushed
    commit and streams its progress to the pusher, ending with deployed, rolled back or failed.

    \b
    Examples:
      fnctl hook install --repo /srv/git/functions.git
      fnctl hook install --repo /srv/git/functions.git --branch production --preview
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.gitops.hooks import HookConfig, install

    hook = install(HookConfig(repo, branch, preview, state, path, wait=not no_wait), force=force)
    console().print(f"installed {hook}: pushes to {branch} deploy" + (", other branches preview" if preview else ""))


@hook_app.command("uninstall")
def hook_uninstall(
    repo: Annotated[Path, typer.Option("--repo", help="The bare repository.", show_default=False)],
) -> None:
    """Remove fnctl's post-receive hook (a hook that is not fnctl's is left alone).

    Example: fnctl hook uninstall --repo /srv/git/functions.git
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.gitops.hooks import uninstall

    removed = uninstall(repo)
    console().print(f"removed {removed}" if removed else f"no hook in {repo}: nothing to remove")


@hook_app.command("run", hidden=True)
def hook_run(
    repo: Annotated[Path, typer.Option("--repo", show_default=False)],
    branch: Annotated[str, typer.Option("--branch")] = "main",
    preview: Annotated[bool, typer.Option("--preview")] = False,
    state: StateOpt = None,
    path: PathOpt = None,
    no_wait: NoWaitOpt = False,
) -> None:
    """What the installed hook runs: the pushed updates on stdin, one `<old> <new> <ref>` per line."""
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.cli.render_git import hook_line, render_sync
    from fnctl.commands.sync import RewindRefused, SyncOptions, sync
    from fnctl.gitops.hooks import Act, actions

    worst = 0
    for action in actions(sys.stdin.read().splitlines(), branch, preview):
        short = action.ref.removeprefix("refs/heads/")
        if action.act is Act.IGNORE:
            hook_line(f"{short}: ignored ({action.reason})")
            continue
        options = SyncOptions(
            str(repo),
            action.sha,
            path,
            preview=action.act is Act.PREVIEW,
            apply=replace(deploy_options(state, 3600.0), wait=not no_wait),
        )  # pushes queue in the lock
        hook_line(f"{short}: {'previewing' if options.preview else 'deploying'} {action.sha[:12]}")
        try:
            with Progress() as progress:
                report = sync(options, progress)
        except RewindRefused as exc:  # the pusher cannot pass --allow-rewind: say what a push can do
            hook_line(
                f"{short}: REFUSED, nothing deployed: {exc.message.splitlines()[0].rstrip('.')}.\n"
                "To go back, push a revert on top of the live commit (or run `fnctl sync --allow-rewind` "
                "where fnctl runs)."
            )
            worst = max(worst, int(exc.exit_code))
            continue
        except FnctlError as exc:
            hook_line(f"{short}: FAILED, nothing deployed: {exc.message}")
            worst = max(worst, int(exc.exit_code))
            continue
        render_sync(report, Output.TEXT)
        code = exit_code(report)
        done = "PREVIEWED (no traffic)" if options.preview else "DEPLOYED"  # a pusher must not think it is live
        hook_line(
            f"{short}: "
            + {0: done, 3: "ROLLED BACK", 4: "WAITING at a gate (fnctl promote)"}.get(code, "FAILED")
            + f" {action.sha[:12]}"
        )
        worst = max(worst, code)
    raise typer.Exit(worst)
