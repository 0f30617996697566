"""`fnctl diff / plan / apply / rollback / delete / status / get / history / logs / invoke` end to end: the CLI
run as a subprocess against real Docker and a real SQLite store in a temporary folder.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from deploy_helpers import Project, cleanup, make_project, until
from gitops_helpers import git
from pgserver import RawDb, StateFactory

from fnctl.state.auditlog import AuditFilter, audit_records

pytestmark = pytest.mark.docker


@pytest.fixture
def project(
    tmp_path: Path, docker_client: docker.DockerClient, base_image: str, project_states: StateFactory
) -> Iterator[Project]:
    made = make_project(tmp_path / "project", docker_client, base_image, project_states)
    try:
        yield made
    finally:
        cleanup(made)


def test_first_apply_then_no_op(project: Project) -> None:
    project.function("hello")
    git(project.root, "init", "-q")
    git(project.root, "add", ".")
    git(project.root, "commit", "-q", "-m", "hello")
    head = git(project.root, "rev-parse", "HEAD")

    broken = project.root / "manifests" / "broken.yaml"
    broken.write_text("apiVersion: fnctl/v1\nkind: Function\nmetadata: {name: Bad_Name}\nspec: {}\n")
    for command in ("diff", "plan", "apply"):
        refused = project.fnctl(command)
        assert refused.code == 2 and "broken.yaml:" in refused.err, refused.text
    broken.unlink()
    assert project.containers() == []

    diff = project.fnctl("diff")
    assert diff.code == 1, diff.text
    assert "+ hello: create" in diff.out
    as_json = project.fnctl("diff", "-o", "json").json()
    assert [(c["function"], c["change"]) for c in as_json["changes"]] == [("hello", "create")]

    applied = project.ok("apply")
    assert "hello: create: revision 1 is live" in applied.out
    assert project.invoke("hello", {"name": "ada"}) == {
        "version": "one",
        "greeting": "hi",
        "name": "ada",
        "token_sha256": None,
    }
    project.assert_consistent()

    revision = project.ok("get", "revisions", "-o", "json").json()[0]
    assert (revision["function"], revision["number"], revision["status"]) == ("hello", 1, "ready")
    assert revision["gitCommit"] == head and revision["gitAuthor"] == "Ada Lovelace <ada@example.org>"
    assert revision["image"].startswith(f"fnctl/{project.name}-hello:") and len(revision["specHash"]) == 64
    assert "status: ready" in project.ok("get", "revisions", "-o", "yaml").out
    function = project.ok("get", "functions", "-o", "json").json()[0]
    assert function["liveRevision"] == 1 and [i["healthy"] for i in function["instances"]] == [True]
    status = project.ok("status", "-o", "json").json()[0]
    assert status["gitCommit"] == head and status["weights"] == {"1": 100}
    assert "hello" in project.ok("status").out
    assert [r["number"] for r in project.ok("history", "hello", "-o", "json").json()] == [1]
    with project.store() as store:
        routed = [e for e in audit_records(store, AuditFilter(target="hello")) if e.action == "route"]
    assert routed and routed[0].git_commit == head and routed[0].outcome == "ok"

    containers = project.instance_containers("hello")
    image_id = project.client.images.get(revision["image"]).id
    assert project.fnctl("diff").code == 0
    again = project.ok("apply")
    assert "no changes" in again.out and "Step " not in again.err
    assert project.instance_containers("hello") == containers, "a no-op apply recreated a container"
    assert project.client.images.get(revision["image"]).id == image_id, "a no-op apply rebuilt the image"
    assert len(project.ok("get", "revisions", "-o", "json").json()) == 1


def test_code_change_then_config_change(project: Project) -> None:
    project.function("hello")
    project.ok("apply")
    first = project.images("hello")[0]
    old_containers = set(project.instance_containers("hello").values())

    project.function("hello", version="two")
    diff = project.fnctl("diff")
    assert diff.code == 1 and "~ hello: update (live revision 1)" in diff.out and "source.hash" in diff.out
    project.ok("apply")
    assert project.live_revision("hello") == 2
    assert project.invoke("hello")["version"] == "two"
    second = project.images("hello")[1]
    assert second != first
    assert not old_containers & {c.id for c in project.containers()}, "the old revision's instance still runs"
    project.assert_consistent()

    # Environment and limits only: a new revision from the very same image, which is not rebuilt.
    image_id = project.client.images.get(second).id
    project.function("hello", version="two", env={"GREETING": "hello"}, memory="96Mi")
    diff = project.fnctl("diff", "-o", "json").json()["changes"][0]
    assert {f["path"] for f in diff["fields"]} == {"env.GREETING", "limits.memory"}
    project.ok("apply")
    assert project.live_revision("hello") == 3
    assert project.images("hello")[2] == second and project.client.images.get(second).id == image_id
    assert project.invoke("hello", {"name": "x"})["greeting"] == "hello"
    container = project.containers("hello")[0]
    assert container.attrs["HostConfig"]["Memory"] == 96 * 2**20
    project.assert_consistent()


def test_failed_deploys_change_nothing_users_see(project: Project) -> None:
    project.function("hello")
    project.ok("apply")
    serving = project.instance_containers("hello")

    project.function("hello", version="broken")
    failed = project.fnctl("apply")
    assert failed.code == 1, failed.text
    assert "healthCheck[0] failed" in failed.text and "traffic stays" in failed.text
    assert "probe-failure-marker: the database is unreachable" in failed.err, "the check's output is not shown"
    assert project.live_revision("hello") == 1 and project.invoke("hello")["version"] == "one"
    assert project.instance_containers("hello") == serving
    revision = project.ok("history", "hello", "-o", "json").json()[1]
    assert revision["status"] == "failed" and "probe-failure-marker" in revision["reason"]
    project.assert_consistent()

    # A build that fails (pip finds nothing to install) is refused the same way, before any container.
    project.function("hello", version="two", requirements="--no-index\nno-such-package-fnctl-test==1.0\n")
    failed = project.fnctl("apply")
    assert failed.code == 1 and "installing" in failed.text and "no-such-package-fnctl-test" in failed.text
    assert project.live_revision("hello") == 1 and project.instance_containers("hello") == serving
    assert project.ok("history", "hello", "-o", "json").json()[2]["status"] == "failed"
    with project.store() as store:
        outcomes = [e.outcome for e in audit_records(store, AuditFilter(target="hello")) if e.action == "deploy"]
    assert outcomes == ["failed", "failed"]
    project.assert_consistent()


def test_rollback_and_quarantine(project: Project) -> None:
    project.function("hello")
    project.ok("apply")
    project.function("hello", version="two")
    project.ok("apply")

    assert project.fnctl("rollback", "hello", "--to", "2").code == 2  # the live one
    assert project.fnctl("rollback", "hello", "--to", "9").code == 2
    rolled = project.ok("rollback", "hello")
    assert "rolled back from revision 2 to 1" in rolled.out and "Step " not in rolled.err
    assert project.live_revision("hello") == 1 and project.invoke("hello")["version"] == "one"
    statuses = [(r["number"], r["status"]) for r in project.ok("history", "hello", "-o", "json").json()]
    assert statuses == [(1, "ready"), (2, "quarantined")]
    project.assert_consistent()

    refused = project.fnctl("apply")
    assert refused.code == 1, refused.text
    assert "quarantined" in refused.err and "rolled back" in refused.err and "--force" in refused.err
    assert project.live_revision("hello") == 1
    nothing_before = project.fnctl("rollback", "hello")
    assert nothing_before.code == 1 and "no healthy revision before 1" in nothing_before.err

    forced = project.ok("apply", "--force")
    assert "revision 3 is live" in forced.out
    assert project.invoke("hello")["version"] == "two"
    with project.store() as store:
        actions = [(e.command, e.action) for e in reversed(audit_records(store, AuditFilter(target="hello")))]
    assert ("rollback", "quarantine") in actions and ("rollback", "route") in actions
    project.assert_consistent()


def test_prune_deletes_only_when_asked(project: Project) -> None:
    project.function("keep")
    project.function("gone")
    project.ok("apply")
    project.remove_function("gone")

    assert project.fnctl("diff").code == 0
    diff = project.fnctl("diff", "--prune")
    assert diff.code == 1 and "- gone: delete" in diff.out
    kept = project.ok("apply")
    assert "gone: kept" in kept.out and len(project.containers("gone")) == 1
    plan = project.ok("plan", "--prune")
    assert "gone: delete function" in plan.out

    project.ok("apply", "--prune")
    assert project.containers("gone") == [] and len(project.containers("keep")) == 1
    assert [s["function"] for s in project.ok("status", "-o", "json").json()] == ["keep"]
    assert project.ok("history", "gone", "-o", "json").json()[0]["status"] == "ready"  # history stays
    with project.store() as store:
        assert [e.outcome for e in audit_records(store, AuditFilter(target="gone")) if e.action == "delete"] == ["ok"]
    assert project.fnctl("invoke", "gone").code == 2  # deleted: a name that no longer exists is bad input
    project.assert_consistent()

    project.ok("delete", "keep")
    assert project.containers() == []
    assert project.fnctl("delete", "keep").code == 2  # no longer deployed: bad input


def test_drift_is_shown_and_healed(project: Project, docker_client: docker.DockerClient) -> None:
    project.function("hello")
    project.ok("apply")

    def drifted(kind: str) -> None:
        diff = project.fnctl("diff")
        assert diff.code == 1 and f"drift: {kind}" in diff.out, diff.text
        healed = project.ok("apply")
        assert "hello: heal" in healed.out, healed.text
        project.assert_consistent()

    project.containers("hello")[0].kill()
    until(lambda: project.containers("hello")[0].status == "exited", "the killed instance to exit")
    drifted("instance exited")

    docker_client.api.remove_container(project.containers("hello")[0].id, force=True)  # `docker rm -f`
    drifted("instance missing")

    image = project.ok("get", "revisions", "-o", "json").json()[0]["image"]
    docker_client.images.remove(image, force=True)
    drifted("image removed")
    assert docker_client.images.get(image)

    # A container labelled for this project and store that the store does not know: an orphan.
    with project.store() as store:
        store_id = store.id
    docker_client.containers.run(
        project.base_image,
        ["sleep", "300"],
        detach=True,
        network_mode="none",
        labels={
            "io.fnctl.project": project.name,
            "io.fnctl.function": "hello",
            "io.fnctl.store": store_id,
            "io.fnctl.instance": "intruder",
        },
    )
    diff = project.fnctl("diff", "-o", "json")
    assert diff.code == 1 and len(diff.json()["orphans"]) == 1
    removed = project.ok("apply")
    assert "removed orphan container" in removed.err
    assert project.fnctl("diff").code == 0 and project.invoke("hello")["version"] == "one"
    project.assert_consistent()


def test_a_removed_image_that_rebuilds_differently_is_redeployed(
    project: Project, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    base = f"fnctl-test/{project.name}-base:1"

    def make_base(mark: str) -> None:
        """The same tag each time, a new image each time (the project label lets cleanup remove it)."""
        context = tmp_path / f"base-{mark}"
        context.mkdir()
        (context / "Dockerfile").write_text(
            f"FROM {project.base_image}\nLABEL io.fnctl.project={project.name} test.mark={mark}\n"
        )
        docker_client.images.build(path=str(context), tag=base, rm=True)

    make_base("first")
    project.base_image = base
    project.function("hello")
    project.ok("apply")
    make_base("second")  # e.g. a rebuilt base image: same name in the manifests, new content
    assert project.fnctl("diff").code == 0, "a new base image alone redeploys nothing"

    docker_client.images.remove(project.images("hello")[0], force=True)
    healed = project.ok("apply")
    assert "hello: heal" in healed.out and "redeployed as revision 2" in healed.out, healed.text
    first, second = project.images("hello")
    assert first != second and project.live_revision("hello") == 2
    assert project.invoke("hello")["version"] == "one"
    assert project.fnctl("diff").code == 0
    project.assert_consistent()


def test_stale_plan_is_refused(project: Project, tmp_path: Path) -> None:
    project.function("hello")
    project.ok("apply")
    project.function("hello", version="two")
    plan = tmp_path / "plan.json"
    made = project.ok("plan", "-f", str(plan))
    assert "hello: build image" in made.out and "hello: switch traffic" in made.out
    assert json.loads(plan.read_text())["changes"][0]["change"] == "update"

    # The world moves on: the instance dies. The reviewed plan no longer describes what apply would do.
    project.containers("hello")[0].remove(force=True)
    stale = project.fnctl("apply", str(plan))
    assert stale.code == 2, stale.text
    assert "stale" in stale.err and "hello: instances changed" in stale.err
    assert project.live_revision("hello") == 1

    project.ok("plan", "-f", str(plan))  # made again, against the state as it now is
    project.function("hello", version="three")
    changed = project.fnctl("apply", str(plan))
    assert changed.code == 2 and "the manifests changed since the plan was made: hello" in changed.err

    project.function("hello", version="two")
    applied = project.ok("apply", str(plan))
    assert "hello: update: revision 2 is live" in applied.out
    assert project.invoke("hello")["version"] == "two"
    project.assert_consistent()


def test_a_plan_file_that_cannot_be_written_is_bad_input(project: Project, tmp_path: Path) -> None:
    project.function("hello")
    done = project.fnctl("plan", "-f", str(tmp_path / "no-such-dir" / "plan.json"))
    assert done.code == 2, done.text
    assert done.err.startswith(f"error: cannot write the plan {tmp_path / 'no-such-dir' / 'plan.json'}: No such file")


def test_lock_contention_names_the_holder(project: Project, tmp_path: Path) -> None:
    project.function("hello")
    release = tmp_path / "release"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\nfrom pathlib import Path\nfrom fnctl.deploy.lock import held\n"
            "from fnctl.state import pgopener\nfrom fnctl.state.location import parse\npgopener.install()\n"
            "with held(parse(sys.argv[1]), 5, 'fnctl apply (held by the test)'):\n"
            "    print('held', flush=True)\n"
            "    while not os.path.exists(sys.argv[2]):\n"
            "        time.sleep(0.02)\n",
            project.location.to_arg(),
            str(release),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        locked = project.fnctl("apply", "--lock-timeout", "1")
        assert locked.code == 1, locked.text
        assert f"pid {holder.pid} on {socket.gethostname()}" in locked.err
        assert "fnctl apply (held by the test)" in locked.err and "since" in locked.err
        assert project.fnctl("rollback", "hello", "--lock-timeout", "0").code == 1
        assert project.fnctl("diff").code == 1, "diff only reads: it never waits for the lock"
    finally:
        release.touch()
        holder.wait(timeout=30)
    project.ok("apply", "--lock-timeout", "5")
    project.assert_consistent()


def _assert_not_stored(project: Project, value: str) -> None:
    """Not in the state's files (SQLite's database, WAL and shared memory, the lock; PostgreSQL's anchor) nor,
    on PostgreSQL, in any row of the database."""
    for path in project.state.parent.iterdir():
        assert value.encode() not in path.read_bytes(), f"the secret value is in {path.name}"
    if project.url is not None:
        raw = RawDb(project.location)
        try:
            assert value not in raw.dump(), "the secret value is in the PostgreSQL database"
        finally:
            raw.close()


def test_secret_values_are_never_stored(project: Project) -> None:
    import hashlib

    value = "s3cr3t-" + project.name + "-do-not-store"
    project.env["TEST_API_TOKEN"] = value
    project.function("vault", secret=True)
    project.ok("apply")
    assert project.invoke("vault")["token_sha256"] == hashlib.sha256(value.encode()).hexdigest()

    assert value not in project.ok("get", "revisions", "-o", "json").out
    _assert_not_stored(project, value)
    container = project.containers("vault")[0]
    assert value not in json.dumps(container.attrs), "the secret value is in the container's configuration"

    # A new value is a new revision (the spec carries a salted hash of the values), from the same image.
    project.env["TEST_API_TOKEN"] = value + "-rotated"
    assert project.fnctl("diff").code == 1
    assert "revision 2 is live" in project.ok("apply").out
    first, second = project.images("vault")
    assert first == second
    assert project.invoke("vault")["token_sha256"] == hashlib.sha256((value + "-rotated").encode()).hexdigest()
    _assert_not_stored(project, value)
    project.env.pop("TEST_API_TOKEN")
    unset = subprocess.run(
        [sys.executable, "-m", "fnctl", "diff"],
        cwd=project.root,
        capture_output=True,
        text=True,
        env={k: v for k, v in project.environ().items() if k != "TEST_API_TOKEN"},
    )
    assert unset.returncode == 2 and "TEST_API_TOKEN" in unset.stderr and value not in unset.stderr


def test_logs_show_the_containers_output(project: Project) -> None:
    project.function("hello")
    project.ok("apply")
    logs = until(
        lambda: (r := project.fnctl("logs", "hello")).code == 0 and "loaded version one" in r.out and r,
        "the handler's import-time line in `fnctl logs`",
    )
    instance = next(iter(project.instance_containers("hello")))
    assert logs.out.startswith(f"[{instance} r1] ")
    assert project.fnctl("logs", "nope").code == 2


def test_a_failed_first_deploy_says_which_revision_failed_and_why(project: Project) -> None:
    """Issue 16: no "traffic stays on the previous revision" when there is none; invoke names the failure."""
    project.function("hello", version="broken")
    failed = project.fnctl("apply")
    assert failed.code == 1, failed.text
    assert "hello: revision 1 failed: healthCheck[0] failed" in failed.text
    assert "hello has no live revision" in failed.text and "traffic stays" not in failed.text
    invoked = project.fnctl("invoke", "hello")
    assert invoked.code == 1
    assert "hello has no live revision: revision 1 failed: healthCheck[0] failed" in invoked.err
    assert "(see `fnctl history hello`)" in invoked.err and "is not deployed" not in invoked.err
    as_json = project.fnctl("invoke", "hello", "-o", "json")  # a script reads one JSON object, the same words
    answer = json.loads(as_json.out)
    assert as_json.code == 1 and answer["ok"] is False and answer["error"]["type"] != ""
    assert answer["error"]["message"].startswith("hello has no live revision: revision 1 failed: healthCheck[0] failed")
