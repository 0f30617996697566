"""`fnctl serve --workers 2` against `--workers 1` on a no-op function (issue 19, item 3).

One project, a no-op function with 4 instances × concurrency 8 kept warm; rounds alternate between a gateway of
one worker and one of two (started afresh each round, on the same instances), each loaded by wrk for a few
seconds. Printed: requests/s per round and their medians, the ratio, the CPU cores the gateway's processes and
the load generator used, the machine's cores and its load average.

    python benchmarks/bench_workers.py [--rounds 3] [--seconds 4] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchcommon import free_port, function_manifest, post_lua, remove_project, serve, stop_processes, wrk

NOOP = "def handler(event, context):\n    return {}\n"
MANIFEST = function_manifest(
    "noop",
    scaling={"minInstances": 4, "maxInstances": 4, "concurrency": 8},
    access={"roles": ["public"]},
)
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Round:
    workers: int
    rps: float
    non_2xx: int
    gateway_cores: float  # CPU seconds of the gateway's processes per second of load
    wrk_cores: float


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of `root` and every process below it, now."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return sum(times.get(pid, 0.0) for pid in tree)


def one_round(root: Path, env: dict[str, str], workers: int, args: argparse.Namespace) -> Round:
    port = free_port()
    flags = ("--no-access-log", "--workers", str(workers), "-a", f"127.0.0.1:{port}")
    gateway = serve(root, env, port, *flags, timeout=60)
    try:
        # every worker listening: SO_REUSEPORT spreads only over the sockets that are
        time.sleep(1.0 if workers > 1 else 0.2)
        script = root / "post.lua"
        wrk(port, "/invoke/noop", script, seconds=1)  # warm-up: connections, worker processes of the runtimes
        cpu_before, children_before, started = tree_cpu(gateway.pid), _children_cpu(), time.monotonic()
        run = wrk(port, "/invoke/noop", script, seconds=args.seconds, connections=args.connections)
        wall = time.monotonic() - started
        gateway_cpu, wrk_cpu = tree_cpu(gateway.pid) - cpu_before, _children_cpu() - children_before
        return Round(workers, run.rps, run.non_2xx, gateway_cpu / wall, wrk_cpu / wall)
    finally:
        stop_processes([gateway])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fnctl-bench-workers-"))
    name = f"b-{secrets.token_hex(4)}"
    (root / "manifests").mkdir()
    (root / "functions" / "noop").mkdir(parents=True)
    (root / "functions" / "noop" / "main.py").write_text(NOOP)
    (root / "manifests" / "noop.yaml").write_text(MANIFEST)
    (root / "fnctl.toml").write_text(f'[project]\nname = "{name}"\nmanifests = ["manifests"]\n')
    (root / "post.lua").write_text(post_lua())
    env = os.environ | {
        "FNCTL_STATE": str(root / "state" / "state.db"),
        "FNCTL_BASE_IMAGE": os.environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm"),
    }
    load_before = os.getloadavg()
    try:
        subprocess.run([sys.executable, "-m", "fnctl", "apply"], cwd=root, env=env, check=True, capture_output=True)
        rounds: list[Round] = []
        for _ in range(args.rounds):  # interleaved: both sides see the same machine load
            for workers in (1, 2):
                rounds.append(one_round(root, env, workers, args))
    finally:
        remove_project(name)
        shutil.rmtree(root, ignore_errors=True)
    report(rounds, args, load_before)


def report(rounds: list[Round], args: argparse.Namespace, load_before: tuple[float, ...]) -> None:
    print(f"no-op function, 4 instances x concurrency 8; wrk -t1 -c{args.connections}, {args.seconds}s per round")
    for r in rounds:
        print(
            f"  workers={r.workers}: {r.rps:8.0f} req/s  non-2xx {r.non_2xx}  "
            f"gateway {r.gateway_cores:.2f} cores  wrk {r.wrk_cores:.2f} cores"
        )
    medians = {w: statistics.median(r.rps for r in rounds if r.workers == w) for w in (1, 2)}
    cores = {w: statistics.median(r.gateway_cores for r in rounds if r.workers == w) for w in (1, 2)}
    wrk_cores = statistics.median(r.wrk_cores for r in rounds)
    print(f"median req/s: 1 worker {medians[1]:.0f} (baseline), 2 workers {medians[2]:.0f}")
    print(f"ratio 2/1: {medians[2] / medians[1]:.2f}x  (issue: >= 1.6x where the cores exist)")
    print(
        f"cores used: gateway {cores[1]:.2f} (1 worker) / {cores[2]:.2f} (2 workers), load generator {wrk_cores:.2f}; "
        f"machine cores {os.cpu_count()}"
    )
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
