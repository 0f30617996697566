"""The example GitHub Actions workflow (docs/examples/github-actions.yml): its structure, and its `run:` steps
executed for real with bash, the way a runner would, in a git work tree holding a copy of the demo project.

The runner is emulated only as far as the steps need: `${{ }}` expressions of the few kinds the workflow uses,
$GITHUB_OUTPUT, $GITHUB_PATH, $GITHUB_STEP_SUMMARY and $RUNNER_TEMP. `uses:` steps (checkout, the comment)
are GitHub's own and are not run; the pip install is replaced by the fnctl of this checkout.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from deploy_helpers import Project, cleanup
from gitops_helpers import git

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "docs" / "examples" / "github-actions.yml"
FNCTL_BIN = Path(sys.executable).parent  # the virtualenv running the tests holds the fnctl under test
ACTOR = "octo-merger"

PLAN_FIELDS = {
    "format",
    "project",
    "prune",
    "liveFingerprint",
    "live",
    "desired",
    "changes",
    "steps",
    "timelines",
    "paths",
    "collections",
}  # collections: the demo project declares one
CHANGE_FIELDS = {"function", "change", "liveRevision", "specHash", "fields", "drift"}


def load_workflow() -> dict[str, Any]:
    data: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    if True in data:  # YAML 1.1 reads the key `on` as true
        data["on"] = data.pop(True)
    return data


# ---- the structure ----


def test_workflow_structure() -> None:
    workflow = load_workflow()
    assert set(workflow["on"]) == {"pull_request", "push"}
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert workflow["defaults"]["run"]["shell"] == "bash"
    jobs = workflow["jobs"]
    assert set(jobs) == {"validate", "plan", "deploy"}

    assert "if" not in jobs["validate"], "validate runs on every event, forks included"
    assert not _self_hosted(jobs["validate"]), "validate needs no engine: any runner"
    assert any("fnctl validate -o json" in s.get("run", "") for s in jobs["validate"]["steps"])

    plan = jobs["plan"]
    assert plan["needs"] == "validate" and _self_hosted(plan)
    assert "github.event_name == 'pull_request'" in plan["if"]
    assert "head.repo.full_name == github.repository" in plan["if"], "fork code must not reach the host"
    assert plan["permissions"]["pull-requests"] == "write"
    runs = "\n".join(s.get("run", "") for s in plan["steps"])
    assert "fnctl diff -o json" in runs and "fnctl plan -o json" in runs
    comment = next(s for s in plan["steps"] if str(s.get("uses", "")).startswith("actions/github-script"))
    assert "<!-- fnctl-plan -->" in comment["with"]["script"]

    deploy = jobs["deploy"]
    assert deploy["needs"] == "validate" and _self_hosted(deploy)
    assert "github.event_name == 'push'" in deploy["if"] and "refs/heads/main" in deploy["if"]
    assert deploy["concurrency"]["cancel-in-progress"] is False
    assert any("fnctl apply -o json" in s.get("run", "") for s in deploy["steps"])
    # The plan job and the deploy job read the same store: it is set once, for the whole workflow.
    assert "FNCTL_STATE" in workflow["env"] and "FNCTL_STATE" not in plan.get("env", {}) | deploy.get("env", {})
    for job in jobs.values():  # every fnctl step is runnable as written: no expression inside the script
        for step in job["steps"]:
            assert "${{" not in step.get("run", ""), f"{job['name']}: {step.get('name')}: pass values through env:"


def _self_hosted(job: dict[str, Any]) -> bool:
    labels = job["runs-on"] if isinstance(job["runs-on"], list) else [job["runs-on"]]
    return "self-hosted" in labels


# ---- an emulated runner ----


@dataclass
class Runner:
    """Runs a job's `run:` steps with bash as GitHub's runner would, in `workspace`."""

    workspace: Path
    temp: Path
    variables: dict[str, str]  # the repository variables (`vars.NAME`)
    github: dict[str, str]  # `github.*` values the steps read
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    logs: list[tuple[str, subprocess.CompletedProcess[str], float]] = field(default_factory=list)

    def run_job(self, workflow: dict[str, Any], name: str) -> int:
        """The job's steps in order; returns the exit status of the first failing step (0 when none fails)."""
        job, path = workflow["jobs"][name], [os.environ["PATH"]]
        self.outputs = {}
        for index, step in enumerate(job["steps"]):
            run = step.get("run")
            if run is None or not self._wanted(step.get("if")):
                continue
            if "pip install" in run:  # the install step: this checkout's fnctl stands in for the package
                path.insert(0, str(FNCTL_BIN))
                continue
            env = self._env(workflow.get("env", {}) | job.get("env", {}) | step.get("env", {}), path)
            files = {k: self.temp / f"{k.lower()}-{name}-{index}" for k in ("GITHUB_OUTPUT", "GITHUB_PATH")}
            for variable, file in files.items():
                file.write_text("", encoding="utf-8")
                env[variable] = str(file)
            started = time.monotonic()
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", run],
                cwd=self.workspace,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.logs.append((step.get("name", run.splitlines()[0]), done, time.monotonic() - started))
            found = dict(line.split("=", 1) for line in files["GITHUB_OUTPUT"].read_text().splitlines() if "=" in line)
            self.outputs[step.get("id", str(index))] = found
            path[:0] = reversed(files["GITHUB_PATH"].read_text().split())
            if done.returncode != 0:
                return done.returncode
        return 0

    def log(self) -> str:
        return "\n".join(
            f"--- {name}: exit {d.returncode} after {took:.1f} s\n{d.stdout}{d.stderr}" for name, d, took in self.logs
        )

    def _wanted(self, condition: str | None) -> bool:
        if condition is None:
            return True
        test = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+) == '([^']*)'", condition.strip())
        assert test, f"the test runner does not know the condition {condition!r}"
        return self.outputs.get(test[1], {}).get(test[2]) == test[3]

    def _env(self, declared: dict[str, str], path: list[str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FNCTL_", "GITHUB_"))}
        env |= {
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "RUNNER_TEMP": str(self.temp),
            "NO_COLOR": "1",
            "GITHUB_WORKSPACE": str(self.workspace),
            "GITHUB_STEP_SUMMARY": str(self.temp / "summary.md"),
            "GITHUB_SHA": self.github["sha"],
            "GITHUB_ACTOR": self.github["actor"],
            "GITHUB_EVENT_NAME": self.github["event_name"],
            "XDG_CACHE_HOME": str(self.temp / "cache"),
        }
        env |= {
            name: re.sub(r"\$\{\{(.*?)\}\}", lambda m: self._expression(m[1].strip()), str(value))
            for name, value in declared.items()
        }
        env["PATH"] = os.pathsep.join(path)
        return env

    def _expression(self, text: str) -> str:
        if m := re.fullmatch(r"vars\.(\w+)(?: \|\| '([^']*)')?", text):
            return self.variables.get(m[1]) or (m[2] or "")
        if m := re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", text):
            return self.outputs.get(m[1], {}).get(m[2], "")
        if text == "github.event.pull_request.head.sha":
            return self.github["sha"]
        raise AssertionError(f"the test runner does not know the expression {text!r}")


@dataclass
class Workspace:
    root: Path
    project: Project
    sha: str


def make_workspace(tmp_path: Path, client: Any = None, base_image: str = "") -> Workspace:
    """A clean git work tree with the demo project (manifests/demo, functions/, fnctl.toml) under a fresh
    project name, and `origin`, a bare clone of it (the deploy job asks where main is)."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copytree(REPO / "manifests" / "demo", root / "manifests" / "demo")
    shutil.copytree(REPO / "functions", root / "functions", ignore=shutil.ignore_patterns("__pycache__"))
    name = f"t-ci-{secrets.token_hex(4)}"
    config = (REPO / "fnctl.toml").read_text(encoding="utf-8")
    (root / "fnctl.toml").write_text(re.sub(r'(?m)^name = ".*"$', f'name = "{name}"', config), encoding="utf-8")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "Demo functions")
    git(tmp_path, "clone", "-q", "--bare", str(root), "origin.git")
    git(root, "remote", "add", "origin", str(tmp_path / "origin.git"))
    project = Project(root, name, tmp_path / "state" / "state.db", base_image, client)
    return Workspace(root, project, git(root, "rev-parse", "HEAD"))


def make_runner(tmp_path: Path, ws: Workspace, event: str, base_image: str) -> Runner:
    temp = tmp_path / f"runner-temp-{event}"
    temp.mkdir()
    return Runner(
        ws.root,
        temp,
        {"FNCTL_STATE": str(ws.project.state), "FNCTL_BIN": str(FNCTL_BIN), "FNCTL_BASE_IMAGE": base_image},
        {"sha": ws.sha, "actor": ACTOR, "event_name": event},
    )


# ---- the pull-request side ----


def test_validate_step_annotates_each_problem(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    (ws.root / "manifests" / "demo" / "bad.yaml").write_text(
        "apiVersion: fnctl/v1\nkind: Function\nmetadata: {name: Bad_Name}\n"
        "spec: {runtime: python3.11, source: ../../functions/hello, handler: main.handler, limits: {memory: lots}}\n"
    )
    runner = make_runner(tmp_path, ws, "pull_request", "")
    assert runner.run_job(load_workflow(), "validate") == 2, runner.log()
    out = runner.logs[-1][1].stdout
    assert "::error file=manifests/demo/bad.yaml,line=3,col=18,title=$.metadata.name::must be a DNS label" in out, out
    assert "title=$.spec.limits.memory::invalid size" in out, out
    assert "invalid: 2 problem(s)" in out


@pytest.fixture
def workspace(tmp_path: Path, docker_client: docker.DockerClient, base_image: str) -> Iterator[Workspace]:
    ws = make_workspace(tmp_path, docker_client, base_image)
    try:
        yield ws
    finally:
        cleanup(ws.project)


@pytest.mark.docker
def test_pull_request_jobs_then_merge(tmp_path: Path, workspace: Workspace, base_image: str) -> None:
    workflow = load_workflow()
    pr = make_runner(tmp_path, workspace, "pull_request", base_image)
    assert pr.run_job(workflow, "validate") == 0, pr.log()
    assert json.loads((pr.temp / "validate.json").read_text())["valid"] is True
    assert pr.run_job(workflow, "plan") == 0, pr.log()  # diff's exit 1 ("changes") does not fail the job

    assert pr.outputs["diff"] == {"changes": "true"}
    diff = json.loads((pr.temp / "diff.json").read_text())
    assert set(diff) == {"changes", "orphans", "prune", "collections"}
    assert [(c["collection"], c["change"]) for c in diff["collections"]] == [("orders", "create")]
    assert [(c["function"], c["change"]) for c in diff["changes"]] == [
        ("greet", "create"),
        ("hello", "create"),
        ("order-book", "create"),
        ("orders", "create"),
    ]
    assert all(set(c) == CHANGE_FIELDS for c in diff["changes"])
    assert {f["path"]: f["new"] for f in diff["changes"][0]["fields"]}["env"] == {"GREETING": "hi"}

    plan = json.loads((pr.temp / "plan.json").read_text())
    assert set(plan) == PLAN_FIELDS, set(plan) ^ PLAN_FIELDS
    assert plan["format"] == 1 and plan["project"] == workspace.project.name and plan["timelines"] == {}
    assert set(plan["desired"]) == {"greet", "hello", "order-book", "orders"} and plan["live"]["functions"] == {}
    assert [s["kind"] for s in plan["steps"] if s["function"] == "hello"] == [
        "build image",
        "create revision",
        "start instances",
        "health check",
        "switch traffic",
    ]

    comment = (pr.temp / "plan.md").read_text()
    assert comment.startswith("<!-- fnctl-plan -->\n### fnctl plan for `" + workspace.sha[:12]), comment
    # 4 functions (greet is TypeScript), 5 steps each, and the orders collection's
    assert "4 to create" in comment and "| hello | create | – |" in comment and "21 steps" in comment, comment
    assert comment in (pr.temp / "summary.md").read_text()
    assert git(workspace.root, "status", "--porcelain") == "", "the steps left files in the checkout"

    # The merge: the deploy job applies main's head, recording the commit and who merged it.
    push = make_runner(tmp_path, workspace, "push", base_image)
    assert push.run_job(workflow, "deploy") == 0, push.log()
    assert push.outputs["head"] == {"current": "true"}
    applied = json.loads((push.temp / "apply.json").read_text())
    assert applied["ok"] and applied["exitCode"] == 0, applied
    assert [(r["function"], r["action"], r["revision"]) for r in applied["results"] if r["kind"] == "function"][:4] == [
        ("greet", "create", 1),
        ("hello", "create", 1),
        ("order-book", "create", 1),
        ("orders", "create", 1),
    ]
    assert [(r["function"], r["kind"]) for r in applied["results"] if r["kind"] == "collection"] == [
        ("orders", "collection")
    ]
    assert "### fnctl apply: ok (exit 0)" in (push.temp / "summary.md").read_text()
    revision = workspace.project.ok("history", "hello", "-o", "json").json()[0]
    assert (revision["gitCommit"], revision["createdBy"]) == (workspace.sha, f"ci:{ACTOR}")
    workspace.project.assert_consistent()

    # The next pull request without changes to the functions: nothing to do, and the comment says so.
    after = make_runner(tmp_path, workspace, "pull_request_again", base_image)
    assert after.run_job(workflow, "plan") == 0, after.log()
    assert after.outputs["diff"] == {"changes": "false"}
    assert "No changes: production already matches" in (after.temp / "plan.md").read_text()

    # An older run re-run after main moved on deploys nothing.
    git(workspace.root, "commit", "-q", "--allow-empty", "-m", "Later")
    git(workspace.root, "push", "-q", "origin", "main")
    stale = make_runner(tmp_path, workspace, "push_stale", base_image)
    assert stale.run_job(workflow, "deploy") == 0, stale.log()
    assert stale.outputs["head"] == {"current": "false"} and not (stale.temp / "apply.json").exists()
