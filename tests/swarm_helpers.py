"""A Docker Swarm of several nodes on this machine for tests, through scripts/swarm-nodes.sh (the project's
own node management: extra dockerd daemons in network namespaces of their own). `swarm_nodes` brings them up
and always takes them down (a failed test, Ctrl-C or SIGTERM too); a run killed outright is cleared by the
next `up`. `leftovers` says what `down` would still find (a daemon, a cgroup, a namespace, a file). Tests
talk to each daemon on its Unix socket and to instances on theirs: never to an address inside the namespaces.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "swarm-nodes.sh"
NAME = os.environ.get("FNCTL_SWARM_NAME", "fnsw")
UP_TIMEOUT = 120.0  # bringing up 3 nodes took ~1.5 s here; loading an image into them ~5 s


def script(
    *args: str, timeout: float = UP_TIMEOUT, name: str = NAME, runtime: str = "runc"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=os.environ | {"FNCTL_SWARM_NAME": name, "FNCTL_SWARM_RUNTIME": runtime},
    )


def checked(*args: str, timeout: float = UP_TIMEOUT, name: str = NAME, runtime: str = "runc") -> str:
    done = script(*args, timeout=timeout, name=name, runtime=runtime)
    assert done.returncode == 0, f"swarm-nodes.sh {' '.join(args)}: {done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class SwarmNodes:
    count: int
    name: str = NAME

    @property
    def run(self) -> Path:
        return Path(f"/run/{self.name}")

    def socket(self, k: int) -> str:
        """Node k's engine socket (node 1 is the manager)."""
        return str(self.run / f"n{k}" / "docker.sock")

    @property
    def manager(self) -> str:
        return self.socket(1)

    @property
    def instance_root(self) -> str:
        """Where every node's instance directories live: under the nodes' run directory, which `down` removes."""
        return str(self.run / "i")

    def hostname(self, k: int) -> str:
        return f"{self.name}-n{k}"

    def load(self, *images: str) -> None:
        checked("load", *images, name=self.name)

    def kill(self, k: int) -> None:
        checked("kill", str(k), timeout=30, name=self.name)


def leftovers(name: str = NAME) -> str:
    """What `down` would still find ("" when nothing)."""
    done = script("leftovers", timeout=30, name=name)
    return "" if done.returncode == 0 else done.stderr


@contextmanager
def swarm_nodes(count: int, *, name: str = NAME, runtime: str = "runc") -> Iterator[SwarmNodes]:
    """`count` nodes joined into a swarm (`runtime`: the nodes' default runtime), taken down afterwards
    however the body ends."""
    # SIGTERM (a CI job cancelled, `timeout`) becomes KeyboardInterrupt, which pytest answers by tearing
    # down, so the nodes go then too; SIGKILL leaves them to the next `up`, which clears them first.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        checked("up", str(count), name=name, runtime=runtime)
        yield SwarmNodes(count, name)
    finally:
        try:
            checked("down", timeout=90, name=name)
        finally:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
