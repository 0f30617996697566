"""`fnctl serve --workers 2` against `--workers 1` on a no-op function (issue 19, item 3).

One project, a no-op function with 4 instances × concurrency 8 kept warm; rounds alternate between a gateway of
one worker and one of two (started afresh each round, on the same instances), and, as what the machine allows,
one and two bare aiohttp processes on SO_REUSEPORT answering `{}` themselves; each loaded by wrk for a few
seconds. Printed per round and as medians, for 1 and for 2 workers: requests/s and the ratio; where the
machine's cores went (CPU seconds per second of load) — each gateway worker, the parent, the function's
instances (their cgroups), the load generator, everything else on the machine ("other": other people's
load), and what was left idle (the headroom); and the per-core figure, requests per gateway-CPU-second,
whose 2/1 ratio says whether a second worker costs efficiency (below 1: each request costs the gateway more
with two workers). The last lines say whether the gap to 1.6x is the machine (the cores 1.6x would take at
the 1-worker cost per request, against the cores there are) or the gateway (its efficiency lost).

    python benchmarks/bench_workers.py [--rounds 3] [--seconds 4] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchcommon import (
    await_ready,
    cgroups_cpu,
    children_cpu,
    fnctl_ok,
    free_port,
    function_manifest,
    instance_cgroups,
    machine_cpu,
    post_lua,
    processes_cpu,
    remove_project,
    serve,
    stop_processes,
    wrk,
)

NOOP = "def handler(event, context):\n    return {}\n"
MANIFEST = function_manifest(
    "noop", scaling={"minInstances": 4, "maxInstances": 4, "concurrency": 8}, access={"roles": ["public"]}
)

BARE = """\
import sys

from aiohttp import web


async def noop(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({})


app = web.Application()
app.router.add_post("/invoke/noop", noop)
app.router.add_get("/readyz", noop)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), reuse_port=True, access_log=None, print=None)
"""


@dataclass(frozen=True)
class Round:
    server: str  # "bare" (aiohttp processes answering {} themselves) or "fnctl" (the gateway)
    workers: int
    rps: float
    errors: int  # socket errors and non-2xx responses
    worker_cores: tuple[float, ...]  # CPU seconds per second of load of each serving process (by pid)
    parent_cores: float  # of the rest of the server's process tree (fnctl's parent, the bare servers' shell)
    instance_cores: float  # of the function's containers (their cgroups)
    wrk_cores: float
    machine_cores: float  # every process of the machine's (/proc/stat): the rest is other people's load
    gateway_system: float  # of gateway_cores, in the kernel (system time: socket writes, wake-ups)
    switches: tuple[float, float]  # per second: the serving processes' voluntary and involuntary (preempted)

    @property
    def gateway_cores(self) -> float:
        return sum(self.worker_cores) + self.parent_cores

    @property
    def other_cores(self) -> float:
        return self.machine_cores - self.gateway_cores - self.instance_cores - self.wrk_cores

    @property
    def idle_cores(self) -> float:
        return CORES - self.machine_cores

    @property
    def per_core(self) -> float:
        """Requests per gateway-CPU-second: the gateway's efficiency, whatever the machine had to give."""
        return self.rps / self.gateway_cores if self.gateway_cores else 0.0


CORES = os.cpu_count() or 1


def serving(pid: int) -> bool:
    """A process that answers requests: a gateway worker (`--worker K/N`, or a single gateway) or a bare server."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"--worker" in argv or (b"serve" in argv and b"--workers" in argv and b"1" == _after(argv, b"--workers"))


def _after(argv: list[bytes], flag: bytes) -> bytes:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else b""


def switches(pids: list[int]) -> tuple[int, int]:
    """The voluntary and involuntary context switches of `pids` (their threads' included), now."""
    done = [0, 0]
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("voluntary_ctxt_switches:"):
                done[0] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                done[1] += int(line.split()[1])
    return done[0], done[1]


def start_bare(root: Path, workers: int, port: int) -> subprocess.Popen[bytes]:
    """`workers` bare aiohttp processes on one port (SO_REUSEPORT), under one shell so that one pid holds them."""
    line = " & ".join(f"exec {sys.executable} {root / 'bare.py'} {port}" for _ in range(workers))
    return subprocess.Popen(
        ["sh", "-c", f"{line} & wait"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def one_round(
    root: Path, env: dict[str, str], project: str, server: str, workers: int, args: argparse.Namespace
) -> Round:
    port = free_port()
    if server == "fnctl":
        flags = ["--no-access-log", "--workers", str(workers), "-a", f"127.0.0.1:{port}"]
        process = serve(root, env, port, *flags, timeout=60)
    else:
        process = start_bare(root, workers, port)
    try:
        if server == "bare":  # serve() returned a gateway that answers already
            await_ready(port, process, 60)
        # every worker listening: SO_REUSEPORT spreads only over the sockets that are
        time.sleep(1.0 if workers > 1 else 0.2)
        script = root / "post.lua"
        wrk(port, "/invoke/noop", script, seconds=1)  # warm-up: connections, worker processes of the runtimes
        containers = instance_cgroups(project)
        bare = server == "bare"
        tree = processes_cpu(process.pid)
        servers = [pid for pid in tree if (pid != process.pid if bare else serving(pid))]
        before = (tree, cgroups_cpu(containers), children_cpu(), machine_cpu(), switches(servers))
        started = time.monotonic()
        load = wrk(port, "/invoke/noop", script, seconds=args.seconds, connections=args.connections)
        wall = time.monotonic() - started
        after = (processes_cpu(process.pid), cgroups_cpu(containers), children_cpu(), machine_cpu(), switches(servers))
        used = {
            pid: [(b - a) / wall for a, b in zip(before[0].get(pid, (0.0, 0.0)), now, strict=True)]
            for pid, now in after[0].items()
        }
        workers_cpu = tuple(sum(used[pid]) for pid in sorted(servers) if pid in used)
        rest = sum(sum(u) for u in used.values()) - sum(workers_cpu)
        system = sum(u[1] for u in used.values())
        instances, wrk_cores, machine = ((b - a) / wall for a, b in zip(before[1:4], after[1:4], strict=True))
        done = ((after[4][0] - before[4][0]) / wall, (after[4][1] - before[4][1]) / wall)
        return Round(
            server, workers, load.rps, load.errors, workers_cpu, rest, instances, wrk_cores, machine, system, done
        )
    finally:
        if server == "fnctl":
            stop_processes([process])
        else:  # the shell and the servers it started
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


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
    (root / "bare.py").write_text(BARE)
    env = os.environ | {
        "FNCTL_STATE": str(root / "state" / "state.db"),
        "FNCTL_BASE_IMAGE": os.environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm"),
    }
    load_before = os.getloadavg()
    try:
        fnctl_ok(root, env, "apply")
        rounds: list[Round] = []
        for _ in range(args.rounds):  # interleaved: every side sees the same machine load
            for server in ("bare", "fnctl"):
                for workers in (1, 2):
                    rounds.append(one_round(root, env, name, server, workers, args))
    finally:
        remove_project(name)
        shutil.rmtree(root, ignore_errors=True)
    report(rounds, args, load_before)


def report(rounds: list[Round], args: argparse.Namespace, load_before: tuple[float, ...]) -> None:
    print(f"no-op function, 4 instances x concurrency 8; wrk -t1 -c{args.connections}, {args.seconds}s per round")
    print(
        f"cores: CPU seconds per second of load, of the machine's {CORES}: each serving process (w), the server's "
        "parent, instances, wrk, other (the machine's busy time outside these) and idle (the headroom); "
        "per core: requests per gateway-CPU-second"
    )
    for r in rounds:
        each = " ".join(f"{c:.2f}" for c in r.worker_cores)
        print(
            f"  {r.server:5} workers={r.workers}: {r.rps:6.0f} req/s  errors {r.errors}  w [{each}] "
            f"parent {r.parent_cores:.2f}  instances {r.instance_cores:.2f}  wrk {r.wrk_cores:.2f}  "
            f"other {r.other_cores:.2f}  idle {r.idle_cores:.2f}  per core {r.per_core:.0f}  "
            f"switches/request {sum(r.switches) / r.rps:.2f} ({r.switches[1] / r.rps:.2f} involuntary)"
        )
    for server in ("bare", "fnctl"):
        mine = {w: [r for r in rounds if r.server == server and r.workers == w] for w in (1, 2)}
        print(f"{server}, medians:          1 worker  2 workers   2/1")
        for label, figure in FIGURES:
            one, two = (statistics.median(figure(r) for r in mine[w]) for w in (1, 2))
            ratio = f"{two / one:5.2f}x" if label in RATIOS and one else ""
            print(f"  {label:<22} {one:9.2f} {two:10.2f}   {ratio}")
    fnctl = {w: [r for r in rounds if r.server == "fnctl" and r.workers == w] for w in (1, 2)}
    rps = {w: statistics.median(r.rps for r in fnctl[w]) for w in (1, 2)}
    per_request = statistics.median(
        (r.gateway_cores + r.instance_cores + r.wrk_cores) / r.rps for r in fnctl[1]
    )  # the CPU one request takes of the gateway, its instance and the load generator, with one worker
    needed = 1.6 * rps[1] * per_request
    other = statistics.median(r.other_cores for r in fnctl[2])
    efficiency = statistics.median(r.per_core for r in fnctl[2]) / statistics.median(r.per_core for r in fnctl[1])
    print(
        f"verdict: fnctl 2/1 {rps[2] / rps[1]:.2f}x (issue: >= 1.6x where the cores exist). 1.6x would take "
        f"{needed:.2f} cores at the 1-worker cost per request (gateway + instances + wrk); the machine has "
        f"{CORES}, of which other load took {other:.2f} with 2 workers. Gateway efficiency with 2 workers: "
        f"{efficiency:.2f} of 1 worker's (requests per gateway-CPU-second)."
    )
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")


FIGURES: list[tuple[str, Callable[[Round], float]]] = [
    ("requests/s", lambda r: r.rps),
    ("gateway cores", lambda r: r.gateway_cores),
    ("  busiest worker", lambda r: max(r.worker_cores, default=0.0)),
    ("  parent", lambda r: r.parent_cores),
    ("instance cores", lambda r: r.instance_cores),
    ("wrk cores", lambda r: r.wrk_cores),
    ("other cores", lambda r: r.other_cores),
    ("idle cores (headroom)", lambda r: r.idle_cores),
    ("per core (req/CPU-s)", lambda r: r.per_core),
    ("gateway us CPU/request", lambda r: r.gateway_cores / r.rps * 1e6),
    ("  of which system us", lambda r: r.gateway_system / r.rps * 1e6),
    ("switches/request", lambda r: sum(r.switches) / r.rps),
    ("  involuntary", lambda r: r.switches[1] / r.rps),
]
RATIOS = {"requests/s", "gateway cores", "per core (req/CPU-s)", "gateway us CPU/request", "  of which system us"}


if __name__ == "__main__":
    main()
