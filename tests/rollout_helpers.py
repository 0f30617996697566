"""Shared helpers of the rollout tests and the rollout safety benchmark: a throw-away project with one
function whose code version and failure rate are chosen per deploy, a running gateway (`fnctl serve`) in
front of it, and a load thread that keeps invoking it over keep-alive and counts every answer.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy_helpers import Project, cleanup, make_project, until
from pgserver import StateFactory

from fnctl.state import rolloutstore

# Health checks send {"name": "probe"}, which always succeeds: a bad version passes its checks and fails
# only real traffic, as bad releases do.
HANDLER = """\
import random

VERSION = {version!r}
FAIL_RATE = {fail_rate!r}


def handler(event, context):
    if event.get("name") != "probe" and random.random() < FAIL_RATE:
        raise RuntimeError("version " + VERSION + " fails this request")
    return {{"version": VERSION}}
"""


# The same function for the Node.js runtime (CommonJS).
NODE_HANDLER = """\
const VERSION = {version_json};
const FAIL_RATE = {fail_rate!r};

exports.handler = async (event) => {{
  if (event.name !== "probe" && Math.random() < FAIL_RATE) throw new Error("version " + VERSION + " fails this request");
  return {{ version: VERSION }};
}};
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Rollouts:
    """The project, its gateway's port, and the function `fn`'s manifest writer."""

    project: Project
    port: int
    gateway: subprocess.Popen[bytes] | None = None

    def deploy_code(
        self,
        version: str,
        rollout: str,
        *,
        fail_rate: float = 0.0,
        min_instances: int = 1,
        runtime: str = "python3.11",
    ) -> None:
        """Write function `fn` at `version` with the `rollout:` block given as YAML (indented under spec), in
        Python or (runtime nodejs22) JavaScript."""
        code = self.project.root / "functions" / "fn"
        code.mkdir(parents=True, exist_ok=True)
        if runtime == "nodejs22":
            text = NODE_HANDLER.format(version_json=json.dumps(version), fail_rate=fail_rate)
            (code / "main.js").write_text(text, encoding="utf-8")
        else:
            (code / "main.py").write_text(HANDLER.format(version=version, fail_rate=fail_rate), encoding="utf-8")
        manifest = (
            textwrap.dedent(f"""\
            apiVersion: fnctl/v1
            kind: Function
            metadata: {{name: fn}}
            spec:
              runtime: {runtime}
              source: ../functions/fn
              handler: main.handler
              limits: {{timeout: 5s, memory: 64Mi}}
              scaling: {{minInstances: {min_instances}, maxInstances: 2, concurrency: 16}}
              access: {{roles: [public]}}
              healthCheck:
                - event: {{name: probe}}
            """)
            + textwrap.indent(textwrap.dedent(rollout).strip("\n"), "  ")
            + "\n"
        )
        (self.project.root / "manifests" / "fn.yaml").write_text(manifest, encoding="utf-8")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_gateway(self) -> None:
        err = (self.project.root.parent / "serve.err").open("ab")
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "fnctl", "serve"],
            cwd=self.project.root,
            env=self.project.environ(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        until(
            lambda: ready(self.port) or self.gateway is None or self.gateway.poll() is not None,
            "the gateway to be ready",
            timeout=60,
        )
        assert self.gateway.poll() is None, (self.project.root.parent / "serve.err").read_text()

    def stop_gateway(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.terminate()
            self.gateway.wait(timeout=60)
        self.gateway = None

    def routes(self) -> dict[int, int]:
        with self.project.store() as store:
            return store.routes().get("fn", {})

    def events(self) -> list[str]:
        """The kinds of the latest rollout's events, in order."""
        with self.project.store() as store:
            rows = rolloutstore.rollouts(store, "fn")
            return [e.kind for e in rolloutstore.events(store, rows[-1].id)] if rows else []

    def status(self, revision: int) -> str:
        with self.project.store() as store:
            found = store.revision("fn", revision)
            assert found is not None
            return found.status.value


def ready(port: int) -> bool:
    try:
        return call(port, "GET", "/readyz")[0] == 200
    except OSError:
        return False


def call(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@contextmanager
def rollout_project(root: Path, client: Any, base_image: str, states: StateFactory | None = None) -> Iterator[Rollouts]:
    project = make_project(root, client, base_image, states)
    port = free_port()
    with (project.root / "fnctl.toml").open("a", encoding="utf-8") as config:
        config.write(f'\n[gateway]\naddress = "127.0.0.1:{port}"\n')
    setup = Rollouts(project, port)
    try:
        yield setup
    finally:
        setup.stop_gateway()
        cleanup(project)


@dataclass
class Load:
    """Invokes `fn` through the gateway from `clients` keep-alive connections until stopped, about `rate`
    requests per second in all, recording (time, status, revision) of every answer; a connection error
    counts as status 0."""

    port: int
    rate: float = 200.0
    clients: int = 4
    headers: dict[str, str] = field(default_factory=dict)
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        interval = self.clients / self.rate
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                connection.request("POST", "/invoke/fn", body=b"{}", headers=self.headers)
                response = connection.getresponse()
                response.read()
                self.answers.append((time.time(), response.status, response.getheader("X-Fnctl-Revision") or ""))
            except (OSError, http.client.HTTPException):
                self.answers.append((time.time(), 0, ""))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            next_at += interval
            self._stop.wait(max(next_at - time.monotonic(), 0))
        connection.close()

    def by_revision(self, since: float = 0.0) -> Counter[str]:
        return Counter(revision for at, status, revision in self.answers if at >= since and status == 200)

    def failed(self) -> list[tuple[float, int, str]]:
        return [answer for answer in self.answers if answer[1] != 200]


def parse_ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
