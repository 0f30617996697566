"""The worker processes of `fnctl serve --workers N`, as one of them sees the others.

Worker 0 owns the instances; the others follow them (fnctl.gateway.pools) and tell it their load (requests in
flight and queued, per revision) in datagrams on a Unix socket in the abstract namespace, named after the
supervisor's run directory: cheap enough to send on every change, and nothing to clean up. The owner scales for
the busiest worker (fnctl.gateway.workers.demand); a load not repeated within `STALE` seconds counts no more, so
a worker that died stops holding instances up.

Every worker also writes its Prometheus text, labelled with its number, into the run directory once a second;
the /metrics of any worker is its own live text and the others' latest (fnctl.gateway.workers.merged).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path

from fnctl.gateway.workers import demand, labelled, merged

log = logging.getLogger(__name__)

STALE = 1.0  # seconds a follower's reported load counts for
REPEAT = 0.25  # seconds between a follower's reports of a standing load
GAP = 0.05  # at most one report per revision this often, but the first of a load (a cold start waits for it)


class Crew:
    """This process's place among the workers: `worker` of `workers`, sharing `run_dir` with the others."""

    def __init__(self, worker: int, workers: int, run_dir: Path) -> None:
        self.worker = worker
        self.workers = workers
        self.run_dir = run_dir
        digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:24]
        self.address = "\0fnctl-crew-" + digest
        # (function, revision) → worker → (load, instances it used lately, when it said so)
        self.loads: dict[tuple[str, int], dict[int, tuple[int, int, float]]] = {}
        self._socket: socket.socket | None = None
        self._sent: dict[tuple[str, int], tuple[int, int, float]] = {}

    @property
    def owner(self) -> bool:
        return self.worker == 0

    # ---- the owner: the followers' loads ----

    def listen(self, on_load: Callable[[str, int], None]) -> None:
        """Receive the followers' loads on this event loop; `on_load(function, revision)` after each."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.address)
        sock.setblocking(False)
        self._socket = sock

        def readable() -> None:
            while True:
                try:
                    data = sock.recv(512)
                except (BlockingIOError, InterruptedError):
                    return
                try:
                    worker, function, revision, load, used = json.loads(data)
                    key = (str(function), int(revision))
                    self.loads.setdefault(key, {})[int(worker)] = (
                        max(int(load), 0),
                        max(int(used), 0),
                        time.monotonic(),
                    )
                except (ValueError, TypeError):
                    log.warning("a malformed load report from a worker was ignored")
                    continue
                on_load(*key)

        asyncio.get_running_loop().add_reader(sock.fileno(), readable)

    def demand(self, key: tuple[str, int], own: int) -> int:
        """What the owner scales `key` for: its own load and the followers' recent ones."""
        now = time.monotonic()
        reported = self.loads.get(key, {})
        loads = [own] + [0] * (self.workers - 1)
        for worker, (load, _, at) in reported.items():
            if 0 < worker < self.workers and now - at < STALE:
                loads[worker] = load
        return demand(loads)

    def used(self, key: tuple[str, int]) -> int:
        """The most instances of `key` a follower used within the idle time: the owner stops none of them
        for idleness (it cannot see their requests; a follower's light traffic stays on the oldest, as the
        owner's does, so the newest go idle first everywhere)."""
        now = time.monotonic()
        return max((used for _, used, at in self.loads.get(key, {}).values() if now - at < STALE), default=0)

    # ---- a follower: its loads ----

    def report(self, key: tuple[str, int], load: int, used: int = 0) -> None:
        """Tell the owner this worker's load of `key` and how many of its instances it used within the idle
        time, when they changed or were last said `REPEAT` ago."""
        now = time.monotonic()
        last = self._sent.get(key)
        if last is not None:
            since, onset = now - last[2], last[0] == 0 < load
            if last[:2] == (load, used) and (load == used == 0 or since < REPEAT):
                return
            if since < GAP and not onset:  # under load it changes with every request: the owner needs less
                return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        try:
            self._socket.sendto(json.dumps([self.worker, key[0], key[1], load, used]).encode(), self.address)
        except OSError:  # the owner is restarting, or its buffer is full: the next report says it again
            return
        self._sent[key] = (load, used, now)

    def shared_units(self, instance_id: str, concurrency: int) -> SharedUnits | None:
        """The leases of an instance whose concurrency cannot be split between the workers; None when it can
        (`fnctl.gateway.workers.units`: every worker has a fixed share)."""
        if concurrency >= self.workers:
            return None
        # the unit a fixed split would give this worker first: workers start on different units, so a
        # take rarely tries a unit another holds
        first = zlib.crc32(instance_id.encode()) % self.workers  # as fnctl.gateway.workers.units
        order = sorted(range(concurrency), key=lambda unit: (first + unit) % self.workers != self.worker)
        return SharedUnits(self.run_dir / "units", instance_id, order)

    # ---- metrics ----

    def metrics_path(self, worker: int) -> Path:
        return self.run_dir / f"metrics-{worker}.prom"

    def publish(self, text: bytes) -> None:
        """Write this worker's labelled Prometheus text for the others' /metrics (atomically)."""
        path = self.metrics_path(self.worker)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(labelled(text, self.worker))
        temporary.replace(path)

    def exposition(self, own: bytes) -> bytes:
        """Every worker's metrics: this one's live text and the others' latest."""
        texts = [labelled(own, self.worker)]
        for worker in range(self.workers):
            if worker != self.worker:
                with suppress(OSError):
                    texts.append(self.metrics_path(worker).read_bytes())
        return merged(texts)

    def close(self) -> None:
        if self._socket is not None:
            with suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None


class SharedUnits:
    """An instance whose units are leased per request rather than split: one lock file per unit in the run
    directory, taken with a non-blocking `flock` for a request and given back after it. The kernel drops a
    dead worker's locks with its files, so a killed worker holds no unit."""

    def __init__(self, directory: Path, instance_id: str, order: Sequence[int]) -> None:
        directory.mkdir(exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        # one open file per unit: flock locks belong to the open file, so two of this worker's requests
        # cannot take the same unit either; tried in `order` (this worker's own units first)
        name = hashlib.sha256(instance_id.encode()).hexdigest()[:24]  # an id from the store: never a path
        self._units = [os.open(directory / f"{name}.{unit}", flags, 0o600) for unit in order]
        self._held: list[int] = []

    def take(self) -> bool:
        """Lease a unit no worker holds; False when every one is held."""
        for fd in self._units:
            if fd in self._held:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue
            self._held.append(fd)
            return True
        return False

    def give(self) -> None:
        """Give back one of this worker's leases (they are alike)."""
        if self._held:  # else closed meanwhile: the locks went with the files
            fcntl.flock(self._held.pop(), fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in self._units:
            os.close(fd)
        self._units, self._held = [], []
