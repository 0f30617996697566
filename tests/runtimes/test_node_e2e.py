"""A Node.js function through fnctl's commands on a real engine: `invoke --local` (cold, then a warm instance
with --keep-warm, its console output with --logs), `fnctl sandbox check`, a deploy served by the gateway, and
a canary of a failing Node revision rolled back by its analysis."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import Project, cleanup, make_project
from rollout_helpers import Load, Rollouts, call, rollout_project

HANDLER = """\
export const handler = async (event, context) => {
  console.log(`hello from ${context.functionName}`);
  return { message: `hi ${event.name ?? "there"}`, lambdaContext: context.awsRequestId === context.invocationId };
};
"""

DATA_HANDLER = """\
export const handler = async (event, context) => {
  const notes = context.db.notes; // also context.db.collection("notes")
  const made = await notes.insert({ text: "first" }, { id: event.id });
  const read = await context.db.collection("notes").get(made.id);
  const updated = await notes.update(made.id, { text: "second" }, { ifVersion: read.version });
  let stale = null;
  try {
    await notes.update(made.id, { text: "third" }, { ifVersion: read.version });
  } catch (error) {
    if (!(error instanceof context.db.Conflict)) throw error;
    stale = { name: error.name, status: error.status };
  }
  let missing = null;
  try {
    await notes.get("nope");
  } catch (error) {
    if (!(error instanceof context.db.NotFound)) throw error;
    missing = { name: error.name, status: error.status, isDataError: error instanceof context.db.DataError };
  }
  const page = await notes.find({ text: "second" });
  await notes.delete(made.id, { ifVersion: updated.version });
  return { text: updated.data.text, version: updated.version, stale, missing, found: page.documents.length };
};
"""

CANARY = """\
rollout:
  strategy: canary
  scaleDownDelay: 2s
  steps:
    - setWeight: 50
    - analysis: {maxErrorRate: 0.05, minRequests: 30, interval: 1s}
    - setWeight: 80
"""


def write_node_function(project: Project, name: str) -> None:
    code = project.root / "functions" / name
    code.mkdir(parents=True)
    (code / "index.mjs").write_text(HANDLER, encoding="utf-8")
    (project.root / "manifests" / f"{name}.yaml").write_text(
        textwrap.dedent(f"""\
        apiVersion: fnctl/v1
        kind: Function
        metadata: {{name: {name}}}
        spec:
          runtime: nodejs22
          source: ../functions/{name}
          handler: index.handler
          limits: {{timeout: 5s, memory: 64Mi}}
          access: {{roles: [public]}}
          healthCheck:
            - event: {{name: probe}}
              expect: {{message: hi probe, lambdaContext: true}}
        """),
        encoding="utf-8",
    )


@pytest.fixture
def project(tmp_path: Path, docker_client: Any, base_image: str) -> Iterator[Project]:
    made = make_project(tmp_path / "project", docker_client, base_image)
    try:
        yield made
    finally:
        cleanup(made)


@pytest.mark.docker
def test_invoke_local_keep_warm_logs_and_sandbox_check(project: Project) -> None:
    write_node_function(project, "greet")
    cold = project.ok("invoke", "--local", "greet", "--keep-warm", "--logs", "-d", '{"name": "ada"}')
    assert json.loads(cold.out)["message"] == "hi ada"
    assert "hello from greet" in cold.err
    warm = project.ok("invoke", "--local", "greet", "--keep-warm", "-d", '{"name": "bob"}')
    assert json.loads(warm.out)["message"] == "hi bob" and "(warm instance)" in warm.err
    check = project.ok("sandbox", "check", "greet", "-o", "json")
    [report] = json.loads(check.out)
    assert report["function"] == "greet" and len(report["checks"]) >= 15
    assert [c["name"] for c in report["checks"] if not c["ok"]] == []


@pytest.mark.docker
def test_context_db_from_a_node_handler_with_typed_errors(project: Project) -> None:
    code = project.root / "functions" / "notes"
    code.mkdir(parents=True)
    (code / "index.mjs").write_text(DATA_HANDLER, encoding="utf-8")
    (project.root / "manifests" / "notes.yaml").write_text(
        "apiVersion: fnctl/v1\nkind: Collection\nmetadata: {name: notes}\nspec:\n  schema: {type: object}\n"
        "---\napiVersion: fnctl/v1\nkind: Function\nmetadata: {name: notes-fn}\n"
        "spec: {runtime: nodejs22, source: ../functions/notes, handler: index.handler}\n",
        encoding="utf-8",
    )
    env = {"XDG_CACHE_HOME": str(project.root.parent / "cache")}  # invoke --local's data file, private to the test
    done = project.ok("invoke", "--local", "notes-fn", "-d", '{"id": "n-1"}', env=env)
    assert json.loads(done.out) == {
        "text": "second",
        "version": 2,
        "stale": {"name": "Conflict", "status": 412},  # a stale ifVersion: PreconditionFailed
        "missing": {"name": "NotFound", "status": 404, "isDataError": True},
        "found": 1,
    }


@pytest.mark.docker
def test_a_deployed_node_function_answers_behind_the_gateway(
    tmp_path: Path, docker_client: Any, base_image: str
) -> None:
    with rollout_project(tmp_path / "project", docker_client, base_image) as setup:
        write_node_function(setup.project, "greet")
        setup.project.ok("apply")
        setup.start_gateway()
        status, headers, body = call(setup.port, "POST", "/invoke/greet", json.dumps({"name": "gw"}).encode())
        assert status == 200, body
        answer = json.loads(body)
        assert answer == {"message": "hi gw", "lambdaContext": True}
        assert headers.get("X-Fnctl-Revision") == "1"


@pytest.fixture
def rollouts(tmp_path: Path, docker_client: Any, base_image: str) -> Iterator[Rollouts]:
    with rollout_project(tmp_path / "project", docker_client, base_image) as setup:
        yield setup


@pytest.mark.docker
def test_a_failing_node_canary_is_rolled_back_by_its_analysis(rollouts: Rollouts) -> None:
    rollouts.deploy_code("one", CANARY, runtime="nodejs22")
    rollouts.project.ok("apply")
    rollouts.start_gateway()
    rollouts.deploy_code("bad", CANARY, fail_rate=0.5, runtime="nodejs22")
    with Load(rollouts.port, rate=100) as load:
        applied = rollouts.project.fnctl("apply")
    assert applied.code == 3, applied.text
    assert "analysis failed: error rate" in applied.text
    assert rollouts.routes() == {1: 100}
    assert rollouts.status(2) == "quarantined"
    assert {revision for _, status, revision in load.answers if status != 200} <= {"2"}  # only the canary failed
    assert load.by_revision()["1"] > 0
