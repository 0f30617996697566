"""Who and what is deploying: the actor for the audit log, and the git commit of the manifests.

The one module that imports gitpython; it is loaded only when a command records a deploy.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path

# CI systems name the person or bot behind a run in these variables (first match wins).
_CI_ACTORS = ("FNCTL_ACTOR", "GITHUB_ACTOR", "GITLAB_USER_LOGIN", "BUILDKITE_BUILD_CREATOR", "CIRCLE_USERNAME")


@dataclass(frozen=True)
class GitInfo:
    commit: str
    author: str
    dirty: bool


def actor() -> str:
    """`ci:<name>` inside CI when the CI says who, else the OS user."""
    for variable in _CI_ACTORS:
        if os.environ.get(variable):
            return f"ci:{os.environ[variable]}" if variable != "FNCTL_ACTOR" else os.environ[variable]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"ci:{user}" if os.environ.get("CI") == "true" else user


def git_info(path: Path) -> GitInfo | None:
    """HEAD's commit and author when `path` is inside a git work tree, else None."""
    if "GIT_DIR" not in os.environ and not any(
            (directory / ".git").exists() for directory in (path.resolve(), *path.resolve().parents)):
        return None  # not a work tree: spares importing gitpython, which runs `git version` (~0.1 s)
    try:
        import git
    except ImportError:
        return None
    try:
        repo = git.Repo(path, search_parent_directories=True)
        head = repo.head.commit
        return GitInfo(head.hexsha, f"{head.author.name} <{head.author.email}>", repo.is_dirty(untracked_files=False))
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError, git.GitCommandError):
        return None  # not a repository, or one without commits yet
