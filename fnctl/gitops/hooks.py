"""Git-push-driven deploys: the `post-receive` hook fnctl installs in a bare repository, and which of a
push's ref updates it deploys (pure: `actions`).

The hook runs `fnctl hook run` with the pushed updates on stdin; its output reaches the pusher's terminal.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from fnctl.errors import BadInput
from fnctl.gitops.gitrepo import is_bare
from fnctl.state.location import StateLocation

MARK = "# fnctl post-receive hook"
_DELETED = "0" * 40


@dataclass(frozen=True)
class HookConfig:
    repo: Path
    branch: str = "main"
    preview: bool = False  # deploy pushes to other branches as previews that take no traffic
    state: StateLocation | None = None
    path: str | None = None  # the manifests inside the repository
    wait: bool = True  # follow rollouts to their end before the push returns (else `fnctl serve` drives them)


class Act(StrEnum):
    DEPLOY = "deploy"
    PREVIEW = "preview"
    IGNORE = "ignore"


@dataclass(frozen=True)
class RefAction:
    act: Act
    ref: str
    sha: str
    reason: str = ""


def actions(lines: Iterable[str], branch: str, preview: bool) -> list[RefAction]:
    """What to do with each `<old> <new> <ref>` line git gives post-receive, in push order."""
    found = []
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        _, new, ref = parts
        if new == _DELETED:
            found.append(RefAction(Act.IGNORE, ref, new, "deleted: nothing to deploy"))
        elif ref == f"refs/heads/{branch}":
            found.append(RefAction(Act.DEPLOY, ref, new))
        elif preview and ref.startswith("refs/heads/"):
            found.append(RefAction(Act.PREVIEW, ref, new))
        else:
            found.append(RefAction(Act.IGNORE, ref, new, f"deploys follow refs/heads/{branch}"))
    return found


def script(config: HookConfig, python: str = sys.executable) -> str:
    """The hook: plain sh, calling this fnctl with the options given at install time."""
    command = [python, "-m", "fnctl", "hook", "run", "--repo", str(config.repo), "--branch", config.branch]
    if config.preview:
        command.append("--preview")
    if config.state is not None:
        command += ["--state", config.state.to_arg()]
    if config.path is not None:
        command += ["--path", config.path]
    if not config.wait:
        command.append("--no-wait")
    return (
        f"#!/bin/sh\n{MARK}: a push to {config.branch} deploys the pushed commit with `fnctl sync`.\n"
        "# Installed by `fnctl hook install`; `fnctl hook uninstall` removes it.\n"
        "# git points GIT_DIR and friends at this repository; fnctl's own git commands must not see them.\n"
        "unset $(git rev-parse --local-env-vars)\n"
        "PYTHONUNBUFFERED=1 exec " + shlex.join(command) + "\n"
    )


def install(config: HookConfig, *, force: bool = False) -> Path:
    """Write the hook into the bare repository `config.repo`; returns its path."""
    repo = config.repo.resolve()
    if not is_bare(repo):
        raise BadInput(
            f"{config.repo} is not a bare git repository (the hook goes where pushes land: "
            "create one with `git init --bare`)"
        )
    if config.state is not None and config.state.url is not None and urlsplit(config.state.url).password:
        # The hook is a plain file in the repository: a password in it would be readable by whoever reads hooks.
        raise BadInput(
            "--state has a password in its URL, which the hook would store in plain text: give the URL without "
            "it and the password through ~/.pgpass or PGPASSWORD in the environment pushes run in (libpq reads both)"
        )
    hook = repo / "hooks" / "post-receive"
    if hook.exists() and not _ours(hook) and not force:
        raise BadInput(f"{hook} exists and is not fnctl's: remove it, or pass --force to replace it")
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(
        script(
            HookConfig(
                repo,
                config.branch,
                config.preview,
                StateLocation(config.state.path.resolve(), config.state.url) if config.state else None,
                config.path,
                config.wait,
            )
        ),
        encoding="utf-8",
    )
    hook.chmod(0o755)
    return hook


def uninstall(repo: Path) -> Path | None:
    """Remove fnctl's hook (never another); returns its path, or None when there was none."""
    hook = repo / "hooks" / "post-receive"
    if not hook.exists():
        return None
    if not _ours(hook):
        raise BadInput(f"{hook} is not fnctl's hook: left as it is")
    hook.unlink()
    return hook


def _ours(hook: Path) -> bool:
    try:
        return MARK in hook.read_text(encoding="utf-8", errors="replace")[:400]
    except OSError:
        return False
