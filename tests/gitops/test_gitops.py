"""GitOps end to end: real git repositories in a temporary folder (a bare remote with fnctl's post-receive hook,
and a clone holding `fnctl init`'s project), real Docker, a real store.

The tests share one remote, clone and store and run in order, each starting from what the previous one left
live (the remote's main deployed at its tip): first deploys are what cost time, not the checks.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from deploy_helpers import Project, Result, cleanup, until
from gitops_helpers import AUTHOR, Repos, git, git_environ, hello_manifest, make_repos, run_git
from pgserver import StateFactory

from fnctl.gitops.gitrepo import Mirror

pytestmark = pytest.mark.docker

MANIFEST = "manifests/hello.yaml"


@dataclass
class Remote:
    """The shared setup: `repos` (bare remote and clone) and `project` (the clone as a fnctl project, with the
    store and the git cache of this module, in the environment that pushes, and so the hook, run with)."""

    repos: Repos
    project: Project

    def push(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`git push origin ARGS` from the clone; the hook's output is on stderr."""
        done = run_git(self.repos.clone, "push", "origin", *args, env=self.project.environ())
        assert done.returncode == 0, done.stderr
        return done

    def ensure_live(self, revisions: int = 1) -> None:
        """What each test starts from: main's tip deployed, with at least `revisions` revisions of hello. In
        order, the earlier tests left that; alone (`-k`), a test makes it here."""
        while len(self.revisions()) < revisions:
            sha = self.commit_version(f"setup-{len(self.revisions())}")
            assert _said(self.push("main"), f"fnctl: main: DEPLOYED {sha[:12]}")

    def commit_version(self, version: str, *, greeting: str = "hello") -> str:
        """A commit that changes `hello`'s manifest (a new revision from the same image)."""
        return self.repos.commit(
            f"hello {version}", {MANIFEST: hello_manifest(self.repos.clone, greeting=greeting, version=version)}
        )

    def sync(self, *args: str) -> Result:
        return self.project.fnctl("sync", "--repo", str(self.repos.bare), *args)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.project.store() as store:
            return store.raw().query(sql, params)

    def deploys(self) -> list[tuple[Any, ...]]:
        """(command, commit, outcome, dirty) of every deploy recorded, oldest first."""
        return self.rows("SELECT command, git_commit, outcome, dirty FROM deploys WHERE preview = 0 ORDER BY id")

    def revisions(self) -> list[tuple[int, str, str]]:
        """(number, commit, status) of hello's revisions."""
        with self.project.store() as store:
            return [(r.number, r.git_commit or "", r.status.value) for r in store.revisions("hello")]

    def live(self) -> tuple[int, str]:
        """hello's live revision (all traffic; a preview beside it takes none) and its commit."""
        with self.project.store() as store:
            weights = store.routes()["hello"]
        assert sorted(weights.values())[-1:] == [100] and sum(weights.values()) == 100, weights
        number = next(n for n, weight in weights.items() if weight == 100)
        return number, next(commit for n, commit, _ in self.revisions() if n == number)


@pytest.fixture(scope="module")
def remote(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    base_image: str,
    project_states: StateFactory,
) -> Iterator[Remote]:
    root = tmp_path_factory.mktemp("gitops")
    name = f"t-{secrets.token_hex(4)}"
    repos = make_repos(root, name)
    state = project_states.new(root / "state")
    project = Project(
        repos.clone,
        name,
        state.path,
        base_image,
        docker_client,
        env={"XDG_CACHE_HOME": str(root / "cache")},
        url=state.url,
    )
    project.ok("hook", "install", "--repo", str(repos.bare), "--state", state.to_arg())
    try:
        yield Remote(repos, project)
    finally:
        cleanup(project)


def _said(push: subprocess.CompletedProcess[str], line: str) -> bool:
    """Whether the hook said `line` to the pusher (git prefixes it with `remote: `)."""
    return any(text.removeprefix("remote: ").strip() == line for text in push.stderr.splitlines())


# ---- push to deploy ---------------------------------------------------------------------------------------------


def test_push_deploys_the_commit_and_records_it_everywhere(remote: Remote) -> None:
    first = remote.repos.commit("Say hello")
    push = remote.push("main")
    assert _said(push, f"fnctl: main: deploying {first[:12]}") and _said(push, f"fnctl: main: DEPLOYED {first[:12]}")
    assert "hello: create: revision 1 is live" in push.stderr, push.stderr
    assert remote.live() == (1, first)
    assert remote.project.invoke("hello", {"name": "ada"}) == {"message": "hello ada"}
    remote.project.assert_consistent()

    # Every revision and every audit entry names the commit: sha, author and subject.
    assert remote.rows("SELECT git_commit, git_author, git_subject FROM revisions") == [(first, AUTHOR, "Say hello")]
    audit = remote.rows("SELECT command, action, git_commit, git_author, git_subject FROM audit")
    assert {row[1] for row in audit} >= {"route", "publish"}
    assert set(audit) == {("sync", action, first, AUTHOR, "Say hello") for action in {row[1] for row in audit}}
    assert remote.deploys() == [("sync", first, "ok", 0)]
    shown = remote.project.ok("get", "revisions", "-o", "json").json()[0]
    assert (shown["gitCommit"], shown["gitAuthor"], shown["gitSubject"]) == (first, AUTHOR, "Say hello")

    # The live commit again: nothing to do, nothing recorded, nothing restarted.
    containers = remote.project.instance_containers("hello")
    again = remote.sync("--ref", "main")
    assert again.code == 0 and f"commit {first[:12]} is already live: nothing to do" in again.err, again.text
    assert remote.deploys() == [("sync", first, "ok", 0)]
    assert remote.project.instance_containers("hello") == containers

    second = remote.commit_version("2")
    push = remote.push("main")
    assert _said(push, f"fnctl: main: DEPLOYED {second[:12]}"), push.stderr
    assert remote.live() == (2, second)
    assert remote.rows("SELECT git_subject FROM revisions WHERE number = 2") == [("hello 2",)]
    assert remote.deploys()[-1] == ("sync", second, "ok", 0)


def test_push_to_another_branch_or_a_deletion_deploys_nothing(remote: Remote) -> None:
    remote.ensure_live()
    before = (remote.revisions(), remote.deploys(), remote.project.instance_containers("hello"))
    git(remote.repos.clone, "switch", "-q", "-c", "feature")
    remote.commit_version("feature")
    push = remote.push("feature")
    assert _said(push, "fnctl: feature: ignored (deploys follow refs/heads/main)"), push.stderr
    push = remote.push("--delete", "feature")
    assert _said(push, "fnctl: feature: ignored (deleted: nothing to deploy)"), push.stderr
    git(remote.repos.clone, "switch", "-q", "main")
    git(remote.repos.clone, "branch", "-q", "-D", "feature")
    assert (remote.revisions(), remote.deploys(), remote.project.instance_containers("hello")) == before


def test_invalid_push_shows_the_pusher_each_error_and_deploys_nothing(remote: Remote) -> None:
    remote.ensure_live()
    before = (remote.revisions(), remote.deploys(), remote.project.instance_containers("hello"))
    bad = remote.repos.commit(
        "Add a broken manifest",
        {
            "manifests/bad.yaml": "apiVersion: fnctl/v1\nkind: Function\nmetadata: {name: Bad_Name}\nspec:\n  runtime: python3.11\n"
        },
    )
    push = remote.push("main")
    assert _said(push, "fnctl: main: FAILED, nothing deployed: the manifests are invalid:"), push.stderr
    errors = [
        line.removeprefix("remote: ")
        for line in push.stderr.splitlines()
        if re.match(r"remote: manifests/bad\.yaml:\d+:\d+: ", line)
    ]
    assert any(line.startswith("manifests/bad.yaml:3:18: $.metadata.name:") for line in errors), push.stderr
    assert any("$.spec" in line and "source" in line for line in errors), push.stderr
    assert str(remote.project.env["XDG_CACHE_HOME"]) not in push.stderr  # the checkout's path is fnctl's business
    assert (remote.revisions(), remote.deploys(), remote.project.instance_containers("hello")) == before

    git(remote.repos.clone, "rm", "-q", "manifests/bad.yaml")
    fixed = remote.repos.commit("Remove the broken manifest")
    push = remote.push("main")
    assert _said(push, f"fnctl: main: DEPLOYED {fixed[:12]}") and "no changes" in push.stderr, push.stderr
    assert remote.revisions() == before[0] and remote.deploys()[-1] == ("sync", fixed, "ok", 0)
    assert bad not in {row[1] for row in remote.deploys()}


def test_rewinds_and_rewritten_history_are_refused(remote: Remote) -> None:
    remote.ensure_live(2)
    live, tip = remote.live()[0], remote.repos.head()
    subject = git(remote.repos.clone, "log", "-1", "--format=%s")
    first = remote.rows("SELECT git_commit FROM revisions WHERE number = 1")[0][0]
    before = (remote.revisions(), remote.deploys())
    older = remote.sync("--ref", first)
    assert older.code == 2 and f"commit {first[:12]} is older than the live commit" in older.err, older.text
    assert "--allow-rewind" in older.err and "Traceback" not in older.err

    git(remote.repos.clone, "reset", "-q", "--hard", "HEAD~1")
    rewritten = remote.commit_version("rewritten")
    push = remote.push("--force", "main")
    assert _said(
        push,
        f"fnctl: main: REFUSED, nothing deployed: commit {rewritten[:12]} does not descend from the "
        f"live commit {tip[:12]} ({subject}): the branch was rewritten (force-push?) "
        "or another branch was given.",
    ), push.stderr
    assert "To go back, push a revert on top of the live commit" in push.stderr  # not a flag a pusher cannot pass
    assert (remote.revisions(), remote.deploys()) == before and remote.live()[0] == live

    git(remote.repos.clone, "reset", "-q", "--hard", tip)
    push = remote.push("--force", "main")
    assert _said(push, f"fnctl: main: DEPLOYED {tip[:12]}") and "already live: nothing to do" in push.stderr
    assert (remote.revisions(), remote.deploys()) == before


def test_two_quick_pushes_deploy_one_after_the_other_in_order(remote: Remote) -> None:
    remote.ensure_live()
    lock = Path(str(remote.project.state) + ".lock")
    first = remote.commit_version("quick-1")
    pushing = subprocess.Popen(
        ["git", "push", "origin", "main"],
        cwd=remote.repos.clone,
        stderr=subprocess.PIPE,
        text=True,
        env=git_environ(remote.project.environ()),
    )
    try:
        # The first push's hook holds the store's lock while it deploys; the second push lands meanwhile.
        until(lambda: lock.exists() and "sync" in lock.read_text(), "the first push's deploy to hold the lock")
        second = remote.commit_version("quick-2")
        push = remote.push("main")
    finally:
        first_push = pushing.communicate(timeout=300)[1]
    assert pushing.returncode == 0 and f"fnctl: main: DEPLOYED {first[:12]}" in first_push, first_push
    assert _said(push, f"fnctl: main: DEPLOYED {second[:12]}"), push.stderr

    revisions = remote.revisions()
    assert [commit for _, commit, _ in revisions[-2:]] == [first, second]
    assert remote.live() == (revisions[-1][0], second)
    assert [row[1] for row in remote.deploys()[-2:]] == [first, second]
    # Never at once: everything the first deploy did is audited before anything of the second.
    by_commit = {
        sha: [row[0] for row in remote.rows("SELECT id FROM audit WHERE git_commit = ?", (sha,))]
        for sha in (first, second)
    }
    assert by_commit[first] and by_commit[second] and max(by_commit[first]) < min(by_commit[second])
    remote.project.assert_consistent()


def test_rollback_is_not_undone_by_a_sync_but_a_new_commit_deploys(remote: Remote) -> None:
    remote.ensure_live(2)
    bad_revision, bad_commit = remote.live()
    rolled = remote.project.ok("rollback", "hello")
    assert remote.live()[0] == bad_revision - 1, rolled.text
    before = (remote.revisions(), remote.deploys())

    again = remote.sync("--ref", "main")
    assert again.code == 1 and "refusing to redeploy a rolled-back revision" in again.err, again.text
    assert "Revert the commit or push a fix" in again.err and "Traceback" not in again.err
    readme = remote.repos.commit("Document the rollback", {"README.md": "rolled back\n"})
    push = remote.push("main")
    assert _said(push, "fnctl: main: FAILED, nothing deployed: refusing to redeploy a rolled-back revision:"), (
        push.stderr
    )
    assert (remote.revisions(), remote.deploys()) == before and remote.live()[0] == bad_revision - 1

    fix = remote.commit_version("fixed")
    push = remote.push("main")
    assert _said(push, f"fnctl: main: DEPLOYED {fix[:12]}"), push.stderr
    assert remote.live() == (bad_revision + 1, fix)
    assert bad_commit != fix and readme not in {row[1] for row in remote.deploys()}
    remote.project.assert_consistent()


def test_apply_from_a_dirty_work_tree_then_sync_deploys_the_commit(remote: Remote) -> None:
    remote.ensure_live()
    manifest = remote.repos.clone / MANIFEST
    committed, head = manifest.read_text(), remote.repos.head()
    manifest.write_text(hello_manifest(remote.repos.clone, version="uncommitted"))
    refused = remote.project.fnctl("apply")
    assert refused.code == 2 and "uncommitted changes" in refused.err and MANIFEST in refused.err, refused.text
    dirty = remote.project.ok("apply", "--allow-dirty")
    number, commit = remote.live()
    assert commit == head and "is live" in dirty.out
    assert remote.deploys()[-1] == ("apply", head, "ok", 1)

    manifest.write_text(committed)
    synced = remote.sync("--ref", "main")  # the same commit, but what runs is not what it holds
    assert synced.code == 0 and f"deploying commit {head[:12]}" in synced.err, synced.text
    assert remote.live() == (number + 1, head)
    recorded = remote.deploys()
    assert recorded[-1] == ("sync", head, "ok", 0)
    assert "nothing to do" in remote.sync("--ref", "main").err and remote.deploys() == recorded


# ---- pull mode --------------------------------------------------------------------------------------------------


@dataclass
class Watcher:
    """`fnctl sync --watch --interval 1s` as a subprocess, its output in files."""

    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    def text(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)


def _watch(remote: Remote, name: str) -> Watcher:
    out, err = remote.project.state.parent / f"{name}.out", remote.project.state.parent / f"{name}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fnctl",
                "sync",
                "--repo",
                str(remote.repos.bare),
                "--ref",
                "main",
                "--watch",
                "--interval",
                "1s",
            ],
            cwd=remote.repos.clone,
            env=remote.project.environ(),
            stdout=stdout,
            stderr=stderr,
        )
    return Watcher(process, out, err)


def _fetches(remote: Remote) -> int:
    """When the mirror last fetched (ns): each round of the watcher fetches once."""
    mirror = Mirror(str(remote.repos.bare), Path(remote.project.env["XDG_CACHE_HOME"]) / "fnctl" / "git")
    return (mirror.path / "FETCH_HEAD").stat().st_mtime_ns


def _after_rounds(remote: Remote, watcher: Watcher, rounds: int) -> None:
    """Wait until the watcher has started `rounds` more rounds (each begins with a fetch): all but the last
    have finished."""
    for _ in range(rounds):
        seen = _fetches(remote)
        until(lambda: _fetches(remote) != seen or watcher.process.poll() is not None, "the watcher's next round")


def test_pull_mode_deploys_heals_and_restarts_without_deploying_twice(remote: Remote) -> None:
    remote.ensure_live()
    uninstalled = remote.project.ok("hook", "uninstall", "--repo", str(remote.repos.bare))
    assert "removed" in uninstalled.out
    watcher = _watch(remote, "watch-1")
    try:
        # A commit pushed (no hook any more) is picked up.
        pulled = remote.commit_version("pulled")
        push = remote.push("main")
        assert "fnctl:" not in push.stderr
        until(
            lambda: remote.live()[1] == pulled and _consistent(remote),
            "the watcher to deploy the pushed commit",
            timeout=120,
        )
        number = remote.live()[0]

        # Drift: the instance's container is removed behind fnctl's back; the watcher starts another.
        killed = set(remote.project.instance_containers("hello").values())
        for container in killed:
            with contextlib.suppress(docker.errors.NotFound):  # the watcher's own check may have replaced it
                remote.project.client.api.remove_container(container, force=True)
        until(lambda: _healed(remote, killed), "the watcher to heal the removed instance", timeout=120)
        assert remote.live() == (number, pulled)

        # A commit that fails its health check fails once, and is not tried again every round.
        broken = remote.commit_version("broken", greeting="bye")
        remote.push("main")
        until(
            lambda: "pull mode does not retry it" in watcher.text(),
            "the watcher to give up on the failed commit",
            timeout=120,
        )
        _after_rounds(remote, watcher, 2)
        assert [status for _, commit, status in remote.revisions() if commit == broken] == ["failed"]
        assert remote.live() == (number, pulled)

        fixed = remote.commit_version("after the broken one")
        remote.push("main")
        until(lambda: remote.live()[1] == fixed, "the watcher to deploy the fix", timeout=120)
    finally:
        code = watcher.stop()
    assert code == 0, watcher.text()
    assert "Traceback" not in watcher.text()
    remote.project.assert_consistent()

    before = (remote.revisions(), remote.deploys(), remote.project.instance_containers("hello"))
    again = _watch(remote, "watch-2")
    try:
        _after_rounds(remote, again, 2)
    finally:
        code = again.stop()
    assert code == 0, again.text()
    assert "deploying commit" not in again.text() and "error" not in again.text(), again.text()
    assert (remote.revisions(), remote.deploys(), remote.project.instance_containers("hello")) == before


def _healed(remote: Remote, killed: set[str]) -> bool:
    containers = set(remote.project.instance_containers("hello").values())
    return bool(containers) and not containers & killed and _consistent(remote)


def _consistent(remote: Remote) -> bool:
    """The store and the engine agree (the watcher finished its round); see `Project.assert_consistent`."""
    try:
        remote.project.assert_consistent()
    except AssertionError:
        return False
    return True


def test_a_push_to_another_branch_previews_it_without_traffic(remote: Remote) -> None:
    remote.ensure_live()
    remote.project.ok(
        "hook", "install", "--repo", str(remote.repos.bare), "--state", remote.project.location.to_arg(), "--preview"
    )
    live, live_commit = remote.live()
    before = remote.deploys()
    git(remote.repos.clone, "switch", "-q", "-c", "try-it")
    preview = remote.commit_version("preview")
    push = remote.push("try-it")
    assert _said(push, f"fnctl: try-it: previewing {preview[:12]}"), push.stderr
    assert _said(push, f"fnctl: try-it: PREVIEWED (no traffic) {preview[:12]}"), push.stderr
    number = max(n for n, commit, _ in remote.revisions() if commit == preview)
    with remote.project.store() as store:
        assert store.routes()["hello"] == {live: 100, number: 0}
    assert (number, preview, "preview") in remote.revisions()
    pinned = remote.project.ok("invoke", "hello", "--revision", str(number), "-d", '{"name": "preview"}')
    assert json.loads(pinned.out) == {"message": "hello preview"}
    assert remote.project.invoke("hello", {"name": "ada"}) == {"message": "hello ada"}
    # A preview is not the live commit: main's tip is still what a sync compares with.
    assert remote.deploys() == before and remote.rows("SELECT preview FROM deploys ORDER BY id DESC LIMIT 1") == [(1,)]
    git(remote.repos.clone, "switch", "-q", "main")
    again = remote.sync("--ref", "main")
    assert again.code == 0 and "nothing to do" in again.err and remote.live() == (live, live_commit), again.text
