"""bench_scale.py's "gateways" section: routing changes seen by every gateway (NOTIFY vs the poll alone, at
the same moments) and the leader's takeover after SIGKILL, with processes of benchmarks/scale_gateways.py."""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from fnctl.gateway.leadership import POLL
from fnctl.state import location, pgopener
from fnctl.state.store import connect

CHILD = Path(__file__).resolve().parent / "scale_gateways.py"


class _Child:
    """A gateway process; its stdout lines, timestamped by the child, collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.strip())

    def wait_for(self, prefix: str, timeout: float, after: int = 0) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[after:]:
                if line.startswith(prefix):
                    return line
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def gateway_figures(state_arg: str, gateways: int, changes: int, takeovers: int) -> None:
    pgopener.install()
    state = location.parse(state_arg)
    store = connect(state)  # creates the tables
    children: list[_Child] = []
    try:
        notify = [_Child("follow", state_arg) for _ in range(gateways)]
        poll = [_Child("follow", state_arg, "--poll-only") for _ in range(gateways)]
        children += notify + poll
        for child in children:
            if child.wait_for("ready", 60) is None:
                raise SystemExit("a gateway process did not start")
        time.sleep(1.0)  # every listener connected
        loads = [_load()]
        seen: dict[str, list[float]] = {"NOTIFY (as built)": [], "poll alone (baseline)": []}
        for i in range(changes):
            weights = {1: 99 - i % 98, 2: 1 + i % 98}
            wanted = json.dumps({str(k): v for k, v in weights.items()}, sort_keys=True)
            marks = [len(c.lines) for c in children]
            written = time.time()
            store.set_route("bench", weights)
            for name, group in (("NOTIFY (as built)", notify), ("poll alone (baseline)", poll)):
                latest = 0.0
                for child in group:
                    line = child.wait_for(f"seen bench {wanted} ", 10, marks[children.index(child)])
                    if line is None:
                        raise SystemExit(f"change {i} never reached a gateway ({name})")
                    latest = max(latest, float(line.rsplit(" ", 1)[1]))
                seen[name].append(latest - written)
            time.sleep(random.uniform(0.05, 0.3))  # changes land at every phase of the polls
        loads.append(_load())
        print(f"\nrouting change seen by every gateway ({gateways} gateways of each kind, {changes} changes, ms):")
        for name, values in seen.items():
            ms = [v * 1000 for v in values]
            print(f"  {name:<22} median {statistics.median(ms):7.1f}  p99 {_pct(ms, 0.99):7.1f}  max {max(ms):7.1f}")
        p99 = _pct(seen["NOTIFY (as built)"], 0.99)
        print(
            f"  target p99 <= 1 s: {'met' if p99 <= 1.0 else 'NOT met'}; load before / after: {loads[0]} / {loads[1]}"
        )
        for child in children:
            child.kill()
        children.clear()

        candidates = [_Child("lead", state_arg) for _ in range(gateways)]
        children += candidates
        times: list[float] = []
        loads = [_load()]
        for _ in range(takeovers + 1):
            leader = next((c for c in candidates if c.wait_for("leading", 0.0)), None)
            deadline = time.monotonic() + 30
            while leader is None and time.monotonic() < deadline:
                time.sleep(0.01)
                leader = next((c for c in candidates if c.wait_for("leading", 0.0)), None)
            if leader is None:
                raise SystemExit("no candidate took the lead")
            if len(times) == takeovers:
                break
            others = [c for c in candidates if c is not leader]
            killed = time.time()
            os.kill(leader.process.pid, signal.SIGKILL)
            leader.process.wait()
            candidates.remove(leader)
            new = None
            deadline = time.monotonic() + 30
            while new is None and time.monotonic() < deadline:
                new = next((line for c in others if (line := c.wait_for("leading", 0.0))), None)
                time.sleep(0.002)
            if new is None:
                raise SystemExit("no candidate took over")
            times.append(float(new.split()[1]) - killed)
            fresh = _Child("lead", state_arg)
            children.append(fresh)
            candidates.append(fresh)
        loads.append(_load())
        print(f"\nleader takeover after SIGKILL ({gateways} candidates, {takeovers} kills, s):")
        print(f"  median {statistics.median(times):.2f}  max {max(times):.2f}  (lock tried every {POLL:g} s)")
        print(
            f"  target <= 5 s: {'met' if max(times) <= 5.0 else 'NOT met'}; load before / after: {loads[0]} / {loads[1]}"
        )
    finally:
        for child in children:
            child.kill()
        store.close()
