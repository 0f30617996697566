"""Real-world Python functions run unchanged (issue 16): jinja2 templating, numpy linear algebra with a numpy
that publishes manylinux_2_28 wheels only, python-igraph (C++ inside), pyaes (an sdist only), handlers named
handler / lambda_handler / my_handler each with (event) and with (event, context), API-gateway proxy events
(REST API's format 1.0, HTTP API's 2.0 with a base64 body). Each gives, with `invoke --local` and deployed,
what the same code gives on the host with the same wheels.

Downloads come from PyPI once per run: pip's own cache (PIP_CACHE_DIR, the user's) is kept, and fnctl's cache
is shared by the tests of this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from deploy_helpers import Project, cleanup, make_project

from fnctl.engine import dockerio, imageplatform, pydeps

pytestmark = pytest.mark.docker

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "realworld"
API_EVENT = {
    "resource": "/hello",
    "path": "/hello",
    "httpMethod": "POST",
    "headers": {"Content-Type": "application/json"},
    "queryStringParameters": {"name": "Ada"},
    "requestContext": {"stage": "prod", "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"},
    "body": json.dumps({"order": 7}),
    "isBase64Encoded": False,
}
HTTP_API_EVENT = {  # API Gateway's HTTP API, payload format 2.0
    "version": "2.0",
    "routeKey": "POST /orders",
    "rawPath": "/orders",
    "rawQueryString": "",
    "cookies": ["session=abc"],
    "headers": {"content-type": "application/json"},
    "requestContext": {"http": {"method": "POST", "path": "/orders"}, "stage": "$default"},
    "body": "eyJpdGVtcyI6IFsidGVhIl19",  # {"items": ["tea"]}
    "isBase64Encoded": True,
}
FUNCTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "templating": ("templating.handler", {"title": "<b>List</b>", "items": ["tea", "cake"]}),
    "linalg": ("linalg.lambda_handler", {"n": 8, "seed": 7}),
    "crypto": ("crypto.my_handler", {"text": "attack at dawn", "nonce": 5}),
    "api": ("api.lambda_handler", API_EVENT),
    "http-api": ("names.lambda_handler", HTTP_API_EVENT),
    "digest": ("names.my_handler", {"text": "the quick brown fox"}),
}
GRAPH: dict[str, tuple[str, dict[str, Any]]] = {"graph": ("graph.handler", {"seed": 42, "n": 60})}

# The host runs the handler as a laptop (or Lambda) would: on the main thread, with a stand-in context.
HOST_CALL = """\
import inspect, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
module, _, attr = sys.argv[3].rpartition(".")
handler = getattr(__import__(module), attr)
class Context:
    def get_remaining_time_in_millis(self):
        return 10000
event = json.loads(sys.argv[4])
args = (event, Context()) if len(inspect.signature(handler).parameters) == 2 else (event,)
print(json.dumps(handler(*args)))
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("realworld-cache")


def _project(
    root: Path, client: docker.DockerClient, base_image: str, cache: Path, functions: dict[str, tuple[str, Any]]
) -> Project:
    project = make_project(root, client, base_image)
    shutil.copytree(FIXTURE, root / "functions" / "realworld")
    for name, (handler, event) in functions.items():
        (root / "manifests" / f"{name}.yaml").write_text(
            textwrap.dedent(f"""\
            apiVersion: fnctl/v1
            kind: Function
            metadata: {{name: {name}}}
            spec:
              runtime: python3.11
              source: ../functions/realworld
              handler: {handler}
              limits: {{timeout: 20s, memory: 256Mi}}
              scaling: {{minInstances: 1, maxInstances: 1}}
              healthCheck: [{{event: {json.dumps(event)}}}]
            """)
        )
    pip_cache = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
    project.env |= {"XDG_CACHE_HOME": str(cache), "PIP_CACHE_DIR": pip_cache}
    return project


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, base_image: str, cache: Path
) -> Iterator[Project]:
    made = _project(tmp_path_factory.mktemp("realworld") / "project", docker_client, base_image, cache, FUNCTIONS)
    try:
        yield made
    finally:
        cleanup(made)


def _on_host(project: Project, cache: Path, handler: str, event: Any) -> Any:
    """What the handler returns on the host, importing the very wheels fnctl installed for the image."""
    source = project.root / "functions" / "realworld"
    base_id = dockerio.image_id(project.base_image)
    assert base_id is not None
    platform = imageplatform.probe(project.base_image, base_id, cache / "fnctl")
    deps = pydeps.install_dependencies(source, lambda: platform, cache / "fnctl", lambda _: None)
    assert deps is not None
    done = subprocess.run(
        [sys.executable, "-I", "-c", HOST_CALL, str(source), str(deps), handler, json.dumps(event)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def _invoke(project: Project, *args: str, event: Any) -> Any:
    done = project.fnctl("invoke", *args, "-d", json.dumps(event), "-o", "json")
    answer = json.loads(done.out)
    assert done.code == 0 and answer["ok"], done.text
    return answer["result"]


def _check_same_everywhere(project: Project, cache: Path, functions: dict[str, tuple[str, Any]]) -> None:
    started = time.monotonic()
    local = {name: _invoke(project, "--local", name, event=event) for name, (_, event) in functions.items()}
    print(
        f"\n[timing] invoke --local of {len(functions)} functions (build included): {time.monotonic() - started:.1f}s"
    )
    started = time.monotonic()
    project.ok("apply")
    deployed = {name: _invoke(project, name, event=event) for name, (_, event) in functions.items()}
    print(f"[timing] apply and invoke: {time.monotonic() - started:.1f}s")
    host = {name: _on_host(project, cache, handler, event) for name, (handler, event) in functions.items()}
    assert local == host
    assert deployed == host


def test_real_world_functions_give_the_hosts_results_locally_and_deployed(project: Project, cache: Path) -> None:
    _check_same_everywhere(project, cache, FUNCTIONS)
    host = {name: _on_host(project, cache, handler, event) for name, (handler, event) in FUNCTIONS.items()}
    # and the results are the libraries' own, not empty ones
    assert host["templating"]["html"] == "<h1>&lt;b&gt;List&lt;/b&gt;</h1><ul><li>TEA</li><li>CAKE</li></ul>"
    assert host["linalg"]["numpy"] == "2.4.6" and host["linalg"]["residual_ok"] is True
    assert len(host["crypto"]["ciphertext"]) == 2 * len("attack at dawn")
    response = host["api"]
    assert response["statusCode"] == 200
    assert json.loads(response["body"]) == {
        "message": "Hello, Ada! You asked for /hello with POST.",
        "echo": {"order": 7},
    }
    assert host["http-api"]["statusCode"] == 201
    assert json.loads(host["http-api"]["body"]) == {
        "route": "POST /orders",
        "method": "POST",
        "path": "/orders",
        "cookies": ["session=abc"],
        "got": {"items": ["tea"]},
    }
    assert host["digest"] == {"sha256": hashlib.sha256(b"the quick brown fox").hexdigest(), "words": 4}


def test_a_code_only_change_never_resolves_again(project: Project, cache: Path) -> None:
    _invoke(project, "--local", "templating", event={})  # built (or already) with the dependencies resolved
    resolved = sorted((cache / "fnctl" / "resolved").iterdir())
    installed = sorted((cache / "fnctl" / "deps").iterdir())
    code = project.root / "functions" / "realworld" / "templating.py"
    code.write_text(code.read_text() + "\n# a code-only change\n")
    done = project.fnctl("invoke", "--local", "templating", "-d", "{}")
    assert done.code == 0, done.text
    assert "resolving" not in done.err and "installing" not in done.err, done.err
    assert sorted((cache / "fnctl" / "resolved").iterdir()) == resolved
    assert sorted((cache / "fnctl" / "deps").iterdir()) == installed


@pytest.mark.docker
def test_seeded_igraph_and_signal_behave_as_on_the_main_thread(
    tmp_path: Path, docker_client: docker.DockerClient, base_image: str, cache: Path
) -> None:
    """Needs handlers on the main thread (issue 16 item 4) and the Lambda context (item 5)."""
    made = _project(tmp_path / "project", docker_client, base_image, cache, GRAPH)
    try:
        _check_same_everywhere(made, cache, GRAPH)
    finally:
        cleanup(made)


def test_the_base_image_has_the_libraries_manylinux_wheels_assume(
    base_image: str, docker_client: docker.DockerClient
) -> None:
    probe = "import ctypes\nfor lib in ('libstdc++.so.6', 'libgcc_s.so.1', 'libz.so.1', 'libexpat.so.1', "
    probe += "'libglib-2.0.so.0', 'libX11.so.6', 'libSM.so.6'): ctypes.CDLL(lib)\nprint('ok')"
    output = docker_client.containers.run(base_image, ["-c", probe], entrypoint=["python3"], remove=True)
    assert output.decode().strip() == "ok"
