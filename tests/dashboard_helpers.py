"""Shared by the dashboard's end-to-end tests (tests/dashboard): a project whose gateway serves the dashboard
(`gateway.ui = true`) with a Policy granting its roles, API keys for those roles, and the /v1/ API called as
one of them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from rollout_helpers import Rollouts, call, rollout_project

POLICY = """\
apiVersion: fnctl/v1
kind: Policy
metadata: {name: dashboard}
spec:
  roles:
    operator: {ui: ["*"]}
    viewer: {ui: [read]}
"""


@contextmanager
def dashboard_project(root: Path, client: Any, base_image: str, settings: str = "") -> Iterator[Rollouts]:
    """`rollout_project` with the dashboard on, the Policy above and `settings` (more [gateway] lines)."""
    with rollout_project(root, client, base_image) as rollouts:
        with (rollouts.project.root / "fnctl.toml").open("a", encoding="utf-8") as config:
            config.write("ui = true\n" + settings)  # under the [gateway] section rollout_project wrote last
        (rollouts.project.root / "manifests" / "policy.yaml").write_text(POLICY, encoding="utf-8")
        yield rollouts


def setup_fixture() -> object:
    """A test module's `setup` fixture, a `dashboard_project` for each test: assign it to the name `setup`."""

    @pytest.fixture
    def setup(tmp_path: Path, docker_client: Any, base_image: str) -> Iterator[Rollouts]:
        with dashboard_project(tmp_path / "project", docker_client, base_image) as rollouts:
            yield rollouts

    return setup


def key_for(setup: Rollouts, role: str, tenant: str | None = None, name: str | None = None) -> str:
    """A new API key with `role` (in `tenant`), as `fnctl keys create` prints it."""
    extra = ["--tenant", tenant] if tenant else []
    return setup.project.ok("keys", "create", name or f"ui-{role}", "--role", role, *extra).out.strip()


def start(setup: Rollouts, rollout: str, second: str = "two", fail_rate: float = 0.0) -> str:
    """Revision 1 live, the gateway (with the dashboard) started, revision 2's code written; an operator key."""
    setup.deploy_code("one", rollout)
    setup.project.ok("apply")
    setup.start_gateway()
    setup.deploy_code(second, rollout, fail_rate=fail_rate)
    return key_for(setup, "operator")


def api(setup: Rollouts, path: str, key: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    """Call the gateway's /v1/ API as the holder of `key`: the status and the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    status, _, answer = call(setup.port, method, path, data, headers)
    return status, json.loads(answer) if answer else None
