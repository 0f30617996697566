"""Shared helpers of the GitOps tests: real git repositories in a temporary folder (a bare remote and a clone
holding a fnctl project), git run with a fixed author and no user configuration, and `python -m fnctl`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fnctl.commands.init import scaffold

AUTHOR = "Ada Lovelace <ada@example.org>"
_IDENTITY = (
    "-c",
    "user.name=Ada Lovelace",
    "-c",
    "user.email=ada@example.org",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "init.defaultBranch=main",
    "-c",
    "advice.detachedHead=false",
)


def git_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the git commands the tests run: the user's and the system's git config ignored."""
    return (
        os.environ
        | {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}
        | (extra or {})
    )


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run git in `cwd` (failing the test on an error); its standard output, stripped."""
    done = subprocess.run(
        ["git", *_IDENTITY, *args], cwd=cwd, env=git_environ(env), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"git {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout.strip()


def run_git(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run git without checking its exit (a push: what the hook said is on stderr, after `remote: `)."""
    return subprocess.run(
        ["git", *_IDENTITY, *args], cwd=cwd, env=git_environ(env), capture_output=True, text=True, timeout=timeout
    )


def fnctl(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m fnctl ARGS` as a user runs it (through main(): exit codes, no traceback for bad input)."""
    return subprocess.run(
        [sys.executable, "-m", "fnctl", *args],
        cwd=cwd,
        env=os.environ | {"NO_COLOR": "1", "COLUMNS": "200"} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@dataclass(frozen=True)
class Repos:
    """A bare repository (where pushes land) and a clone of it with a fnctl project at its root."""

    bare: Path
    clone: Path

    def write(self, relative: str, text: str) -> None:
        path = self.clone / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def commit(self, message: str, files: dict[str, str] | None = None) -> str:
        """Write `files` (path → text) into the clone, commit everything, return the new commit's sha."""
        for relative, text in (files or {}).items():
            self.write(relative, text)
        git(self.clone, "add", "-A")
        git(self.clone, "commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return git(self.clone, "rev-parse", "HEAD")


def make_repos(root: Path, project: str) -> Repos:
    """`root/remote.git` (bare, default branch main) and its clone `root/work`, holding `fnctl init`'s project
    (one function, `hello`, with an HTTP trigger) not yet committed."""
    bare, clone = root / "remote.git", root / "work"
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    git(root, "clone", "-q", str(bare), str(clone))
    git(clone, "symbolic-ref", "HEAD", "refs/heads/main")  # whatever the clone guessed of an empty repository
    scaffold(clone, project, force=True)
    return Repos(bare, clone)


def hello_manifest(clone: Path, *, greeting: str = "hello", version: str | None = None) -> str:
    """`fnctl init`'s manifest of `hello` with its env changed: a new VERSION is a new revision from the very
    same image (no build); another GREETING fails the health check, which expects "hello probe"."""
    text = (clone / "manifests" / "hello.yaml").read_text(encoding="utf-8")
    env = f"GREETING: {greeting}" + (f", VERSION: '{version}'" if version is not None else "")
    start = text.index("  env: {") + len("  env: {")
    return text[:start] + env + text[text.index("}", start) :]
