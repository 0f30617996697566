"""Progressive rollouts against a real engine, a running gateway and live load: canary good → bad (automatic
rollback) and bad → good, pause and manual promote, abort / retry / promote with the exact order of their
events, blue-green previews reachable only by pinning, A/B stickiness and report, resume after kill -9, and
the exit codes of `fnctl rollout status`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import until
from pgserver import StateFactory
from rollout_helpers import Load, Rollouts, call, parse_ndjson, rollout_project

from fnctl.gateway import keys

CANARY = """\
rollout:
  strategy: canary
  scaleDownDelay: 2s
  steps:
    - setWeight: 50
    - analysis: {maxErrorRate: 0.05, minRequests: 30, interval: 1s}
    - setWeight: 80
"""

GATED = """\
rollout:
  strategy: canary
  scaleDownDelay: 1s
  steps:
    - setWeight: 30
    - pause: {}
    - setWeight: 60
"""


@pytest.fixture
def setup(tmp_path: Path, docker_client: Any, base_image: str, project_states: StateFactory) -> Iterator[Rollouts]:
    with rollout_project(tmp_path / "project", docker_client, base_image, project_states) as rollouts:
        yield rollouts


def _first_two(setup: Rollouts, rollout: str, *, second: str = "two", fail_rate: float = 0.0) -> None:
    """Revision 1 deployed (immediately: a first deploy), the gateway started, revision 2's code written."""
    setup.deploy_code("one", rollout)
    setup.project.ok("apply")
    setup.start_gateway()
    setup.deploy_code(second, rollout, fail_rate=fail_rate)


@pytest.mark.docker
def test_canary_good_completes_after_its_analysis_then_scales_down(setup: Rollouts) -> None:
    _first_two(setup, CANARY)
    with Load(setup.port, rate=100) as load:
        applied = setup.project.fnctl("apply", "-o", "ndjson")
    assert applied.code == 0, applied.text
    lines = parse_ndjson(applied.out)
    kinds = [line["event"] for line in lines if line["type"] == "event"]
    assert kinds[:3] == ["started", "weight", "analysis"] and kinds[-1] == "completed", kinds
    assert "measurement" in kinds and kinds[kinds.index("measurement") :].count("weight") == 1
    final = lines[-1]
    assert final["type"] == "apply" and final["exitCode"] == 0 and final["rollouts"][0]["state"] == "completed"
    assert setup.routes() == {2: 100, 1: 0}  # the old revision stays warm for scaleDownDelay
    assert not load.failed(), load.failed()[:5]
    assert set(load.by_revision()) == {"1", "2"}
    # the gateway's controller loop scales the old revision down once scaleDownDelay is over
    until(lambda: setup.routes() == {2: 100}, "revision 1 to leave the routing table", timeout=30)
    # one listing call (no inspect of each container, which races with the ones being removed)
    labels = [f"io.fnctl.project={setup.project.name}", "io.fnctl.function=fn", "io.fnctl.revision=1"]
    until(
        lambda: not setup.project.client.api.containers(all=True, filters={"label": labels}),
        "revision 1's containers to stop",
        timeout=60,
    )
    status = setup.project.fnctl("rollout", "status", "fn", "-o", "json")
    assert status.code == 0 and json.loads(status.out)["state"] == "completed", status.text


@pytest.mark.docker
def test_good_to_bad_rolls_back_automatically_and_quarantines(setup: Rollouts) -> None:
    _first_two(setup, CANARY, second="bad", fail_rate=0.5)
    with Load(setup.port, rate=100) as load:
        applied = setup.project.fnctl("apply")
    assert applied.code == 3, applied.text
    assert "analysis failed: error rate" in applied.text
    assert setup.routes() == {1: 100}
    assert setup.status(2) == "quarantined"
    kinds = setup.events()
    assert kinds[-2:] == ["measurement", "aborted"], kinds
    assert {revision for _, status, revision in load.answers if status != 200} <= {"2"}  # only the canary failed
    status = setup.project.fnctl("rollout", "status", "fn")
    assert status.code == 3 and "aborted" in status.out, status.text
    # the same spec is refused (quarantined) unless forced; a fixed version goes out (bad → good)
    refused = setup.project.fnctl("apply")
    assert refused.code == 1 and "quarantined" in refused.err, refused.text
    setup.deploy_code("three", CANARY)
    with Load(setup.port, rate=100):
        fixed = setup.project.fnctl("apply")
    assert fixed.code == 0, fixed.text
    assert setup.routes() == {3: 100, 1: 0}


@pytest.mark.docker
def test_pause_gate_then_manual_promote(setup: Rollouts) -> None:
    _first_two(setup, GATED)
    applied = setup.project.fnctl("apply")
    assert applied.code == 4, applied.text  # waiting at the gate
    assert setup.routes() == {2: 30, 1: 70}
    status = setup.project.fnctl("rollout", "status", "fn", "-o", "json")
    assert status.code == 4 and json.loads(status.out)["state"] == "paused", status.text
    promoted = setup.project.fnctl("promote", "fn")
    assert promoted.code == 0, promoted.text
    assert setup.routes() == {2: 100, 1: 0}
    assert setup.events() == ["started", "weight", "paused", "promote-requested", "promoted", "weight", "completed"]


@pytest.mark.docker
def test_abort_retry_promote_record_their_events_in_order(setup: Rollouts) -> None:
    _first_two(setup, GATED)
    assert setup.project.fnctl("apply").code == 4
    aborted = setup.project.fnctl("abort", "fn")
    assert aborted.code == 0, aborted.text
    assert setup.routes() == {1: 100} and setup.status(2) == "quarantined"
    assert setup.project.fnctl("rollout", "status", "fn").code == 3
    assert setup.project.fnctl("promote", "fn").code == 1  # nothing under way to promote
    retried = setup.project.fnctl("retry", "fn")
    assert retried.code == 4, retried.text  # from step 1 again, up to the gate
    assert setup.routes() == {2: 30, 1: 70} and setup.status(2) == "ready"
    full = setup.project.fnctl("promote", "fn", "--full")
    assert full.code == 0, full.text
    assert setup.routes() == {2: 100, 1: 0}
    assert setup.events() == [
        "started",
        "weight",
        "paused",
        "abort-requested",
        "aborted",
        "retried",
        "weight",
        "paused",
        "promote-requested",
        "completed",
    ]


@pytest.mark.docker
def test_blue_green_preview_is_reachable_only_by_pinning(setup: Rollouts) -> None:
    blue_green = """\
        rollout:
          strategy: blueGreen
          autoPromotionEnabled: false
          scaleDownDelay: 30s
          prePromotionAnalysis:
            checks: [{event: {name: probe}, expect: {version: two}}]
            interval: 1s
        """
    _first_two(setup, blue_green)
    assert setup.project.fnctl("apply").code == 4
    assert setup.routes() == {1: 100, 2: 0}
    seen = {json.loads(call(setup.port, "POST", "/invoke/fn", b"{}")[2])["version"] for _ in range(40)}
    assert seen == {"one"}
    with setup.project.store() as store:  # pinning is a privilege: a Policy's `pin` grant (docs/auth.md)
        store.set_resources("Policy", {"release": {"roles": {"releaser": {"pin": ["fn"]}}}})
        pin = {
            "X-Fnctl-Revision": "2",
            "Authorization": f"Bearer {keys.create(store, 'r', ('releaser',), None, 't')[1]}",
        }
    assert call(setup.port, "POST", "/invoke/fn", b"{}", {"X-Fnctl-Revision": "2"})[0] == 401  # anonymous
    until(lambda: call(setup.port, "POST", "/invoke/fn", b"{}", pin)[0] == 200, "the gateway to read the Policy")
    status, headers, body = call(setup.port, "POST", "/invoke/fn", b"{}", pin)
    assert status == 200 and json.loads(body)["version"] == "two" and headers["X-Fnctl-Revision"] == "2"
    with Load(setup.port, rate=200) as load:
        assert setup.project.fnctl("promote", "fn").code == 0
        until(
            lambda: load.by_revision(since=load.answers[-1][0]) == {"2": 1} if load.answers else False,
            "traffic on the new revision",
            timeout=10,
        )
        switched = setup.project.fnctl("rollback", "fn")  # within scaleDownDelay: the old one is still warm
        assert switched.code == 0, switched.text
    assert setup.routes() == {1: 100}
    assert not load.failed(), load.failed()[:5]


@pytest.mark.docker
def test_ab_test_sticky_assignment_report_and_promote(setup: Rollouts) -> None:
    ab = """\
        rollout:
          strategy: abTest
          variants:
            - {name: a, weight: 50, revision: stable}
            - {name: b, weight: 50, revision: new}
          stickiness: {by: header, name: X-User}
          minSamples: 20
        """
    _first_two(setup, ab)
    assert setup.project.fnctl("apply").code == 4
    assert setup.routes() == {1: 50, 2: 50}
    # The gateway reads the split within a second: until then everyone is on revision 1, stickiness or not.
    probes = iter(range(10_000))
    until(
        lambda: (
            call(setup.port, "POST", "/invoke/fn", b"{}", {"X-User": f"probe-{next(probes)}"})[1]["X-Fnctl-Revision"]
            == "2"
        ),
        "the gateway to route by the A/B split",
    )
    picks: dict[str, set[str]] = {}
    for user in range(30):
        for _ in range(3):
            _, headers, _ = call(setup.port, "POST", "/invoke/fn", b"{}", {"X-User": f"user-{user}"})
            picks.setdefault(f"user-{user}", set()).add(headers["X-Fnctl-Revision"])
    assert all(len(revisions) == 1 for revisions in picks.values()), picks
    assert {r for revisions in picks.values() for r in revisions} == {"1", "2"}
    until(
        lambda: _report(setup)["variants"][0]["requests"] + _report(setup)["variants"][1]["requests"] >= 90,
        "the gateway to flush its metrics",
        timeout=20,
    )
    report = _report(setup)
    assert [v["name"] for v in report["variants"]] == ["a", "b"]
    assert report["comparisons"][0]["enoughSamples"] is True
    assert report["comparisons"][0]["errorRate"]["significant"] is False
    text = setup.project.fnctl("abtest", "report", "fn")
    assert text.code == 0 and "a vs" not in text.out and "b vs a" in text.out, text.text
    assert setup.project.fnctl("promote", "fn").code == 2  # an A/B test needs --variant
    assert setup.project.fnctl("promote", "fn", "--variant", "b").code == 0
    assert setup.routes() == {2: 100, 1: 0}


def _report(setup: Rollouts) -> Any:
    result = setup.project.fnctl("abtest", "report", "fn", "-o", "json")
    assert result.code == 0, result.text
    return json.loads(result.out)


@pytest.mark.docker
def test_resume_after_kill_9_of_the_driving_process(setup: Rollouts) -> None:
    _first_two(setup, CANARY)
    with Load(setup.port, rate=100) as load:
        killed = setup.project.fnctl("apply", env={"FNCTL_TEST_CRASH_AT": "rollout-weight"})
        assert killed.code == -9, killed.text
        assert setup.routes() == {2: 50, 1: 50}  # the weight landed with its step: never half-applied
        resumed = setup.project.fnctl("rollout", "status", "fn", "-w", "--timeout", "120")
        assert resumed.code == 0, resumed.text
    assert setup.routes() in ({2: 100, 1: 0}, {2: 100})
    kinds = setup.events()
    assert kinds.count("started") == 1 and kinds.count("completed") == 1, kinds
    assert kinds.index("weight") < kinds.index("analysis"), kinds  # the first setWeight did not run again
    assert kinds.count("weight") == 2, kinds
    assert not load.failed(), load.failed()[:5]


def test_every_rollout_command_has_help_with_an_example() -> None:
    for command in (["rollout", "status"], ["promote"], ["abort"], ["retry"], ["abtest", "report"]):
        done = subprocess.run(
            [sys.executable, "-m", "fnctl", *command, "--help"],
            capture_output=True,
            text=True,
            env=os.environ | {"COLUMNS": "200"},
            timeout=60,
        )
        assert done.returncode == 0 and "Example" in done.stdout, (command, done.stdout, done.stderr)
