"""A Docker Swarm of several nodes on this machine for tests, through scripts/swarm-nodes.sh (the project's
own node management: extra dockerd daemons in network namespaces of their own). `swarm_nodes` brings them up
and always takes them down, then fails if anything is left (a daemon, a cgroup, a namespace, a file); a run
killed before its teardown is cleared by the next `up`. Tests talk to each daemon on its Unix socket and to
instances on theirs: never to an address inside the namespaces.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "swarm-nodes.sh"
NAME = os.environ.get("FNCTL_SWARM_NAME", "fnsw")
RUN = Path(f"/run/{NAME}")
UP_TIMEOUT = 120.0  # bringing up 3 nodes took ~1.5 s here; loading an image into them ~5 s


def script(*args: str, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=os.environ | {"FNCTL_SWARM_NAME": NAME},
    )


def checked(*args: str, timeout: float = UP_TIMEOUT) -> str:
    done = script(*args, timeout=timeout)
    assert done.returncode == 0, f"swarm-nodes.sh {' '.join(args)}: {done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class SwarmNodes:
    count: int

    def socket(self, k: int) -> str:
        """Node k's engine socket (node 1 is the manager)."""
        return str(RUN / f"n{k}" / "docker.sock")

    @property
    def manager(self) -> str:
        return self.socket(1)

    @property
    def instance_root(self) -> str:
        """Where every node's instance directories live: under the nodes' run directory, which `down` removes."""
        return str(RUN / "i")

    def hostname(self, k: int) -> str:
        return f"{NAME}-n{k}"

    def load(self, *images: str) -> None:
        checked("load", *images)

    def kill(self, k: int) -> None:
        checked("kill", str(k), timeout=30)


def leftovers() -> str:
    """What `down` would still find ("" when nothing)."""
    done = script("leftovers", timeout=30)
    return "" if done.returncode == 0 else done.stderr


@contextmanager
def swarm_nodes(count: int) -> Iterator[SwarmNodes]:
    """`count` nodes joined into a swarm, taken down afterwards however the body ends."""
    try:
        checked("up", str(count))
        yield SwarmNodes(count)
    finally:
        checked("down", timeout=90)
