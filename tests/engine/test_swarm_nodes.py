"""scripts/swarm-nodes.sh: nodes come up joined into a swarm, `up` is idempotent and recovers what a killed
run left, a node can be lost at once, and `down` leaves nothing on the machine."""

from __future__ import annotations

import subprocess

import pytest
from swarm_helpers import NAME, checked, leftovers, swarm_nodes

from fnctl.engine import swarmio

pytestmark = pytest.mark.docker


def ready(socket: str) -> set[str]:
    return {n.hostname for n in swarmio.nodes(socket) if n.state == "ready"}


def test_nodes_come_up_joined_and_go_leaving_nothing() -> None:
    with swarm_nodes(2) as nodes:
        assert ready(nodes.manager) == {nodes.hostname(1), nodes.hostname(2)}
        for k in (1, 2):
            info = swarmio.info(nodes.socket(k))
            assert (info.hostname, info.swarm_state) == (nodes.hostname(k), "active")
        # The root namespace got nothing: no link, address or route of the nodes' network.
        root = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
        routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
        assert NAME not in root and "10.231.77." not in root + routes
        checked("up", "2")  # again: nothing changes
        assert ready(nodes.manager) == {nodes.hostname(1), nodes.hostname(2)}
        # A run killed mid-way leaves a dead node behind: the next `up` brings it back.
        nodes.kill(2)
        assert "n2 down" in checked("status")
        checked("up", "2")
        assert "n2 down" not in checked("status")
        assert leftovers() != ""  # what is up is seen as left: the check can fail
    assert leftovers() == ""
