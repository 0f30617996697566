"""GitOps without a Docker engine: the pure rules (`deploys.decide`, `hooks.actions`), the hook's install and
uninstall, fnctl's repository cache (`gitrepo.Mirror`) on real repositories in a temporary folder, and every
refusal of `fnctl sync` and `fnctl apply` that happens before anything is deployed.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from gitops_helpers import AUTHOR, Repos, fnctl, git, make_repos

from fnctl.commands.sync import RewindRefused, SyncOptions, SyncReport, sync, watch
from fnctl.deploy.session import Options
from fnctl.errors import ExitCode, FnctlError
from fnctl.gitops import deploys, hooks
from fnctl.gitops.commit import Commit, Relation
from fnctl.gitops.deploys import Decision, Deploy
from fnctl.gitops.gitrepo import GitError, Mirror, UnknownRef, work_tree
from fnctl.gitops.hooks import Act, HookConfig
from fnctl.state.location import StateLocation
from fnctl.state.store import Store, connect

# ---- deploys.decide ---------------------------------------------------------------------------------------------

LIVE = "a" * 40


def _record(store: Store, commit: Commit, *, at: float, source: str, ref: str | None, preview: bool = False) -> None:
    """A sync by ada that went well, of `commit` (from `source`, `ref`), as deploys.record writes it."""
    deploys.record(
        store,
        at=at,
        actor="ada",
        command="sync",
        source=source,
        ref=ref,
        commit=commit,
        dirty=False,
        preview=preview,
        outcome="ok",
    )


def _deploy(outcome: str = "ok", *, dirty: bool = False, mark: int = 7, command: str = "sync") -> Deploy:
    return Deploy(
        1, 1.0, "ada", command, "/srv/git/fns.git", "main", Commit(LIVE, AUTHOR, "live"), dirty, False, outcome, mark
    )


@pytest.mark.parametrize(
    ("last", "relation", "mark", "pulling", "expected"),
    [
        pytest.param(None, None, 0, False, Decision.DEPLOY, id="first-deploy"),
        pytest.param(None, None, 0, True, Decision.DEPLOY, id="first-deploy-pulling"),
        pytest.param(_deploy(), Relation.SAME, 7, False, Decision.NOTHING, id="live-and-untouched"),
        pytest.param(_deploy(), Relation.SAME, 7, True, Decision.NOTHING, id="live-and-untouched-pulling"),
        pytest.param(_deploy(), Relation.SAME, 9, False, Decision.DEPLOY, id="changed-since: rollback"),
        pytest.param(_deploy(), Relation.SAME, 9, True, Decision.NOTHING, id="changed-since-pulling: drift check only"),
        pytest.param(_deploy(dirty=True), Relation.SAME, 7, False, Decision.DEPLOY, id="dirty-apply-of-that-commit"),
        pytest.param(_deploy("failed"), Relation.SAME, 7, False, Decision.DEPLOY, id="failed: sync retries"),
        pytest.param(_deploy("failed"), Relation.SAME, 7, True, Decision.FAILED, id="failed: pull mode does not"),
        pytest.param(_deploy("failed"), Relation.SAME, 9, True, Decision.NOTHING, id="failed-then-changed-pulling"),
        pytest.param(_deploy("waiting"), Relation.SAME, 7, False, Decision.DEPLOY, id="waiting-at-a-gate"),
        pytest.param(_deploy("waiting"), Relation.SAME, 7, True, Decision.NOTHING, id="waiting-at-a-gate-pulling"),
        pytest.param(_deploy("rolled-back"), Relation.SAME, 7, False, Decision.DEPLOY, id="rolled-back"),
        pytest.param(_deploy(), Relation.AHEAD, 7, False, Decision.DEPLOY, id="ahead"),
        pytest.param(_deploy(), Relation.AHEAD, 9, True, Decision.DEPLOY, id="ahead-pulling"),
        pytest.param(_deploy("failed"), Relation.AHEAD, 7, True, Decision.DEPLOY, id="ahead-of-a-failed-one"),
        pytest.param(_deploy(), Relation.BEHIND, 7, False, Decision.REWIND, id="behind"),
        pytest.param(_deploy(), Relation.BEHIND, 7, True, Decision.REWIND, id="behind-pulling"),
        pytest.param(_deploy(), Relation.DIVERGED, 7, False, Decision.DIVERGED, id="diverged"),
        pytest.param(_deploy(dirty=True), Relation.DIVERGED, 7, False, Decision.DIVERGED, id="diverged-from-dirty"),
        pytest.param(_deploy(), Relation.UNKNOWN, 7, False, Decision.DIVERGED, id="synced-commit-gone: rewritten"),
        pytest.param(
            _deploy(command="apply"),
            Relation.UNKNOWN,
            7,
            True,
            Decision.DEPLOY,
            id="applied-commit-never-pushed: the repository takes over",
        ),
    ],
)
def test_decide(last: Deploy | None, relation: Relation | None, mark: int, pulling: bool, expected: Decision) -> None:
    assert deploys.decide(last, "b" * 40, relation, mark, pulling=pulling) is expected


def test_deploy_record_last_ignores_previews_and_is_append_only(tmp_path: Path) -> None:
    store = connect(tmp_path / "state.db")
    try:
        assert deploys.last(store) is None
        store.audit(actor="ada", command="sync", action="route", target="hello", outcome="ok")
        main, preview = Commit("1" * 40, AUTHOR, "main"), Commit("2" * 40, AUTHOR, "preview")
        _record(store, main, at=5.0, source="/r.git", ref="main")
        _record(store, preview, at=6.0, source="/r.git", ref="feature", preview=True)
        last = deploys.last(store)
        assert last is not None and last.commit == main and last.audit_mark == deploys.audit_mark(store) == 1
        assert (last.command, last.ref, last.outcome, last.dirty, last.preview) == ("sync", "main", "ok", False, False)
        with pytest.raises(FnctlError, match="append-only"):
            store.raw().execute("UPDATE deploys SET outcome = 'failed'")
        with pytest.raises(FnctlError, match="append-only"):
            store.raw().execute("DELETE FROM deploys")
    finally:
        store.close()


def test_mark_since_leaves_out_what_previews_wrote(tmp_path: Path) -> None:
    store = connect(tmp_path / "state.db")

    def audit(what: str) -> float:
        store.audit(actor="ada", command="sync", action=what, target="hello", outcome="ok")
        return float(store.raw().query("SELECT at FROM audit ORDER BY id DESC LIMIT 1")[0][0])

    def record(preview: bool, at: float) -> None:
        _record(
            store,
            Commit(("2" if preview else "1") * 40, AUTHOR, "s"),
            at=at,
            source="/r.git",
            ref=None,
            preview=preview,
        )

    try:
        audit("route")
        record(False, 1.0)
        last = deploys.last(store)
        assert last is not None and deploys.mark_since(store, last) == last.audit_mark == 1
        began = audit("route")  # a preview's own entries: from its start to its record
        audit("route")
        record(True, began)
        assert deploys.mark_since(store, last) == last.audit_mark
        rolled = audit("quarantine")  # a rollback, then another preview: the rollback still counts
        record(True, max(audit("route"), rolled + 1e-6))
        assert deploys.mark_since(store, last) >= 4 > last.audit_mark
    finally:
        store.close()


# ---- hooks.actions ----------------------------------------------------------------------------------------------

OLD, NEW, ZERO = "1" * 40, "2" * 40, "0" * 40


def test_actions_main_deploys_others_are_ignored_in_push_order() -> None:
    lines = [
        f"{OLD} {NEW} refs/heads/feature",
        f"{ZERO} {NEW} refs/heads/main",
        f"{ZERO} {NEW} refs/tags/v1",
        "not a ref update",
        "",
        f"{OLD} {NEW} refs/heads/mainline",
    ]
    found = hooks.actions(lines, "main", preview=False)
    assert [(a.act, a.ref) for a in found] == [
        (Act.IGNORE, "refs/heads/feature"),
        (Act.DEPLOY, "refs/heads/main"),
        (Act.IGNORE, "refs/tags/v1"),
        (Act.IGNORE, "refs/heads/mainline"),
    ]
    assert found[1].sha == NEW and found[1].reason == ""
    assert found[0].reason == "deploys follow refs/heads/main"


def test_actions_preview_other_branches_not_tags() -> None:
    lines = [f"{OLD} {NEW} refs/heads/feature/x", f"{OLD} {NEW} refs/heads/production", f"{OLD} {NEW} refs/tags/v2"]
    assert [a.act for a in hooks.actions(lines, "production", preview=True)] == [Act.PREVIEW, Act.DEPLOY, Act.IGNORE]


def test_actions_a_deleted_branch_deploys_nothing() -> None:
    for preview in (False, True):
        found = hooks.actions([f"{OLD} {ZERO} refs/heads/main", f"{OLD} {ZERO} refs/heads/feature"], "main", preview)
        assert [a.act for a in found] == [Act.IGNORE, Act.IGNORE]
        assert all("deleted" in a.reason for a in found)


# ---- hook install / uninstall -----------------------------------------------------------------------------------


@pytest.fixture
def repos(tmp_path: Path) -> Repos:
    return make_repos(tmp_path, "gitops-logic")


def test_hook_install_writes_an_executable_hook_calling_this_fnctl(repos: Repos, tmp_path: Path) -> None:
    hook = hooks.install(
        HookConfig(repos.bare, "production", preview=True, state=StateLocation(Path("state.db")), path="deploy")
    )
    assert hook == repos.bare.resolve() / "hooks" / "post-receive" and os.access(hook, os.X_OK)
    text = hook.read_text()
    assert text.startswith("#!/bin/sh\n") and hooks.MARK in text
    assert "hook run --repo" in text and "--branch production --preview" in text and "--path deploy" in text
    assert f"--state {Path('state.db').resolve()}" in text  # absolute: the hook runs in the bare repository
    assert "--no-wait" not in text  # by default a push returns once its rollouts settle
    hooks.install(HookConfig(repos.bare, wait=False))  # fnctl's own hook is replaced without --force
    assert "--preview" not in hook.read_text() and hook.read_text().rstrip().endswith("--branch main --no-wait")


def test_hook_install_refuses_a_repository_that_is_not_bare(repos: Repos, tmp_path: Path) -> None:
    for where in (repos.clone, tmp_path / "nothing-here"):
        done = fnctl("hook", "install", "--repo", str(where), cwd=tmp_path, env={})
        assert done.returncode == ExitCode.BAD_INPUT, done.stderr
        assert "is not a bare git repository" in done.stderr and "Traceback" not in done.stderr
    assert not (repos.clone / ".git" / "hooks" / "post-receive").exists()


def test_hook_install_refuses_a_state_url_with_a_password(repos: Repos, tmp_path: Path) -> None:
    """The hook is a plain file: a PostgreSQL password in --state would be stored there for anyone to read."""
    url = "postgresql://fnctl:s3cret-pw@db.example/fnctl"
    done = fnctl("hook", "install", "--repo", str(repos.bare), "--state", url, cwd=tmp_path, env={})
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert "password" in done.stderr and ".pgpass" in done.stderr and "s3cret-pw" not in done.stderr + done.stdout
    assert not (repos.bare / "hooks" / "post-receive").exists()
    hook = hooks.install(HookConfig(repos.bare, state=StateLocation(Path("anchor"), "postgresql://fnctl@db/fnctl")))
    assert "postgresql://fnctl@db/fnctl" in hook.read_text()  # a URL without a password is written as given


def test_hook_install_refuses_a_foreign_hook_without_force(repos: Repos, tmp_path: Path) -> None:
    hook = repos.bare / "hooks" / "post-receive"
    hook.write_text("#!/bin/sh\necho mail the team\n")
    done = fnctl("hook", "install", "--repo", str(repos.bare), cwd=tmp_path, env={})
    assert done.returncode == ExitCode.BAD_INPUT and "is not fnctl's" in done.stderr and "--force" in done.stderr
    assert hook.read_text() == "#!/bin/sh\necho mail the team\n"
    forced = fnctl("hook", "install", "--repo", str(repos.bare), "--force", cwd=tmp_path, env={})
    assert forced.returncode == 0, forced.stderr
    assert hooks.MARK in hook.read_text()


def test_hook_uninstall_removes_only_fnctls_hook(repos: Repos, tmp_path: Path) -> None:
    hook = repos.bare / "hooks" / "post-receive"
    hooks.install(HookConfig(repos.bare))
    done = fnctl("hook", "uninstall", "--repo", str(repos.bare), cwd=tmp_path, env={})
    assert done.returncode == 0 and "removed" in done.stdout and not hook.exists()
    again = fnctl("hook", "uninstall", "--repo", str(repos.bare), cwd=tmp_path, env={})
    assert again.returncode == 0 and "nothing to remove" in again.stdout
    hook.write_text("#!/bin/sh\necho mail the team\n")
    foreign = fnctl("hook", "uninstall", "--repo", str(repos.bare), cwd=tmp_path, env={})
    assert foreign.returncode == ExitCode.BAD_INPUT and "left as it is" in foreign.stderr
    assert hook.read_text() == "#!/bin/sh\necho mail the team\n"


# ---- gitrepo: the mirror, on real repositories ------------------------------------------------------------------


def _history(repos: Repos) -> tuple[str, str, str]:
    """Three commits on main (one tagged v1), pushed; `f.txt` holds the commit's number."""
    first = repos.commit("one", {"f.txt": "1\n"})
    git(repos.clone, "tag", "-a", "v1", "-m", "release one")
    second = repos.commit("two", {"f.txt": "2\n"})
    third = repos.commit("three", {"f.txt": "3\n"})
    git(repos.clone, "push", "-q", "origin", "main", "--tags")
    return first, second, third


def _checkout(mirror: Mirror, ref: str | None) -> Commit:
    with mirror.checkout(ref) as (_, commit):
        return commit


def test_mirror_checks_out_a_branch_a_tag_a_sha_and_an_abbreviated_sha(repos: Repos, tmp_path: Path) -> None:
    first, second, third = _history(repos)
    mirror = Mirror(str(repos.bare), tmp_path / "cache")
    for ref, sha, content in (
        ("main", third, "3\n"),
        ("v1", first, "1\n"),
        (second, second, "2\n"),
        (first[:9], first, "1\n"),
        (None, third, "3\n"),
    ):
        with mirror.checkout(ref) as (tree, commit):
            pass
        assert commit == Commit(sha, AUTHOR, {first: "one", second: "two", third: "three"}[sha]), ref
        assert tree.name == sha and (tree / "f.txt").read_text() == content, ref
    # A branch whose name looks like an abbreviated commit is the branch.
    git(repos.clone, "push", "-q", "origin", f"{second}:refs/heads/c0ffee1")
    assert _checkout(mirror, "c0ffee1").sha == second
    # One work tree per commit, side by side: two syncs never read each other's files.
    assert sorted(p.name for p in (mirror.path / "checkouts").iterdir()) == sorted({first, second, third})
    # The mirror is fnctl's own: the remote's URL, as git is given it, names it.
    assert Mirror(str(repos.bare) + "/", tmp_path / "cache").path == mirror.path


def test_mirror_relation_ahead_behind_and_diverged_after_a_force_push(repos: Repos, tmp_path: Path) -> None:
    first, second, third = _history(repos)
    mirror = Mirror(str(repos.bare), tmp_path / "cache")
    _checkout(mirror, "main")  # shallow: the relation fetches what it needs
    assert mirror.relation(first, third) is Relation.AHEAD
    assert mirror.relation(third, second) is Relation.BEHIND
    assert mirror.relation(third, third) is Relation.SAME
    git(repos.clone, "reset", "-q", "--hard", first)
    rewritten = repos.commit("two, rewritten", {"f.txt": "2b\n"})
    git(repos.clone, "push", "-q", "--force", "origin", "main")
    commit = _checkout(mirror, "main")
    assert commit.sha == rewritten
    assert mirror.relation(third, rewritten) is Relation.DIVERGED
    assert mirror.relation(first, rewritten) is Relation.AHEAD
    # A fresh cache, once the old history is gone from the remote: the live commit cannot even be fetched.
    git(repos.bare, "reflog", "expire", "--expire=now", "--all")
    git(repos.bare, "gc", "-q", "--prune=now")
    fresh = Mirror(str(repos.bare), tmp_path / "fresh")
    _checkout(fresh, "main")
    assert fresh.relation(third, rewritten) is Relation.UNKNOWN  # gone: `decide` tells rewritten from unpushed
    assert fresh.relation(first, rewritten) is Relation.AHEAD


def test_mirror_keeps_the_newest_work_trees_and_those_in_use(repos: Repos, tmp_path: Path) -> None:
    shas = [repos.commit(f"commit {n}", {"f.txt": f"{n}\n"}) for n in range(8)]
    git(repos.clone, "push", "-q", "origin", "main")
    cache = tmp_path / "cache"
    queued = Mirror(str(repos.bare), cache)
    with queued.checkout(shas[0]) as (held, _):
        for sha in shas[1:7]:  # other syncs meanwhile, in other processes: other mirror objects
            _checkout(Mirror(str(repos.bare), cache), sha)
        assert (held / "f.txt").read_text() == "0\n", "a work tree in use was pruned"
        assert not (queued.path / "checkouts" / shas[1]).exists()
    _checkout(Mirror(str(repos.bare), cache), shas[7])
    assert sorted(p.name for p in (queued.path / "checkouts").iterdir()) == sorted(shas[3:])


def test_mirror_unknown_refs_are_bad_input(repos: Repos, tmp_path: Path) -> None:
    _history(repos)
    mirror = Mirror(str(repos.bare), tmp_path / "cache")
    for ref in ("no-such-branch", "deadbeef", "f" * 40, "bad..name"):
        with pytest.raises(UnknownRef) as raised:
            _checkout(mirror, ref)
        assert raised.value.exit_code is ExitCode.BAD_INPUT and ref in raised.value.message
    empty = tmp_path / "empty.git"
    git(tmp_path, "init", "-q", "--bare", str(empty))
    with pytest.raises(UnknownRef, match="--ref BRANCH"):
        _checkout(Mirror(str(empty), tmp_path / "cache"), None)


def test_mirror_unreachable_repository_is_a_git_error(tmp_path: Path) -> None:
    for url in (str(tmp_path / "missing.git"), "https://127.0.0.1:9/functions.git"):
        with pytest.raises(GitError, match="cannot reach the repository") as raised:
            _checkout(Mirror(url, tmp_path / "cache"), "main")
        assert raised.value.exit_code is ExitCode.FAILED


def test_work_tree_lists_uncommitted_and_untracked_paths(repos: Repos) -> None:
    sha = repos.commit("init")
    clean = work_tree(repos.clone)
    assert clean is not None and clean.commit == Commit(sha, AUTHOR, "init") and clean.dirty == ()
    (repos.clone / "manifests" / "hello.yaml").write_text("changed\n")
    repos.write("manifests/new.yaml", "new\n")
    dirty = work_tree(repos.clone / "manifests")
    root = repos.clone.resolve()
    assert dirty is not None and sorted(dirty.dirty) == [root / "manifests/hello.yaml", root / "manifests/new.yaml"]
    assert work_tree(repos.bare.parent) is None  # not inside any work tree


# ---- fnctl sync: refusals before anything is deployed -----------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "FNCTL_STATE": str(tmp_path / "state" / "state.db"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "FNCTL_BASE_IMAGE": "fnctl-base:bookworm",
    }


def _deploy_rows(tmp_path: Path) -> int:
    path = tmp_path / "state" / "state.db"
    if not path.exists():
        return 0
    store = connect(path)
    try:
        return int(store.raw().query("SELECT COUNT(*) FROM deploys")[0][0])
    finally:
        store.close()


def _sync(tmp_path: Path, repos: Repos, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    done = fnctl("sync", "--repo", str(repos.bare), *args, cwd=tmp_path, env=env or _env(tmp_path))
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout + done.stderr


def test_sync_unknown_ref_and_unreachable_repository(repos: Repos, tmp_path: Path) -> None:
    _history(repos)
    code, text = _sync(tmp_path, repos, "--ref", "no-such-branch")
    assert code == ExitCode.BAD_INPUT and "has no branch, tag or commit no-such-branch" in text
    done = fnctl("sync", "--repo", str(tmp_path / "missing.git"), cwd=tmp_path, env=_env(tmp_path))
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert done.stderr.startswith("error: cannot reach the repository") and "Traceback" not in done.stderr
    assert _deploy_rows(tmp_path) == 0


def _refusal(
    tmp_path: Path, repos: Repos, ref: str | None = None, path: str | None = None, *, state: bool = True
) -> FnctlError:
    """What `fnctl sync` (in this process) refuses with."""
    options = SyncOptions(
        str(repos.bare),
        ref,
        path,
        cache=tmp_path / "cache" / "fnctl" / "git",
        apply=Options(state=StateLocation(tmp_path / "state" / "state.db") if state else None),
    )
    with pytest.raises(FnctlError) as raised:
        sync(options, lambda line: None)
    return raised.value


def test_sync_refuses_a_commit_without_manifests(repos: Repos, tmp_path: Path) -> None:
    shutil.rmtree(repos.clone / "manifests")
    repos.commit("no manifests")
    git(repos.clone, "push", "-q", "origin", "main")
    refused = _refusal(tmp_path, repos, "main")
    assert refused.exit_code is ExitCode.BAD_INPUT
    assert refused.message == "the commit has no manifests under manifests (pass --path to name where they are)"
    assert "no manifests under functions" in _refusal(tmp_path, repos, "main", "functions").message
    assert _deploy_rows(tmp_path) == 0


def test_sync_refuses_a_path_out_of_the_repository(repos: Repos, tmp_path: Path) -> None:
    repos.commit("init")
    git(repos.clone, "push", "-q", "origin", "main")
    for path in ("../x", "/etc", "manifests/../../.."):
        refused = _refusal(tmp_path, repos, path=path)
        assert (refused.exit_code, refused.message) == (
            ExitCode.BAD_INPUT,
            f"--path {path} leads out of the repository",
        )
    assert _deploy_rows(tmp_path) == 0


def test_sync_refuses_manifests_out_of_the_repository_and_names_files_as_it_does(repos: Repos, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(repos.clone / "manifests", outside)
    for manifests in (str(outside), "../../../../../../../../../../.."):
        repos.commit(
            f"manifests at {manifests}", {"fnctl.toml": f'[project]\nname = "x"\nmanifests = ["{manifests}"]\n'}
        )
        git(repos.clone, "push", "-q", "origin", "main")
        refused = _refusal(tmp_path, repos)
        assert refused.message == f"fnctl.toml's project.manifests {manifests} leads out of the repository"
    # A problem found inside the checkout names the file as the repository does, and the repository.
    repos.commit(
        "a source out of the project",
        {
            "fnctl.toml": '[project]\nname = "x"\nmanifests = ["manifests"]\n',
            "manifests/hello.yaml": (repos.clone / "manifests" / "hello.yaml")
            .read_text()
            .replace("source: ../functions/hello", "source: ../../outside"),
        },
    )
    git(repos.clone, "push", "-q", "origin", "main")
    refused = _refusal(tmp_path, repos)
    assert refused.message.startswith("the manifests are invalid:\nmanifests/hello.yaml:"), refused.message
    assert str(tmp_path / "cache") not in refused.message and str(repos.bare) in refused.message
    assert _deploy_rows(tmp_path) == 0


def test_sync_refuses_symbolic_links_out_of_the_repository(repos: Repos, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("do not ship me\n")
    os.symlink(secret, repos.clone / "functions" / "hello" / "config.txt")
    os.symlink("../../..", repos.clone / "functions" / "up")
    os.symlink("main.py", repos.clone / "functions" / "hello" / "alias.py")  # inside: fine
    repos.commit("links")
    git(repos.clone, "push", "-q", "origin", "main")
    code, text = _sync(tmp_path, repos)
    assert code == ExitCode.BAD_INPUT and "symbolic links that lead out of the repository" in text, text
    assert f"functions/hello/config.txt -> {secret}" in text and "functions/up -> ../../.." in text
    assert "alias.py" not in text
    assert _deploy_rows(tmp_path) == 0 and not (tmp_path / "state").exists()


def test_sync_refuses_a_state_path_inside_the_checkout(
    repos: Repos, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = (repos.clone / "fnctl.toml").read_text()
    repos.commit("state in the repository", {"fnctl.toml": config + '\n[state]\npath = ".fnctl/state.db"\n'})
    git(repos.clone, "push", "-q", "origin", "main")
    monkeypatch.delenv("FNCTL_STATE", raising=False)
    refused = _refusal(tmp_path, repos, state=False)
    assert refused.exit_code is ExitCode.BAD_INPUT and "state.path lies inside the repository" in refused.message
    assert "pass --state or set FNCTL_STATE" in refused.message
    assert not list((tmp_path / "cache").rglob("state.db"))


def test_sync_of_the_live_commit_does_nothing(repos: Repos, tmp_path: Path) -> None:
    sha = repos.commit("init")
    git(repos.clone, "push", "-q", "origin", "main")
    store = connect(tmp_path / "state" / "state.db")
    try:  # as a deploy of this commit leaves the store (the Docker tests do it for real)
        _record(store, Commit(sha, AUTHOR, "init"), at=1.0, source=str(repos.bare), ref="main")
    finally:
        store.close()
    code, text = _sync(tmp_path, repos, "--ref", "main")
    assert code == 0 and f"commit {sha[:12]} is already live: nothing to do" in text, text
    json_out = fnctl("sync", "--repo", str(repos.bare), "-o", "json", cwd=tmp_path, env=_env(tmp_path))
    assert json_out.returncode == 0, json_out.stderr
    assert '"decision": "nothing"' in json_out.stdout and f'"sha": "{sha}"' in json_out.stdout
    assert _deploy_rows(tmp_path) == 1


def test_sync_of_an_older_commit_is_refused(repos: Repos, tmp_path: Path) -> None:
    first, _, third = _history(repos)
    store = connect(tmp_path / "state" / "state.db")
    try:
        _record(store, Commit(third, AUTHOR, "three"), at=1.0, source=str(repos.bare), ref="main")
    finally:
        store.close()
    refused = _refusal(tmp_path, repos, "v1")
    assert isinstance(refused, RewindRefused) and refused.exit_code is ExitCode.BAD_INPUT
    assert refused.message.startswith(f"commit {first[:12]} is older than the live commit {third[:12]} (three)")
    assert "--allow-rewind" in refused.message
    assert _deploy_rows(tmp_path) == 1

    # Made live by `fnctl apply` from a laptop, with a commit the repository never had: git cannot order the
    # two, and `decide` lets the repository take over (the table above), instead of blocking every push.
    mirror = Mirror(str(repos.bare), tmp_path / "cache" / "fnctl" / "git")
    assert mirror.relation("e" * 40, third) is Relation.UNKNOWN


# ---- fnctl apply in a git work tree -----------------------------------------------------------------------------


def test_apply_refuses_a_dirty_work_tree_naming_the_files(repos: Repos, tmp_path: Path) -> None:
    repos.commit("init")
    (repos.clone / "functions" / "hello" / "main.py").write_text("def handler(event):\n    return 1\n")
    manifest = (repos.clone / "manifests" / "hello.yaml").read_text()
    function = manifest[: manifest.index("---")].replace("name: hello", "name: extra")
    repos.write("manifests/extra.yaml", function)  # not committed yet
    repos.write("NOTES.md", "not deployed: not a reason to refuse\n")
    done = fnctl("apply", cwd=repos.clone, env=_env(tmp_path))
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert "uncommitted changes in what would be deployed" in done.stderr and "--allow-dirty" in done.stderr
    assert "functions/hello/main.py" in done.stderr and "manifests/extra.yaml" in done.stderr
    assert "NOTES.md" not in done.stderr
    assert _deploy_rows(tmp_path) == 0


# ---- pull mode's loop -------------------------------------------------------------------------------------------


def test_watch_reports_a_repeated_error_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from fnctl.commands import sync as sync_module

    stop = threading.Event()
    results: list[SyncReport | FnctlError] = [
        GitError("unreachable"),
        GitError("unreachable"),
        SyncReport("r", Commit(LIVE, AUTHOR, "s"), Decision.HEAL),
        GitError("unreachable"),
        GitError("other"),
        GitError("other"),
    ]
    calls: list[SyncOptions] = []

    def fake_sync(options: SyncOptions, progress: object) -> SyncReport:
        calls.append(options)
        if len(calls) == len(results):
            stop.set()
        result = results[len(calls) - 1]
        if isinstance(result, FnctlError):
            raise result
        return result

    monkeypatch.setattr(sync_module, "sync", fake_sync)
    reported: list[SyncReport | FnctlError] = []
    watch(SyncOptions("r"), 0.0, lambda line: None, stop, reported.append)
    assert len(calls) == len(results) and all(options.heal for options in calls)
    assert [r.message if isinstance(r, FnctlError) else "report" for r in reported] == [
        "unreachable",
        "report",
        "unreachable",
        "other",
    ]


def test_mark_since_leaves_out_keys_and_rollout_requests(tmp_path: Path) -> None:
    """A key made or revoked, or a promote/abort request, leaves the deployment as it was: the next sync of the
    live commit has nothing to do. The route a promotion leads to does count."""
    store = connect(tmp_path / "state.db")
    try:
        store.audit(actor="ada", command="sync", action="route", target="hello", outcome="ok")
        _record(store, Commit("1" * 40, AUTHOR, "s"), at=1.0, source="/r.git", ref=None)
        last = deploys.last(store)
        assert last is not None
        for action in ("create key", "revoke key", "promote requested", "abort requested"):
            store.audit(actor="ada", command="keys", action=action, target="k", outcome="ok")
        assert deploys.mark_since(store, last) == last.audit_mark
        store.audit(actor="ada", command="promote", action="route", target="hello", outcome="ok")
        assert deploys.mark_since(store, last) > last.audit_mark
    finally:
        store.close()
