"""The one boundary with git (gitpython): the commit of a work tree, and fnctl's cache of remote repositories.

A synced repository is fetched into a bare mirror under fnctl's cache directory (shallow on first contact),
and each commit deployed is checked out into its own work tree there, so two syncs never read each other's
files. git's errors come back as fnctl's own, with git's last line of explanation.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import git

from fnctl.errors import BadInput, FnctlError
from fnctl.gitops.commit import Commit, Relation, WorkTree

_SHA = re.compile(r"[0-9a-f]{7,40}")
_FETCH_TIMEOUT = 120.0  # seconds: an unreachable server must end in an error, never a hang
_KEEP_CHECKOUTS = 5  # the newest work trees kept in a mirror (the live commit's among them)
# What git sets for a hook (GIT_DIR=. in a bare repository, ...): inherited, they would point every git
# command fnctl runs at the pushed repository instead of its own mirror.
_LOCAL_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_COMMON_DIR",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_GRAFT_FILE",
    "GIT_SHALLOW_FILE",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_REPLACE_REF_BASE",
    "GIT_NO_REPLACE_OBJECTS",
)


class GitError(FnctlError):
    """A git operation failed (unreachable repository, broken cache)."""


class UnknownRef(BadInput):
    """The ref names no branch, tag or commit of the repository."""


def clean_environment() -> dict[str, str]:
    """The environment for git commands fnctl runs: no hook variables, never a credential prompt."""
    env = {k: v for k, v in os.environ.items() if k not in _LOCAL_VARIABLES}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def work_tree(path: Path) -> WorkTree | None:
    """HEAD's commit and the uncommitted changes below `path`, when `path` is inside a git work tree."""
    if not any((directory / ".git").exists() for directory in (path.resolve(), *path.resolve().parents)):
        return None  # not a work tree: spares running git
    try:
        repo = git.Repo(path, search_parent_directories=True)
        commit = _commit(repo.head.commit)
        # Untracked files count: a manifest not yet committed would deploy without being in the commit.
        status = repo.git.status(
            "--porcelain", "-z", "--untracked-files=normal", "--", str(path.resolve()), env=clean_environment()
        )
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError, git.GitCommandError):
        return None  # not a repository, or one without commits yet
    return WorkTree(commit, _changed(Path(str(repo.working_tree_dir)), status))


def _changed(root: Path, porcelain: str) -> tuple[Path, ...]:
    """The paths of `git status --porcelain -z` output, absolute (a rename's source entry skipped)."""
    entries, found = iter(porcelain.split("\0")), []
    for entry in entries:
        if len(entry) > 3:
            found.append(root / entry[3:])
            if "R" in entry[:2] or "C" in entry[:2]:
                next(entries, None)
    return tuple(found)


def is_bare(path: Path) -> bool:
    """Whether `path` is a bare git repository (where a push lands and its hooks run)."""
    try:
        return bool(git.Repo(path).bare)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return False


def cache_root() -> Path:
    """$XDG_CACHE_HOME/fnctl/git: fnctl's own copies of synced repositories, per user."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fnctl" / "git"


def location(url: str) -> str:
    """The repository as git should be given it: local paths absolute, URLs as they are."""
    if "://" in url or re.match(r"^[\w.-]+@[\w.-]+:", url):
        return url
    return str(Path(url).expanduser().resolve())


class Mirror:
    """fnctl's bare copy of one remote repository, with a work tree per deployed commit."""

    def __init__(self, url: str, root: Path | None = None) -> None:
        self.url = location(url)
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.path = (root or cache_root()) / digest
        self.path.mkdir(parents=True, exist_ok=True)
        with self._locked():
            try:
                self._repo = git.Repo(self.path)
            except (git.InvalidGitRepositoryError, git.NoSuchPathError):
                self._repo = git.Repo.init(self.path, bare=True)
                (self.path / "fnctl-source").write_text(self.url + "\n", encoding="utf-8")

    @contextmanager
    def checkout(self, ref: str | None) -> Iterator[tuple[Path, Commit]]:
        """Fetch `ref` (the remote's default branch when None) and check its commit out into a work tree of
        its own, kept for the block (`relation` fetches the ancestry when a comparison needs it)."""
        with self._locked():
            sha = self._fetch(ref)
            tree = self.path / "checkouts" / sha
            if not (tree / ".git").exists():
                shutil.rmtree(tree, ignore_errors=True)
                self._git("worktree", "prune")
                self._git("worktree", "add", "--detach", "--force", str(tree), sha)
            os.utime(tree)  # the newest are kept
            # In use until the block ends: a push queued behind a long deploy reads its work tree only once it
            # has the store's lock, by when later pushes may have checked out more than the trees kept.
            in_use = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(in_use, fcntl.LOCK_SH)
                self._prune(keep=tree)
                commit = _commit(self._repo.commit(sha))
            except BaseException:
                os.close(in_use)
                raise
        try:
            yield tree, commit
        finally:
            os.close(in_use)

    def relation(self, live: str, new: str) -> Relation:
        """How `new` stands to `live`, fetching `live` (and the history between) when the mirror lacks it."""
        if live == new:
            return Relation.SAME
        with self._locked():
            if not self._has(live):
                self._try_git("fetch", "--quiet", self.url, live)
            if self._is_shallow() and not self._connected(live, new):
                self._try_git("fetch", "--quiet", "--unshallow", self.url, new)
                self._try_git("fetch", "--quiet", self.url, live)
            if not self._has(live):
                return Relation.UNKNOWN
            if self._ancestor(live, new):
                return Relation.AHEAD
            return Relation.BEHIND if self._ancestor(new, live) else Relation.DIVERGED

    # ---- inside the lock ----

    def _fetch(self, ref: str | None) -> str:
        if ref is not None and _SHA.fullmatch(ref) and len(ref) < 40:
            # An abbreviated commit cannot be asked for: fetch every branch and tag, then resolve it here (a
            # branch of that name first: "c0ffee1" may be one; a tag's name wins over a commit's in rev-parse).
            self._git("fetch", "--quiet", "--prune", "--tags", self.url, "+refs/heads/*:refs/fnctl/heads/*")
            branch = f"refs/fnctl/heads/{ref}"
            return self._resolve(branch if self._try_git("rev-parse", "--verify", "--quiet", branch) else ref)
        # Shallow on first contact only: later fetches are incremental and connect to what is here.
        depth = ["--depth", "1"] if not (self.path / "FETCH_HEAD").exists() else []
        try:
            self._git("fetch", "--quiet", *depth, self.url, ref or "HEAD")
        except UnknownRef:
            if ref is None:
                raise UnknownRef(
                    f"the default branch (HEAD) of {self.url} names no commit; pass --ref BRANCH"
                ) from None
            raise
        return self._resolve("FETCH_HEAD")

    def _resolve(self, name: str) -> str:
        try:
            return self._git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}").strip()
        except FnctlError:
            raise UnknownRef(f"{name} is not a commit of {self.url}") from None

    def _has(self, sha: str) -> bool:
        return self._try_git("cat-file", "-e", f"{sha}^{{commit}}")

    def _is_shallow(self) -> bool:
        return (self.path / "shallow").exists()

    def _connected(self, live: str, new: str) -> bool:
        return self._ancestor(live, new) or self._ancestor(new, live)

    def _ancestor(self, older: str, newer: str) -> bool:
        return self._try_git("merge-base", "--is-ancestor", older, newer)

    def _prune(self, keep: Path) -> None:
        trees = sorted((self.path / "checkouts").iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in trees[_KEEP_CHECKOUTS:]:
            if old != keep and not _in_use(old):
                shutil.rmtree(old, ignore_errors=True)
        self._git("worktree", "prune")

    def _try_git(self, *args: str) -> bool:
        try:
            self._git(*args)
        except FnctlError:
            return False
        return True

    def _git(self, *args: str) -> str:
        try:
            return str(
                self._repo.git.execute(["git", *args], env=clean_environment(), kill_after_timeout=_FETCH_TIMEOUT)
            )
        except git.GitCommandError as exc:
            raise _translate(exc, self.url) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One fnctl process at a time in a mirror (two pushes' hooks fetch concurrently)."""
        with open(self.path.parent / f"{self.path.name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def _in_use(tree: Path) -> bool:
    """Whether a `checkout` block holds `tree` (its shared flock; taken, like this test, in the mirror's lock)."""
    try:
        handle = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(handle)
    return False


def _commit(commit: Any) -> Commit:
    return Commit(commit.hexsha, f"{commit.author.name} <{commit.author.email}>", commit.summary)


def _translate(exc: Any, url: str) -> FnctlError:
    """git's explanation, in one or two lines, as fnctl's error."""
    lines = [line.removeprefix("fatal: ").strip() for line in str(exc.stderr or "").splitlines() if line.strip()]
    lines = [line.strip("'").removeprefix("stderr: ").strip("'").removeprefix("fatal: ") for line in lines]
    text = lines[0] if lines else str(exc)
    if "invalid refspec" in text:
        name = text.rsplit(" ", 1)[-1].strip("'")
        return UnknownRef(f"{name} is not a branch, tag or commit name")
    if "couldn't find remote ref" in text or "not our ref" in text or "unknown revision" in text:
        return UnknownRef(f"{url} has no branch, tag or commit {text.rsplit(' ', 1)[-1]}")
    if any(
        word in text
        for word in (
            "does not appear to be a git repository",
            "Could not read from remote",
            "unable to access",
            "Could not resolve host",
            "Connection refused",
            "not found",
        )
    ):
        return GitError(f"cannot reach the repository {url}: {text}")
    return GitError(f"git {' '.join(str(a) for a in exc.command[1:3])} failed: {text}")
