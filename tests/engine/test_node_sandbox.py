"""The Node.js runtime in the sandbox: real containers of one revision image built from
tests/sandbox_handlers/node (runtime nodejs22), the handler styles, and the hostile suite of test_sandbox.py
ported to JavaScript, each limit giving the same typed failure as for Python."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from sandbox_handlers.harness import (
    MIB,
    Start,
    answers,
    container_gone,
    find_function,
    leftovers_fixture,
    logged,
    project_containers,
    removed,
    start_fixture,
    throwaway,
)

from fnctl.engine import dockerio, images, instances
from fnctl.engine.sandbox import check_container, labels
from fnctl.invocation.outcome import Failure
from fnctl.manifest.project import Project, load_project

NODE_PROBES = Path(__file__).resolve().parents[1] / "sandbox_handlers" / "node"

FUNCTIONS: dict[str, dict[str, Any]] = {
    "async-style": {"handler": "styles.asyncHandler"},
    "plain-style": {"handler": "styles.plain"},
    "callback-style": {"handler": "styles.callback"},
    "esm": {"handler": "esm.handler"},
    "esm-by-file": {"handler": "esm.mjs:handler"},
    "chatty": {"handler": "styles.chatty"},
    "fill-tmp": {"handler": "hostile.fillTmp", "limits": {"tmp": "8Mi"}},
    "fork-bomb": {"handler": "hostile.forkBomb", "limits": {"pids": 32}},
    "memory-bomb": {"handler": "hostile.memoryBomb", "limits": {"memory": "64Mi"}},
    "spin": {"handler": "hostile.spin", "limits": {"timeout": "1s"}},
    "big-result": {"handler": "hostile.bigResult", "limits": {"memory": "256Mi", "output": "6Mi"}},
    "uncaught": {"handler": "hostile.uncaught"},
    "unhandled": {"handler": "hostile.unhandled"},
    "permissions": {"handler": "hostile.permissions"},
    "missing-export": {"handler": "esm.nothing"},
    "interleaved": {"handler": "styles.interleaved", "scaling": {"concurrency": 8}},
    "gvisor": {"handler": "styles.plain", "isolation": "gvisor"},
}


def write_node_project(root: Path, name: str, base_image: str) -> Project:
    root.mkdir(parents=True)
    (root / "fnctl.toml").write_text(f'[project]\nname = "{name}"\n\n[build]\nbaseImage = "{base_image}"\n')
    shutil.copytree(NODE_PROBES, root / "functions" / "node")
    (root / "manifests").mkdir()
    for function, fields in FUNCTIONS.items():
        spec = {"runtime": "nodejs22", "source": "../functions/node", **fields}
        document = {"apiVersion": "fnctl/v1", "kind": "Function", "metadata": {"name": function}, "spec": spec}
        (root / "manifests" / f"{function}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return load_project(root)


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, base_image: str
) -> Iterator[Project]:
    with throwaway(docker_client) as name:
        yield write_node_project(tmp_path_factory.mktemp("node") / "project", name, base_image)


@pytest.fixture(scope="module")
def probes_image(project: Project) -> str:
    source = project.root / "functions" / "node"
    return images.ensure_image(project.name, "probes", source, project.base_image, runtime_name="nodejs22").tag


_no_leftovers = leftovers_fixture()
start = start_fixture("test")


# ---- handler styles and the sandbox ---------------------------------------------------------------


@pytest.mark.docker
def test_the_three_handler_styles_in_commonjs_and_esm_answer(start: Start) -> None:
    seen = answers(start("async-style"), {"n": 1})
    assert seen["style"] == "async" and seen["echo"] == {"n": 1} and seen["functionName"] == "async-style"
    assert seen["awsRequestId"] == seen["invocationId"] != "" and seen["revision"] == "test"
    assert seen["remainingPositive"] is True
    assert answers(start("plain-style"), {"n": 2}) == {"style": "plain", "echo": {"n": 2}}
    callback = start("callback-style")
    assert answers(callback, {"n": 3}) == {"style": "callback", "echo": {"n": 3}}
    failed = instances.invoke(callback, {"fail": "from the callback"})
    assert failed.failure is Failure.HANDLER_ERROR and failed.message == "TypeError: from the callback"
    assert answers(start("esm"), {"n": 4}) == {"module": "esm", "echo": {"n": 4}, "functionName": "esm"}
    assert answers(start("esm-by-file"), {"n": 5})["module"] == "esm"


@pytest.mark.docker
def test_console_is_captured_per_invocation_and_errors_carry_the_users_stack(start: Start) -> None:
    instance = start("chatty")
    outcome = instances.invoke(instance, {"say": "before failing", "fail": True})
    assert not outcome.ok and outcome.failure is Failure.HANDLER_ERROR
    assert outcome.message == "RangeError: asked to fail"
    assert "styles.js:" in outcome.traceback and "runtime.mjs" not in outcome.traceback
    assert outcome.logs == "to stdout: before failing\nto stderr\n"
    again = instances.invoke(instance, {"say": "again"})
    assert again.result == {"said": "again"} and again.logs == "to stdout: again\nto stderr\n"


@pytest.mark.docker
def test_concurrent_invocations_interleave_and_keep_their_own_logs(start: Start) -> None:
    instance = start("interleaved")
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda n: instances.invoke(instance, {"n": n, "together": 4}), range(4)))
    # each passed the barrier of 4 (so all ran at once), and kept its own output
    for n, outcome in enumerate(outcomes):
        assert outcome.ok and outcome.result == {"n": n}, outcome
        assert outcome.logs == f"start {n}\nend {n}\n"


@pytest.mark.docker
def test_node_runs_under_gvisor(start: Start) -> None:
    instance = start("gvisor")
    assert answers(instance, {"n": 1}) == {"style": "plain", "echo": {"n": 1}}
    data = dockerio.inspect_container(instance.container_id)
    assert data["HostConfig"]["Runtime"] == "runsc"
    assert [(c.name, c.detail) for c in check_container(data) if not c.ok] == []


# Code that cannot load, written at test time (kept out of the repository, where tools would parse it) into a
# source no manifest names: only the runtime ever sees it.
BROKEN = {
    "syntax.cjs": "const handler = (event;\nmodule.exports = { handler };\n",
    "syntax.mjs": "export const handler = (event;\n",
    "throws.cjs": "const ready = false;\nthrow new TypeError(`not ready: ${ready}`);\n",
}


@pytest.mark.docker
@pytest.mark.parametrize(
    ("handler", "message", "detail"),
    [
        ("syntax.cjs:handler", "SyntaxError: Unexpected token ';'", "syntax.cjs:1\nconst handler = (event;\n"),
        ("syntax.mjs:handler", "SyntaxError: Unexpected token ';' (loading syntax.mjs or a module it imports)", ""),
        ("throws.cjs:handler", "TypeError: not ready: false", "throws.cjs:2:7"),
    ],
)
def test_code_that_cannot_load_fails_the_start_with_where(
    project: Project, docker_client: docker.DockerClient, handler: str, message: str, detail: str
) -> None:
    source = project.root / "functions" / "broken"
    source.mkdir(exist_ok=True)
    for name, text in BROKEN.items():
        (source / name).write_text(text)
    image = images.ensure_image(project.name, "broken", source, project.base_image, runtime_name="nodejs22").tag
    function = replace(find_function(project, "plain-style"), handler=handler)
    with pytest.raises(instances.StartFailed) as failed:
        instances.start(function, image=image, revision="test", labels=labels(project.name, "broken"), secret_values={})
    assert message in failed.value.message
    assert detail in (failed.value.detail or "") and "runtime.mjs" not in (failed.value.detail or "")
    assert project_containers(docker_client, project.name) == []  # the failed instance was removed


@pytest.mark.docker
def test_a_missing_export_fails_the_start_with_its_name(start: Start) -> None:
    with pytest.raises(instances.StartFailed, match='exports no "nothing"'):
        start("missing-export")


@pytest.mark.docker
def test_running_node_instance_passes_every_sandbox_check(start: Start) -> None:
    instance = start("plain-style")
    data = dockerio.inspect_container(instance.container_id)
    assert [(c.name, c.detail) for c in check_container(data) if not c.ok] == []
    assert data["Config"]["User"] not in ("", "0", "root")


@pytest.mark.docker
def test_the_permission_model_refuses_reads_outside_the_code_and_child_processes(start: Start) -> None:
    seen = answers(start("permissions"))
    assert seen == {
        "readPasswd": "ERR_ACCESS_DENIED",
        "readOwnCode": "allowed",
        "writeTmp": "allowed",
        "spawn": "ERR_ACCESS_DENIED",
        "uid": seen["uid"],
    }
    assert seen["uid"] != 0


# ---- the hostile suite ------------------------------------------------------------------------------


@pytest.mark.docker
def test_tmp_fills_at_its_limit_and_reports_disk_full(start: Start) -> None:
    instance = start("fill-tmp")
    outcome = instances.invoke(instance, {})
    assert outcome.failure is Failure.DISK_FULL, outcome
    assert "ENOSPC" in outcome.message
    assert 7 * MIB <= logged("written", outcome.logs) <= 8 * MIB
    assert answers(instance, {"max": 0}) == {"written": 0}


@pytest.mark.docker
def test_fork_bomb_is_the_process_limit_failure_and_another_instance_answers(
    start: Start, docker_client: docker.DockerClient
) -> None:
    bystander = start("plain-style")
    bomb = start("fork-bomb")
    outcome = instances.invoke(bomb, {})
    # Node's permission model refuses the first child process, before the pids limit is reached: the same typed
    # failure as Python's fork bomb at its pids limit, saying why, and the instance is replaced as Python's is.
    assert outcome.failure is Failure.PROCESS_LIMIT, outcome
    assert outcome.message == (
        "ProcessLimit: the sandbox allows no new child processes (Node's permission model refused it: "
        "Access to this API has been restricted. Use --allow-child-process to manage permissions.)"
    )
    assert logged("children", outcome.logs) == 0
    removed(docker_client, bomb)
    assert answers(bystander, {"still": "here"}) == {"style": "plain", "echo": {"still": "here"}}


@pytest.mark.docker
def test_memory_bomb_is_reported_as_out_of_memory(start: Start, docker_client: docker.DockerClient) -> None:
    bystander = start("plain-style")
    bomb = start("memory-bomb")
    outcome = instances.invoke(bomb, {})
    assert outcome.failure is Failure.OUT_OF_MEMORY, outcome
    assert "64Mi" in outcome.message
    removed(docker_client, bomb)
    assert answers(bystander)["style"] == "plain"


@pytest.mark.docker
def test_endless_loop_times_out_and_a_fresh_instance_answers(start: Start, docker_client: docker.DockerClient) -> None:
    runaway = start("spin")
    outcome = instances.invoke(runaway, {"spin": True})
    assert outcome.failure is Failure.TIMEOUT, outcome
    assert "timeout of 1s" in outcome.message
    removed(docker_client, runaway)
    assert answers(start("spin"), {}) == {"spun": False}


@pytest.mark.docker
def test_100mb_result_is_refused_and_the_instance_keeps_serving(start: Start) -> None:
    instance = start("big-result")
    outcome = instances.invoke(instance, {"size": 100_000_000})
    assert outcome.failure is Failure.OUTPUT_TOO_LARGE, outcome
    assert "output limit of 6291456 bytes" in outcome.message
    assert answers(instance, {"size": 5}) == "xxxxx"


@pytest.mark.docker
@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("uncaught", "Error: uncaught exception: thrown from a timer"),
        ("unhandled", "Error: unhandled rejection: nobody caught me"),
    ],
)
def test_errors_outside_the_handlers_promise_fail_its_invocation_only(
    start: Start, docker_client: docker.DockerClient, function: str, message: str
) -> None:
    instance = start(function)
    outcome = instances.invoke(instance, {})
    assert outcome.failure is Failure.HANDLER_ERROR and outcome.message == message, outcome
    assert "hostile.mjs:" in outcome.traceback
    assert not container_gone(docker_client, instance.container_id)
    assert instances.invoke(instance, {}).message == message  # the same instance serves the next one
