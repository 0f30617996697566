"""`fnctl apply` and `fnctl serve` with engine = "swarm", on a swarm of 3 nodes on this machine
(tests/swarm_helpers.py): a revision's instances are its service (created, replaced, removed by the deploy
commands; `status` shows its tasks), and the gateway of node 2 serves `/invoke/NAME` from the tasks on its own
node over their sockets, through a blue-green switch under load without a failed request. The gateway listens
on 127.0.0.1; nothing is sent to an address inside the nodes' namespaces."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from polling import wait_until
from rollout_helpers import free_port
from sandbox_handlers.harness import probes_tag, run_cli, throwaway, write_project
from swarm_helpers import SwarmNodes, swarm_nodes

from fnctl.deploy.rolloutdriver import run_checks
from fnctl.engine.swarm import SwarmEngine, service_name
from fnctl.gateway.forward import HOP_HEADER, PEER_PATH
from fnctl.manifest.model import HealthCheck, Strategy
from fnctl.manifest.project import Project, load_project
from fnctl.rollout.record import Record, State
from fnctl.state.location import StateLocation
from fnctl.state.store import connect

pytestmark = pytest.mark.docker

SPEC: dict[str, Any] = {
    "handler": "probes.echo_context",
    "limits": {"memory": "64Mi", "cpu": 0.5},
    "scaling": {"minInstances": 3, "maxInstances": 3, "concurrency": 4},
    "access": {"roles": ["public"]},
}

TRIGGER = """apiVersion: fnctl/v1
kind: Trigger
metadata: {name: web-http}
spec:
  function: web
  http: {path: /hook, methods: [POST]}
"""


@pytest.fixture(scope="module")
def project(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, base_image: str
) -> Iterator[Project]:
    with throwaway(docker_client) as name:
        project = write_project(tmp_path_factory.mktemp("swarmapply") / "project", name, base_image, {"web": SPEC})
        (project.root / "manifests" / "web-http.yaml").write_text(TRIGGER)
        yield project


@pytest.fixture(scope="module")
def swarm(project: Project) -> Iterator[SwarmNodes]:
    # The image apply builds (same project, function and source: same tag), loaded into every node: what an
    # operator does with a registry or `scripts/swarm-nodes.sh load` (docs/swarm.md).
    image = probes_tag(project, "web")
    with swarm_nodes(3) as nodes:
        nodes.load(image)
        config = project.root / "fnctl.toml"
        config.write_text(
            f'engine = "swarm"\n{config.read_text()}\n[swarm]\nmanager = "unix://{nodes.manager}"\n'
            f'node = "unix://{nodes.socket(2)}"\ninstanceRoot = "{nodes.instance_root}"\nmaxPerNode = 1\n'
            f'\n[gateway]\naddress = "127.0.0.1:{free_port()}"\n'
        )
        yield nodes


def fnctl(project: Project, state: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    done = run_cli(project, *args, "--state", str(state))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done


def manifest(project: Project, name: str, spec: dict[str, Any]) -> None:
    document = {"apiVersion": "fnctl/v1", "kind": "Function", "metadata": {"name": name},
                "spec": {"runtime": "python3.11", "source": "../functions/probes", **spec}}  # fmt: skip
    (project.root / "manifests" / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def test_apply_runs_a_revision_as_its_service_and_rollback_and_delete_remove_services(
    swarm: SwarmNodes, project: Project, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    engine = SwarmEngine(swarm.manager, swarm.instance_root)
    first, second = (service_name(project.name, "web", r) for r in ("1", "2"))
    try:
        fnctl(project, state, "apply")
        assert engine.services(project.name) == {first: 3}
        engine.wait_running(first, 3)
        shown = json.loads(fnctl(project, state, "status", "-o", "json").stdout)
        tasks = shown[0]["instances"]
        assert shown[0]["liveRevision"] == 1
        assert sorted(t["id"].split("@")[1] for t in tasks) == [swarm.hostname(k) for k in (1, 2, 3)]
        assert all(t["id"].startswith(first + ".") and t["state"] == "running" and t["healthy"] for t in tasks)
        fnctl(project, state, "apply")  # nothing changed: nothing replaced
        # A rollout's synthetic checks reach a task of the canary's service on this node (node 2).
        settings = load_project(project.root).swarm
        record = Record(0, "web", 1, 1, Strategy.CANARY, State.PROGRESSING, 0, 0.0, 0.0, {1: 100})
        store = connect(state)
        try:
            good = HealthCheck({"x": 1}, expect={"echo": {"x": 1}, "function": "web", "revision": "1"})
            assert run_checks(store, record, (good,), swarm=settings, project=project.name) == ()
            bad = run_checks(store, record, (HealthCheck({}, expect=0),), swarm=settings, project=project.name)
            assert len(bad) == 1 and "unexpected result" in bad[0]
        finally:
            store.close()
        assert engine.services(project.name) == {first: 3}

        manifest(project, "web", SPEC | {"limits": {"memory": "64Mi", "cpu": 0.4}})
        fnctl(project, state, "apply")  # a new revision: a new service; the old one goes once traffic left
        assert engine.services(project.name) == {second: 3}

        fnctl(project, state, "rollback", "web")
        assert engine.services(project.name) == {first: 3}
        engine.wait_running(first, 3)

        fnctl(project, state, "delete", "web")
        assert engine.services(project.name) == {}
        assert not any((Path(swarm.instance_root) / swarm.hostname(1)).glob(f"{first}*"))
    finally:
        manifest(project, "web", SPEC)
        for service in engine.services(project.name):
            engine.remove(service)


def test_invoke_direct_reaches_its_nodes_task_and_logs_read_the_tasks_of_every_node(
    swarm: SwarmNodes, project: Project, tmp_path: Path
) -> None:
    """`fnctl invoke --direct` under Swarm runs on a task of this machine's node (swarm.node, here named by
    FNCTL_SWARM_NODE), over its socket; `fnctl logs` reads every node's tasks through the manager, each line
    named by its task and node as `fnctl status` names them."""
    state = tmp_path / "state.db"
    engine = SwarmEngine(swarm.manager, swarm.instance_root)
    manifest(project, "web", SPEC | {"handler": "probes.chatty"})  # prints what it is told to say
    service = service_name(project.name, "web", "1")
    try:
        fnctl(project, state, "apply")
        hostnames = engine.hostnames()
        slots = {hostnames[t.node_id]: t.slot for t in engine.wait_running(service, 3)}
        for k in (1, 2, 3):
            done = run_cli(
                project,
                "invoke", "web", "--direct", "-d", json.dumps({"say": f"hello-{k}"}), "--state", str(state),
                env={"FNCTL_SWARM_NODE": f"unix://{swarm.socket(k)}"},
            )  # fmt: skip
            assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
            assert f"hello-{k}" in done.stdout, done.stdout
        # each line: its task and node, its revision, then the runtime's own [invocation] prefix and the line
        wanted = {
            (f"[{service}.{slots[swarm.hostname(k)]}@{swarm.hostname(k)} r1] [", f"to stdout: hello-{k}")
            for k in (1, 2, 3)
        }

        def logged() -> bool:
            lines = fnctl(project, state, "logs", "web").stdout.splitlines()
            return all(any(x.startswith(head) and x.endswith(tail) for x in lines) for head, tail in wanted)

        wait_until(logged, what="each node's task's line in `fnctl logs`", timeout=30)
    finally:
        manifest(project, "web", SPEC)
        for name in engine.services(project.name):
            engine.remove(name)


def test_a_missing_image_on_the_nodes_is_a_clear_error(swarm: SwarmNodes, project: Project, tmp_path: Path) -> None:
    (project.root / "functions" / "other").mkdir(exist_ok=True)
    (project.root / "functions" / "other" / "main.py").write_text("def handler(event, context):\n    return 1\n")
    manifest(project, "other", {"source": "../functions/other", "handler": "main.handler"})
    engine = SwarmEngine(swarm.manager, swarm.instance_root)
    try:
        done = run_cli(project, "apply", "--state", str(tmp_path / "state.db"))
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        assert "Every node needs the image" in done.stdout + done.stderr, done.stdout + done.stderr
        assert not [s for s in engine.services(project.name) if "-other-" in s]  # the failed revision's is gone
    finally:
        (project.root / "manifests" / "other.yaml").unlink()
        for service in engine.services(project.name):
            engine.remove(service)


class Load(threading.Thread):
    """POST /invoke/web to the node's gateway on 127.0.0.1, one request after another on a keep-alive
    connection, recording (status, revision that answered)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.answers: list[tuple[int, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop.is_set():
            try:
                connection.request("POST", "/invoke/web", body=b"{}", headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                body = response.read()
                revision = json.loads(body).get("revision", "") if response.status == 200 else body.decode()[:200]
                self.answers.append((response.status, str(revision)))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.answers.append((0, repr(exc)))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.close()


def test_the_node_gateway_serves_its_tasks_through_a_blue_green_switch_without_failures(
    swarm: SwarmNodes, project: Project, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    port = int(str(project.root.joinpath("fnctl.toml").read_text()).rsplit("127.0.0.1:", 1)[1].split('"')[0])
    engine = SwarmEngine(swarm.manager, swarm.instance_root)
    fnctl(project, state, "apply")
    err = (tmp_path / "serve.err").open("ab")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "fnctl", "serve", "--state", str(state)],
        cwd=project.root,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    loads = [Load(port) for _ in range(3)]
    try:
        wait_until(lambda: _ok(port), what="the node's gateway serving web from its task", timeout=60)
        for load in loads:
            load.start()
        wait_until(lambda: all(len(load.answers) >= 30 for load in loads), what="blue serving", timeout=30)
        manifest(project, "web", SPEC | {"limits": {"memory": "64Mi", "cpu": 0.4}})
        fnctl(project, state, "apply")  # green: service 2 up and checked, traffic switched, service 1 removed
        switched = [len(load.answers) for load in loads]
        wait_until(
            lambda: all(len(load.answers) >= n + 50 for load, n in zip(loads, switched, strict=True)),
            what="green serving",
            timeout=30,
        )
        status, body = _post(port, "/hook")  # the HTTP trigger, through the same gateway and task
        assert status == 200 and json.loads(body)["revision"] == "2", body
    finally:
        for load in loads:
            load.stop.set()
            load.join(timeout=30)
        gateway.terminate()
        gateway.wait(timeout=60)
        manifest(project, "web", SPEC)
        for service in engine.services(project.name):
            engine.remove(service)
    answers = [answer for load in loads for answer in load.answers]
    failed = [answer for answer in answers if answer[0] != 200]
    print(f"\nblue-green through node 2's gateway: {len(answers)} requests, {len(failed)} failed")
    assert failed == [], (failed[:5], (tmp_path / "serve.err").read_text()[-3000:])
    assert {"1", "2"} <= {revision for _, revision in answers}
    assert all(revision == "2" for load in loads for _, revision in load.answers[-20:])
    assert engine.services(project.name) == {}


def _post(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _ok(port: int) -> bool:
    try:
        return _post(port, "/invoke/web")[0] == 200
    except OSError:
        return False


def test_a_node_without_a_task_answers_503_until_swarm_places_one_there(
    swarm: SwarmNodes, project: Project, tmp_path: Path
) -> None:
    """The gateway starts nothing: with no task of the revision on its node it answers 503 (the point where a
    request would be forwarded, docs/scale-out.md); a task Swarm places there later is adopted and serves."""
    state = tmp_path / "state.db"
    engine = SwarmEngine(swarm.manager, swarm.instance_root)
    manifest(project, "web", SPEC | {"scaling": {"minInstances": 1, "maxInstances": 1}})
    config = project.root / "fnctl.toml"
    original = config.read_text()
    gateway = None
    try:
        fnctl(project, state, "apply")
        service = service_name(project.name, "web", "1")
        _, empty = _placed_and_not(engine, swarm, service)
        config.write_text(
            original.replace(f'node = "unix://{swarm.socket(2)}"', f'node = "unix://{swarm.socket(empty)}"')
        )
        port = int(original.rsplit("127.0.0.1:", 1)[1].split('"')[0])
        gateway = subprocess.Popen(
            [sys.executable, "-m", "fnctl", "serve", "--state", str(state)],
            cwd=project.root,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "serve.err").open("ab"),
        )
        status = wait_until(lambda: _status(port), what="the gateway answering", timeout=60)
        assert status == 503
        engine.scale(service, 3)  # max one per node: now a task on every node, this one's too
        wait_until(lambda: _status(port) == 200, what="the task placed on this node adopted", timeout=60)
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=60)
        config.write_text(original)
        manifest(project, "web", SPEC)
        for service in engine.services(project.name):
            engine.remove(service)


def _status(port: int) -> int | None:
    try:
        return _post(port, "/invoke/web")[0]
    except OSError:
        return None


def _placed_and_not(engine: SwarmEngine, swarm: SwarmNodes, service: str) -> tuple[int, int]:
    """The numbers of a node that runs `service`'s one task (once it runs) and of a node that does not."""
    hostnames = engine.hostnames()
    placed = {hostnames[t.node_id] for t in engine.wait_running(service, 1)}
    a = next(k for k in (1, 2, 3) if swarm.hostname(k) in placed)
    b = next(k for k in (1, 2, 3) if swarm.hostname(k) not in placed)
    return a, b


def _gateways_with_and_without_the_task(
    project: Project,
    state: Path | str,
    swarm: SwarmNodes,
    engine: SwarmEngine,
    auth: dict[str, str],
    logs: Path,
    gateways: list[subprocess.Popen[bytes]],
) -> tuple[int, Path, int, Path]:
    """Node gateways A, on the node running revision 1 of web's one task, and B, on a node without one, each
    on a port of its own with its logs under `logs`, added to `gateways` (A first) as they start, for the
    caller to tear down; once both answer /invoke/web 200 with `auth` (A from its task, B by forwarding to A):
    (A's port, A's log, B's port, B's log)."""
    a, b = _placed_and_not(engine, swarm, service_name(project.name, "web", "1"))
    port_a, port_b = free_port(), free_port()
    log_a, log_b = logs / "gateway-a", logs / "gateway-b"
    gateways.append(_node_gateway(project, state, swarm.socket(a), port_a, log_a))
    gateways.append(_node_gateway(project, state, swarm.socket(b), port_b, log_b))
    wait_until(lambda: _reach(port_a, auth) == 200, what="node A's gateway serving its task", timeout=60)
    wait_until(lambda: _reach(port_b, auth) == 200, what="node B's gateway forwarding to A's", timeout=30)
    return port_a, log_a, port_b, log_b


def _node_gateway(project: Project, state: Path | str, node: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """A gateway for one node, on 127.0.0.1:port: the node's engine by FNCTL_SWARM_NODE (one fnctl.toml for
    every node), its access log in `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "fnctl", "serve", "--state", str(state), "--address", f"127.0.0.1:{port}"],
        cwd=project.root,
        env={**os.environ, "FNCTL_SWARM_NODE": f"unix://{node}"},
        stdout=log.with_suffix(".out").open("ab"),
        stderr=log.with_suffix(".err").open("ab"),
    )


def _request(port: int, headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/invoke/web", body=b"{}", headers={"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _access(log: Path, request_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.with_suffix(".out").read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("requestId") == request_id]


def _tear_down(gateways: list[subprocess.Popen[bytes]], project: Project, engine: SwarmEngine, *added: Path) -> None:
    """Stop the node gateways a test started, remove the manifests it `added`, put the function's manifest
    back as the module's other tests expect it, and remove the project's services."""
    for gateway in gateways:
        if gateway.poll() is None:
            gateway.terminate()
            gateway.wait(timeout=60)
    for path in added:
        path.unlink(missing_ok=True)
    manifest(project, "web", SPEC)
    for service in engine.services(project.name):
        engine.remove(service)


def test_a_node_gateway_without_an_instance_forwards_to_a_peer_that_has_one(
    swarm: SwarmNodes, project: Project, tmp_path: Path
) -> None:
    """One task, on node A; node B's gateway forwards to A's gateway, which authenticates, routes and runs it
    (B audits a `forwarded`, A the invocation). A hop header from outside skips nothing on A and only stops B
    from forwarding; with A's gateway killed, B answers 503 saying no live gateway has an instance."""
    state = tmp_path / "state.db"
    engine = SwarmEngine(swarm.manager, swarm.instance_root)
    manifest(
        project, "web", SPEC | {"scaling": {"minInstances": 1, "maxInstances": 1}, "access": {"roles": ["reader"]}}
    )
    gateways: list[subprocess.Popen[bytes]] = []
    try:
        fnctl(project, state, "apply")
        key = fnctl(project, state, "keys", "create", "forwarding", "--role", "reader").stdout.strip()
        auth = {"Authorization": f"Bearer {key}"}
        port_a, log_a, port_b, log_b = _gateways_with_and_without_the_task(
            project, state, swarm, engine, auth, tmp_path, gateways
        )

        before = _forwarded(port_b)
        status, body = _request(port_b, auth | {"X-Request-Id": "forwarded-1"})
        assert status == 200 and json.loads(body) == {"echo": {}, "function": "web", "revision": "1"}, body
        # B relayed it (audited as forwarded, no revision), A ran it on its node's task (access lines come in
        # batches: waited for)
        seen_b = wait_until(lambda: _access(log_b, "forwarded-1"), what="B's access line", timeout=10)
        seen_a = wait_until(lambda: _access(log_a, "forwarded-1"), what="A's access line", timeout=10)
        assert [(x["outcome"], x["revision"], x["status"]) for x in seen_b] == [("forwarded", None, 200)]
        assert [(x["outcome"], x["revision"], x["status"]) for x in seen_a] == [("ok", 1, 200)]
        # B counts it in /metrics; A saw the client's address B signed (here both are 127.0.0.1) ...
        assert _forwarded(port_b) == before + 1
        assert seen_a[0]["source"] == "127.0.0.1"
        # ... and believes no X-Forwarded-For a client sends, even with the hop header
        spoofed = {HOP_HEADER: "forged", "X-Forwarded-For": "203.0.113.9", "X-Request-Id": "spoofed-1"}
        assert _request(port_a, auth | spoofed)[0] == 200
        [line] = wait_until(lambda: _access(log_a, "spoofed-1"), what="A's access line of a spoofed one", timeout=10)
        assert line["source"] == "127.0.0.1"

        # A hop header from outside: A still authenticates (no key, a wrong key: 401) ...
        assert _request(port_a, {HOP_HEADER: "forged"})[0] == 401
        assert _request(port_a, {HOP_HEADER: "forged", "Authorization": "Bearer fn_wrong"})[0] == 401
        # ... B too before anything else, and it only stops B from forwarding
        assert _request(port_b, {HOP_HEADER: "forged"})[0] == 401
        status, body = _request(port_b, auth | {HOP_HEADER: "forged"})
        assert status == 503 and "not forwarded again" in json.loads(body)["error"], body

        gateways[0].kill()  # A's gateway gone without a word: its heartbeat ages out
        gateways[0].wait(timeout=30)

        def no_peer() -> bool:
            status, body = _request(port_b, auth)
            return status == 503 and "no live gateway has one" in json.loads(body)["error"]

        wait_until(no_peer, what="node B answering 503: no live gateway has an instance", timeout=30)
    finally:
        _tear_down(gateways, project, engine)


PEER_RUNS = """apiVersion: fnctl/v1
kind: Collection
metadata: {name: orders}
spec: {schema: {type: object}}
---
apiVersion: fnctl/v1
kind: Trigger
metadata: {name: kick}
spec: {function: web, manual: {event: {kicked: default}}}
---
apiVersion: fnctl/v1
kind: Trigger
metadata: {name: orders-check}
spec: {function: web, on: {collection: orders, event: beforeCreate}}
---
apiVersion: fnctl/v1
kind: Policy
metadata: {name: peers}
spec: {roles: {reader: {invoke: [web], read: [orders], write: [orders], run: [kick]}}}
"""


def _call(
    port: int, path: str, body: Any, headers: dict[str, str], source: str = "127.0.0.1"
) -> tuple[int, Any, http.client.HTTPMessage]:
    """POST `body` as JSON to a gateway on 127.0.0.1:port from the local address `source`: the answer's status,
    JSON body and headers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null"), response.headers
    finally:
        connection.close()


def test_a_manual_run_a_data_hook_and_an_http_event_through_a_node_without_a_task_run_on_a_peer(
    swarm: SwarmNodes, project: Project, tmp_path: Path
) -> None:
    """One task, on node A; through node B's gateway: a manual trigger's run runs once on A as its caller (B
    audits it `forwarded`, A runs it, under one request id); a beforeCreate hook runs on A and the document it
    returns is what B stores; an HTTP trigger's event on A names the client's address (127.0.0.2, signed by
    B), not B's. Before, the first two were 503s on B and the event named B's address."""
    state = tmp_path / "state.db"
    engine = SwarmEngine(swarm.manager, swarm.instance_root)
    manifest(
        project, "web", SPEC | {"scaling": {"minInstances": 1, "maxInstances": 1}, "access": {"roles": ["reader"]}}
    )
    extra = project.root / "manifests" / "peer-runs.yaml"
    extra.write_text(PEER_RUNS)
    gateways: list[subprocess.Popen[bytes]] = []
    try:
        fnctl(project, state, "apply")
        key = fnctl(project, state, "keys", "create", "peer-runs", "--role", "reader").stdout.strip()
        auth = {"Authorization": f"Bearer {key}"}
        port_a, log_a, port_b, log_b = _gateways_with_and_without_the_task(
            project, state, swarm, engine, auth, tmp_path, gateways
        )

        status, body, headers = _call(port_b, "/v1/triggers/kick/run", {"n": 1}, auth | {"X-Request-Id": "kick-1"})
        assert (status, body) == (200, {"echo": {"n": 1}, "function": "web", "revision": "1"}), body
        assert headers["X-Fnctl-Revision"] == "1"  # the revision that ran on A, as a run on B itself answers
        seen_b = wait_until(lambda: _access(log_b, "kick-1"), what="B's access line of the run", timeout=10)
        seen_a = wait_until(lambda: _access(log_a, "kick-1"), what="A's access line of the run", timeout=10)
        assert [(x["outcome"], x["revision"], x["status"]) for x in seen_b] == [("forwarded", None, 200)]
        assert [(x["outcome"], x["revision"], x["status"], x["trigger"]) for x in seen_a] == [("ok", 1, 200, "kick")]
        assert seen_a[0]["principal"] == seen_b[0]["principal"] != "trigger:kick"  # the caller's key, on both

        status, body, _ = _call(port_b, "/v1/collections/orders/docs", {"n": 5}, auth)
        assert status == 201, body
        stored = body["data"]  # what the hook on A returned: its event, as A's task got it from B
        assert (stored["function"], stored["echo"]["trigger"], stored["echo"]["proposed"]) == (
            "web",
            "orders-check",
            {"n": 5},
        )

        status, body, _ = _call(port_b, "/hook", {"n": 2}, auth, source="127.0.0.2")
        assert status == 200, body
        assert body["echo"]["requestContext"]["identity"]["sourceIp"] == "127.0.0.2"  # B saw it; A ran it
    finally:
        _tear_down(gateways, project, engine, extra)


def _forwarded(port: int) -> float:
    """fnctl_forwarded_requests_total{function="web"} in a gateway's /metrics."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    series = 'fnctl_forwarded_requests_total{function="web"} '
    return sum(float(line[len(series) :]) for line in text.splitlines() if line.startswith(series))


def _reach(port: int, headers: dict[str, str]) -> int | None:
    try:
        return _request(port, headers)[0]
    except OSError:
        return None


CRON = """apiVersion: fnctl/v1
kind: Trigger
metadata: {name: every-second}
spec:
  function: web
  cron: {schedule: "* * * * * *"}
"""


def _leads(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/readyz")
            return bool(json.loads(connection.getresponse().read()).get("leader"))
        finally:
            connection.close()
    except (OSError, ValueError):
        return False


def _runs(state: StateLocation) -> list[tuple[str, str, int | None, int]]:
    """(request id, outcome, revision, status) of every audited run of the cron trigger."""
    store = connect(state)
    try:
        rows = store._query(
            "SELECT request_id, outcome, revision, status FROM invocations WHERE trigger = 'every-second' ORDER BY id"
        )
    finally:
        store.close()
    return [(str(r), str(o), None if v is None else int(v), int(s)) for r, o, v, s in rows]


def test_the_leaders_cron_ticks_run_on_a_peer_when_its_node_has_no_task_once_each(
    swarm: SwarmNodes, project: Project, tmp_path: Path, pg_url: str
) -> None:
    """A cron trigger every second for a function with one task, on node A; the leader (one, on PostgreSQL) is
    node B's gateway (started first), which has none: each tick goes, signed, to A's gateway and runs there
    once (A audits the run as `trigger:every-second`, B a `forwarded`, under one request id); before, B
    answered each tick 503."""
    location = StateLocation(tmp_path / "anchor" / "state", pg_url)
    state = location.to_arg()
    engine = SwarmEngine(swarm.manager, swarm.instance_root)
    manifest(project, "web", SPEC | {"scaling": {"minInstances": 1, "maxInstances": 1}})
    cron = project.root / "manifests" / "every-second.yaml"
    cron.write_text(CRON)
    gateways: list[subprocess.Popen[bytes]] = []
    try:
        fnctl(project, state, "apply")
        service = service_name(project.name, "web", "1")
        a, b = _placed_and_not(engine, swarm, service)
        port_a, port_b = free_port(), free_port()
        gateways.append(_node_gateway(project, state, swarm.socket(b), port_b, tmp_path / "gateway-b"))
        wait_until(lambda: _leads(port_b), what="node B's gateway leading", timeout=60)
        gateways.append(_node_gateway(project, state, swarm.socket(a), port_a, tmp_path / "gateway-a"))
        wait_until(lambda: _reach(port_a, {}) == 200, what="node A's gateway serving its task", timeout=60)

        def ran_on_a() -> int:
            return sum(1 for _, outcome, revision, _ in _runs(location) if (outcome, revision) == ("ok", 1))

        first = wait_until(ran_on_a, what="a tick run on node A", timeout=30)
        wait_until(lambda: ran_on_a() >= first + 4, what="four more ticks run on node A", timeout=30)
        assert _leads(port_b) and not _leads(port_a)  # B led throughout: every tick was B's to send
        # what runs there only for a request signed by a gateway of this state: not for anyone who reaches A
        assert _post(port_a, PEER_PATH + "web")[0] == 401
        gateways[1].terminate()  # A stops: no run half-audited when the rows are read
        gateways[1].wait(timeout=60)
        gateways[0].terminate()
        gateways[0].wait(timeout=60)
        runs = _runs(location)
        ran = [rid for rid, outcome, revision, _ in runs if (outcome, revision) == ("ok", 1)]
        sent = [
            rid for rid, outcome, revision, status in runs if (outcome, revision, status) == ("forwarded", None, 200)
        ]
        assert len(ran) == len(set(ran)) >= 5  # each run once
        assert set(ran) <= set(sent)  # each one the leader's forwarded tick, under its request id
        # the ticks B sent before A's gateway was up found no peer and ran nothing (503 on B's own node)
        assert all(s in (200, 503) for _, _, _, s in runs), runs
    finally:
        _tear_down(gateways, project, engine, cron)


def test_a_rollouts_checks_configure_the_task_with_the_functions_secrets(
    swarm: SwarmNodes, project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A canary's synthetic checks invoke a task of this node with the function's secrets, as the gateway
    does (they connected with none: the handler saw no API_TOKEN); a secret that cannot be read is a
    problem of the check, in words."""
    state = tmp_path / "state.db"
    engine = SwarmEngine(swarm.manager, swarm.instance_root)
    secret = {"handler": "probes.secret", "secrets": [{"name": "API_TOKEN", "fromEnv": "FNCTL_TEST_SWARM_TOKEN"}]}
    monkeypatch.setenv("FNCTL_TEST_SWARM_TOKEN", "t0ken")
    manifest(project, "web", SPEC | secret)
    try:
        fnctl(project, state, "apply")
        settings = load_project(project.root).swarm
        record = Record(0, "web", 1, 1, Strategy.CANARY, State.PROGRESSING, 0, 0.0, 0.0, {1: 100})
        store = connect(state)
        try:
            good = HealthCheck({}, expect={"token": "t0ken"})
            checks = run_checks(store, record, (good,), swarm=settings, project=project.name, root=project.root)
            assert checks == ()
            monkeypatch.delenv("FNCTL_TEST_SWARM_TOKEN")
            [problem] = run_checks(store, record, (good,), swarm=settings, project=project.name, root=project.root)
            assert "secrets" in problem and "FNCTL_TEST_SWARM_TOKEN" in problem, problem
        finally:
            store.close()
    finally:
        manifest(project, "web", SPEC)
        for service in engine.services(project.name):
            engine.remove(service)
