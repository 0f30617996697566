"""`fnctl invoke --local` and `fnctl sandbox check` on a real engine: the Python API and the command line.

The command-line tests run `python -m fnctl` in a throw-away project, as a user would, and check what the
user sees: the result on stdout, logs, duration and errors on stderr, and the exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from sandbox_handlers.harness import (
    cleanup,
    container_gone,
    project_containers,
    run_cli,
    throwaway,
    wait_until,
    write_project,
)

import fnctl.manifest.validate
from fnctl.commands.local import LocalResult, invoke_local
from fnctl.commands.localdata import LocalData
from fnctl.engine import images
from fnctl.errors import BadInput
from fnctl.invocation.outcome import Failure
from fnctl.manifest.project import Project
from fnctl.runtimes.validation import validate_project

pytestmark = pytest.mark.docker

FUNCTIONS: dict[str, dict[str, Any]] = {
    "echo": {"handler": "probes.echo_context"},
    "chatty": {"handler": "probes.chatty"},
    "spin": {"handler": "probes.spin", "limits": {"timeout": "1s"}},
    "memory-bomb": {"handler": "probes.memory_bomb", "limits": {"memory": "64Mi"}},
    "big-result": {"handler": "probes.big_result"},
    "small-payload": {"handler": "probes.echo", "limits": {"payload": "1Ki"}},
    "fork-bomb": {"handler": "probes.fork_bomb", "limits": {"pids": 32}},
    "fill-tmp": {"handler": "probes.fill_tmp", "limits": {"tmp": "4Mi"}},
    "crash": {"handler": "probes.crash"},
    "import-error": {"handler": "raises_at_import.handler"},
    "syntax-error": {"handler": "uses_broken.handler"},
    "editable": {"handler": "main.handler", "source": "../functions/editable"},
    "needs-gl": {"handler": "loads_gl.handler"},
    "vendored-extension": {"handler": "main.handler", "source": "../functions/vendored"},
    "bad-deps": {"handler": "main.handler", "source": "../functions/baddeps"},
}
EDITABLE = "def handler(event):\n    return {{'version': {version}}}\n"
# A vendored extension module linking a library the base image lacks, its import wrapped as numpy wraps its own.
VENDORED = """\
try:
    import vendored_tls
except ImportError as exc:
    raise ImportError("Error importing main: you should not try to import it from its source directory") from exc

def handler(event):
    return {}
"""


def _vendor_extension(directory: Path) -> None:
    """Python's own _ssl extension (on every host that runs the tests) as `vendored_tls`, its DT_NEEDED entry
    libssl.so.3 renamed in place to libnil.so.3 (same length), a library no image has: the loader fails on it
    exactly as on a vendored .so built against a library the base lacks."""
    extension = next(Path("/usr/lib/python3.11/lib-dynload").glob("_ssl.*.so"))
    data = extension.read_bytes()
    assert data.count(b"libssl.so.3\x00") == 1
    (directory / "vendored_tls.cpython-311-x86_64-linux-gnu.so").write_bytes(
        data.replace(b"libssl.so.3\x00", b"libnil.so.3\x00")
    )
    (directory / "main.py").write_text(VENDORED)


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, base_image: str
) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("invoke-local") / "project"
    (root / "functions" / "editable").mkdir(parents=True)
    (root / "functions" / "editable" / "main.py").write_text(EDITABLE.format(version=1))
    (root / "functions" / "baddeps").mkdir()
    (root / "functions" / "baddeps" / "main.py").write_text(EDITABLE.format(version=1))
    (root / "functions" / "baddeps" / "requirements.txt").write_text("-e ./lib\n")  # fails the build
    (root / "functions" / "vendored").mkdir()
    _vendor_extension(root / "functions" / "vendored")
    with throwaway(docker_client) as name:
        yield write_project(root, name, base_image, FUNCTIONS)


@pytest.fixture(autouse=True)
def _no_leftovers(project: Project, docker_client: docker.DockerClient) -> Iterator[None]:
    yield
    cleanup(docker_client, project.name, images=False)


def local(project: Project, function: str, event: Any, *, keep_warm: bool = False) -> LocalResult:
    size = len(json.dumps(event).encode())
    return invoke_local(
        project,
        function,
        event,
        size,
        keep_warm=keep_warm,
        on_progress=lambda _: None,
        open_data=LocalData.open,
        validate=validate_project,
        ensure_image=images.ensure_image,
    )


def containers_of(docker_client: docker.DockerClient, project: Project, function: str) -> list[str]:
    return [
        c["Id"]
        for c in project_containers(docker_client, project.name)
        if c["Labels"].get("io.fnctl.function") == function
    ]


# ---- the Python API -----------------------------------------------------------------------------------


def test_fresh_sandbox_answers_and_is_removed_afterwards(project: Project, docker_client: docker.DockerClient) -> None:
    result = local(project, "echo", {"name": "x"})
    assert result.outcome.ok and not result.warm
    assert result.outcome.result == {"echo": {"name": "x"}, "function": "echo", "revision": "local"}
    assert project_containers(docker_client, project.name) == []


def test_keep_warm_reuses_the_instance_until_the_code_changes(
    project: Project, docker_client: docker.DockerClient
) -> None:
    first = local(project, "editable", {}, keep_warm=True)
    assert first.outcome.result == {"version": 1} and not first.warm
    [kept] = containers_of(docker_client, project, "editable")
    second = local(project, "editable", {}, keep_warm=True)
    assert second.outcome.result == {"version": 1} and second.warm
    assert containers_of(docker_client, project, "editable") == [kept]

    (project.root / "functions" / "editable" / "main.py").write_text(EDITABLE.format(version=2))
    third = local(project, "editable", {}, keep_warm=True)
    assert third.outcome.result == {"version": 2} and not third.warm
    [replacement] = containers_of(docker_client, project, "editable")
    assert replacement != kept and container_gone(docker_client, kept)


def test_timeout_on_a_warm_instance_replaces_it_on_the_next_call(
    project: Project, docker_client: docker.DockerClient
) -> None:
    assert local(project, "spin", {}, keep_warm=True).outcome.ok
    [runaway] = containers_of(docker_client, project, "spin")
    timed_out = local(project, "spin", {"spin": True}, keep_warm=True)
    assert timed_out.warm and timed_out.outcome.failure is Failure.TIMEOUT
    wait_until(lambda: container_gone(docker_client, runaway), what="the runaway instance to be killed")
    after = local(project, "spin", {}, keep_warm=True)
    assert after.outcome.ok and after.outcome.result == {"spun": False} and not after.warm
    assert containers_of(docker_client, project, "spin") not in ([], [runaway])


def test_warm_instance_removed_behind_fnctls_back_is_replaced(
    project: Project, docker_client: docker.DockerClient
) -> None:
    assert local(project, "echo", {"n": 1}, keep_warm=True).outcome.ok
    [gone] = containers_of(docker_client, project, "echo")
    docker_client.api.remove_container(gone, force=True)  # its socket directory stays behind
    again = local(project, "echo", {"n": 2}, keep_warm=True)
    assert again.outcome.ok and not again.warm and again.outcome.result["echo"] == {"n": 2}


# ---- keep-warm without validating again --------------------------------------------------------------


@pytest.fixture
def two_functions(tmp_path: Path, docker_client: docker.DockerClient, base_image: str) -> Iterator[Project]:
    """`warm` (the one invoked) and `other`, whose manifest and source only validation reads."""
    root = tmp_path / "project"
    (root / "functions" / "other").mkdir(parents=True)
    (root / "functions" / "other" / "main.py").write_text(OTHER_SOURCE)
    functions = {
        "warm": {"handler": "probes.echo_context"},
        "other": {"handler": "main.handler", "source": "../functions/other"},
    }
    with throwaway(docker_client) as name:
        yield write_project(root, name, base_image, functions)


OTHER_SOURCE = "def handler(event):\n    return event\n"


def backdate(root: Path) -> None:
    """Files just written may still be changing while validation reads them, so such a validation is not
    recorded; these tests start from files last changed well before."""
    past = time.time() - 3600
    for path in [root, *root.rglob("*")]:
        os.utime(path, (past, past), follow_symlinks=False)


def count_validations(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = fnctl.manifest.validate.validate_paths

    def counting(project: Project, paths: Any = None) -> fnctl.manifest.validate.ValidationResult:
        calls.append(project.root)
        return real(project, paths)

    monkeypatch.setattr(fnctl.manifest.validate, "validate_paths", counting)
    return calls


def test_keep_warm_validates_again_only_when_a_manifest_or_a_source_changed(
    two_functions: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, root = two_functions, two_functions.root
    validations = count_validations(monkeypatch)
    backdate(root)
    assert not local(project, "warm", {"n": 1}, keep_warm=True).warm
    second = local(project, "warm", {"n": 2}, keep_warm=True)
    assert second.warm and second.outcome.result["echo"] == {"n": 2}
    assert len(validations) == 1  # nothing changed: the kept-warm instance answered without a validation

    manifest = root / "manifests" / "warm.yaml"
    manifest.write_text(manifest.read_text().replace("probes.echo_context", "probes.echo"))
    changed = local(project, "warm", {"n": 3}, keep_warm=True)
    assert changed.outcome.result == {"echo": {"n": 3}} and not changed.warm and len(validations) == 2
    assert local(project, "warm", {"n": 4}, keep_warm=True).warm and len(validations) == 2

    other = root / "manifests" / "other.yaml"
    valid = other.read_text()
    other.write_text(valid.replace("handler: main.handler", "handler: 42"))
    with pytest.raises(BadInput, match="the manifests are invalid"):
        local(project, "warm", {"n": 5}, keep_warm=True)
    other.write_text(valid)  # the same bytes as the last validation that passed
    assert local(project, "warm", {"n": 6}, keep_warm=True).warm and len(validations) == 3

    (root / "functions" / "other" / "main.py").write_text("def handler(:\n")
    with pytest.raises(BadInput, match="cannot parse main.py"):
        local(project, "warm", {"n": 7}, keep_warm=True)
    (root / "functions" / "other" / "main.py").write_text(OTHER_SOURCE)
    again = local(project, "warm", {"n": 8}, keep_warm=True)
    assert again.warm and again.outcome.result == {"echo": {"n": 8}} and len(validations) == 5


def test_a_fresh_sandbox_validates_again_only_when_a_manifest_or_a_source_changed(
    two_functions: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, root = two_functions, two_functions.root
    validations = count_validations(monkeypatch)
    backdate(root)
    assert local(project, "warm", {"n": 1}).outcome.ok and len(validations) == 1
    again = local(project, "warm", {"n": 2})
    assert not again.warm and again.outcome.result["echo"] == {"n": 2}
    assert len(validations) == 1  # nothing changed: the recorded function was started

    manifest = root / "manifests" / "warm.yaml"
    manifest.write_text(manifest.read_text().replace("probes.echo_context", "probes.echo"))
    changed = local(project, "warm", {"n": 3})
    assert changed.outcome.result == {"echo": {"n": 3}} and len(validations) == 2
    (root / "functions" / "other" / "main.py").write_text("def handler(:\n")
    with pytest.raises(BadInput, match="cannot parse main.py"):
        local(project, "warm", {"n": 4})
    assert len(validations) == 3


def test_keep_warm_by_manifest_path_detects_an_edit_of_that_manifest(
    two_functions: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    validations = count_validations(monkeypatch)
    backdate(two_functions.root)
    manifest = two_functions.root / "manifests" / "warm.yaml"
    assert not local(two_functions, str(manifest), {}, keep_warm=True).warm
    assert local(two_functions, str(manifest), {}, keep_warm=True).warm and len(validations) == 1
    manifest.write_text(manifest.read_text().replace("probes.echo_context", "no_such_module.handler"))
    with pytest.raises(BadInput, match="handler module 'no_such_module' not found"):
        local(two_functions, str(manifest), {}, keep_warm=True)


# ---- the command line ----------------------------------------------------------------------------------


def test_cli_prints_the_result_and_with_logs_the_output_and_duration(project: Project) -> None:
    done = run_cli(project, "invoke", "--local", "chatty", "--data", '{"say": "hi"}', "--logs")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"said": "hi"}
    assert "to stdout: hi" in done.stderr and "[INFO] to the logger" in done.stderr
    assert " ms" in done.stderr.splitlines()[-1]
    quiet = run_cli(project, "invoke", "--local", "chatty", "--data", '{"say": "hi"}')
    assert quiet.returncode == 0 and "to stdout" not in quiet.stderr


def test_cli_reads_the_event_from_a_file_or_stdin(project: Project, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text('{"from": "file"}')
    by_file = run_cli(project, "invoke", "--local", "echo", "--data", f"@{event}")
    assert by_file.returncode == 0, by_file.stderr
    assert json.loads(by_file.stdout)["echo"] == {"from": "file"}
    by_stdin = run_cli(project, "invoke", "--local", "manifests/echo.yaml", stdin='{"from": "stdin"}')
    assert by_stdin.returncode == 0, by_stdin.stderr
    assert json.loads(by_stdin.stdout)["echo"] == {"from": "stdin"}


def test_cli_function_error_exits_1_with_the_traceback(project: Project) -> None:
    done = run_cli(project, "invoke", "--local", "chatty", "-d", '{"fail": true}')
    assert done.returncode == 1
    assert done.stdout == ""
    assert "error (handler error): ValueError: asked to fail" in done.stderr
    assert "Traceback" in done.stderr and 'raise ValueError("asked to fail")' in done.stderr


def test_cli_refuses_an_event_that_is_not_json(project: Project, tmp_path: Path) -> None:
    done = run_cli(project, "invoke", "--local", "echo", "-d", "{not json")
    assert done.returncode == 2 and "not valid JSON" in done.stderr
    missing = run_cli(project, "invoke", "--local", "echo", "-d", f"@{tmp_path / 'nope.json'}")
    assert missing.returncode == 2 and "cannot read the event file" in missing.stderr


BIG_EVENT = json.dumps({"blob": "z" * 2048})
LIMITS = [
    ("spin", '{"spin": true}', "error (timeout): the function did not finish within its timeout of 1s"),
    ("memory-bomb", "{}", "error (out of memory): the function ran out of memory (limit 64Mi)"),
    ("big-result", '{"size": 100000000}', "error (output too large): OutputTooLarge: the result is at least"),
    (
        "small-payload",
        BIG_EVENT,
        f"error (payload too large): the event is {len(BIG_EVENT)} bytes; the limit is 1024 bytes",
    ),
    ("fork-bomb", "{}", "error (process limit reached): BlockingIOError: [Errno 11]"),
    ("fill-tmp", "{}", "error (disk full in /tmp): OSError: [Errno 28] No space left on device"),
    ("crash", "{}", "error (instance crashed): the instance crashed during the invocation (exit code 7)"),
    ("import-error", "{}", "error: the handler failed to load: RuntimeError: settings missing at import"),
    ("syntax-error", "{}", "error: the handler failed to load: SyntaxError: invalid syntax (broken_syntax.py"),
]


@pytest.mark.parametrize(("function", "data", "message"), LIMITS, ids=[case[0] for case in LIMITS])
def test_cli_each_limit_has_its_own_message_and_exit_code_1(
    project: Project, docker_client: docker.DockerClient, function: str, data: str, message: str
) -> None:
    done = run_cli(project, "invoke", "--local", function, "-d", data)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert message in done.stderr
    others = [m for f, _, m in LIMITS if f != function]
    assert not any(other in done.stderr for other in others)
    if function.endswith("-error"):
        assert "Traceback" in done.stderr and "/var/task/" in done.stderr  # the user's own frames
    wait_until(lambda: containers_of(docker_client, project, function) == [], what=f"{function}'s instance to go")


def test_cli_json_output_names_the_failure_kind(project: Project) -> None:
    done = run_cli(project, "invoke", "--local", "spin", "-d", '{"spin": true}', "-o", "json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["error"]["kind"] == "timeout"


def test_cli_keep_warm_and_sandbox_check(project: Project) -> None:
    cold = run_cli(project, "invoke", "--local", "echo", "--keep-warm", "-d", '{"n": 1}')
    assert cold.returncode == 0, cold.stderr
    warm = run_cli(project, "invoke", "--local", "echo", "--keep-warm", "-d", '{"n": 2}')
    assert warm.returncode == 0, warm.stderr
    assert json.loads(warm.stdout)["echo"] == {"n": 2} and "(warm instance)" in warm.stderr

    text = run_cli(project, "sandbox", "check")
    assert text.returncode == 0, text.stdout + text.stderr
    assert "pass" in text.stdout and "FAIL" not in text.stdout
    as_json = run_cli(project, "sandbox", "check", "echo", "-o", "json")
    assert as_json.returncode == 0
    [report] = json.loads(as_json.stdout)
    assert report["function"] == "echo" and len(report["checks"]) >= 15
    assert [c["name"] for c in report["checks"] if not c["ok"]] == []

    none = run_cli(project, "sandbox", "check", "chatty")
    assert none.returncode == 1 and "no running instances" in none.stderr


def test_cli_sandbox_check_fails_a_container_started_without_the_profile(
    project: Project, docker_client: docker.DockerClient, base_image: str
) -> None:
    docker_client.containers.run(  # plain `docker run`: root, all default capabilities, writable root
        base_image,
        ["python3", "-c", "import sys; sys.stdin.read()"],
        detach=True,
        stdin_open=True,
        network_mode="none",
        labels={"io.fnctl.project": project.name, "io.fnctl.function": "rogue", "io.fnctl.instance": "rogue"},
    )
    text = run_cli(project, "sandbox", "check", "rogue")
    assert text.returncode == 1 and "FAIL" in text.stdout
    [report] = json.loads(run_cli(project, "sandbox", "check", "rogue", "-o", "json").stdout)
    failed = {c["name"] for c in report["checks"] if not c["ok"]}
    assert {
        "non-root user",
        "capabilities dropped",
        "read-only root",
        "pids limit",
        "memory limit, no swap",
        "only its socket directory mounted",
    } <= failed


def test_cli_json_output_is_one_object_also_when_no_invocation_happens(project: Project) -> None:
    """Issue 16: a failed import (or build, or a bad event) still prints one JSON object on stdout."""
    done = run_cli(project, "invoke", "--local", "import-error", "-o", "json")
    assert done.returncode == 1, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ok"] is False and answer["result"] is None
    assert answer["error"]["type"] == "StartFailed"
    assert answer["error"]["message"] == "the handler failed to load: RuntimeError: settings missing at import"
    assert "error: the handler failed to load" in done.stderr  # and the person at the terminal sees it too
    bad = run_cli(project, "invoke", "--local", "echo", "-d", "{not json", "-o", "json")
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["type"] == "BadInput"
    build = run_cli(project, "invoke", "--local", "bad-deps", "-o", "json")
    assert build.returncode == 1, build.stderr
    answer = json.loads(build.stdout)
    assert answer["ok"] is False and answer["error"]["type"] == "BuildFailed"
    assert (
        answer["error"]["message"]
        == "requirements.txt: editable requirements (-e ./lib) cannot go into an image; drop -e"
    )


MISSING_LIBRARY = (
    "the handler failed to load: ImportError: missing shared library {library} in the base image (needed by "
    "{module}): rebuild the base with `bash scripts/build-base-image.sh`, or use a wheel that bundles it"
)


@pytest.mark.parametrize(
    ("function", "library", "module"),
    [("needs-gl", "libGL.so.1", "loads_gl"), ("vendored-extension", "libnil.so.3", "vendored_tls")],
    ids=["ctypes", "extension"],
)
def test_cli_a_missing_shared_library_is_named_not_the_wrappers_message(
    project: Project, function: str, library: str, module: str
) -> None:
    """Issue 16 item 1: a library the loader cannot find, anywhere in the exception chain (a ctypes OSError, an
    extension's ImportError), is what the error says, not the wrapper's "source directory" advice."""
    expected = MISSING_LIBRARY.format(library=library, module=module)
    done = run_cli(project, "invoke", "--local", function, "-o", "json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["error"]["message"] == expected
    text = run_cli(project, "invoke", "--local", function)
    assert text.returncode == 1 and f"error: {expected}" in text.stderr
    # the wrapper's words and the loader's own stay in the traceback
    assert "source directory" in text.stderr and f"{library}: cannot open shared object file" in text.stderr


# ---- what the command loads --------------------------------------------------------------------------


LOADED = """
import json, runpy, sys
sys.argv = ["fnctl", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("fnctl", run_name="__main__")
except SystemExit as exit:
    code = exit.code
heavy = ("docker", "jsonschema", "croniter", "yaml", "fnctl.runtimes.validation", "fnctl.data.plane",
         "fnctl.commands.localdata")
print(json.dumps({"exit": code, "loaded": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
"""


def _loaded(project: Project, *args: str) -> tuple[str, set[str]]:
    """`python -m fnctl ARGS`'s standard output, and which of the heavy modules it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", LOADED, *args],
        cwd=project.root,
        env={**os.environ, "FNCTL_BASE_IMAGE": project.base_image},
        capture_output=True,
        text=True,
        timeout=180,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["exit"] == 0, done.stderr
    return done.stdout, set(report["loaded"])


@pytest.mark.parametrize("warm", [False, True])
def test_an_invocation_without_data_calls_loads_neither_the_docker_sdk_nor_the_data_plane(
    project: Project, warm: bool
) -> None:
    """Nor, while the record of the last validation stands, the YAML parser and the validation behind it."""
    args = ["invoke", "--local", "echo", "-d", '{"n": 7}', *(["--keep-warm"] if warm else [])]
    _loaded(project, *args)  # builds the image (through the SDK) if it is not there yet, starts the warm instance
    out, loaded = _loaded(project, *args)
    assert json.loads(out)["echo"] == {"n": 7}
    assert loaded == set()
