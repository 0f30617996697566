"""`fnctl serve --workers 2` against `--workers 1` on a no-op function (issue 19, item 3).

One project, a no-op function with 4 instances × concurrency 8 kept warm; rounds alternate between a gateway of
one worker and one of two (started afresh each round, on the same instances), and, as what the machine allows,
one and two bare aiohttp processes on SO_REUSEPORT answering `{}` themselves; each loaded by wrk for a few
seconds. Printed: requests/s per round and their medians, the ratios, the CPU the server's processes, the
function's instances (their cgroups), the load generator and the whole machine used per second of load, the
server's CPU per request, the machine's cores and its load average.

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
    remove_project,
    serve,
    stop_processes,
    tree_cpu,
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
    gateway_cores: float  # CPU seconds of the server's processes per second of load
    instance_cores: float  # of the function's containers (their cgroups)
    wrk_cores: float
    machine_cores: float  # every process of the machine's (/proc/stat): the rest is other people's load


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
        before = (tree_cpu(process.pid), cgroups_cpu(containers), children_cpu(), machine_cpu())
        started = time.monotonic()
        load = wrk(port, "/invoke/noop", script, seconds=args.seconds, connections=args.connections)
        wall = time.monotonic() - started
        after = (tree_cpu(process.pid), cgroups_cpu(containers), children_cpu(), machine_cpu())
        used = [(b - a) / wall for a, b in zip(before, after, strict=True)]
        return Round(server, workers, load.rps, load.errors, *used)
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
    print("  (cores: CPU seconds per second of load; 'other' is the machine's busy time outside these)")
    for r in rounds:
        other = r.machine_cores - r.gateway_cores - r.instance_cores - r.wrk_cores
        print(
            f"  {r.server:5} workers={r.workers}: {r.rps:8.0f} req/s  errors {r.errors}  "
            f"server {r.gateway_cores:.2f}  instances {r.instance_cores:.2f}  wrk {r.wrk_cores:.2f}  "
            f"other {other:.2f} cores  server CPU/request {r.gateway_cores / r.rps * 1e6:.0f} us"
        )
    for server in ("bare", "fnctl"):
        mine = [r for r in rounds if r.server == server]
        rps = {w: statistics.median(r.rps for r in mine if r.workers == w) for w in (1, 2)}
        cores = {w: statistics.median(r.gateway_cores for r in mine if r.workers == w) for w in (1, 2)}
        per = {w: statistics.median(r.gateway_cores / r.rps * 1e6 for r in mine if r.workers == w) for w in (1, 2)}
        print(
            f"{server}: median req/s 1 worker {rps[1]:.0f}, 2 workers {rps[2]:.0f}: ratio 2/1 {rps[2] / rps[1]:.2f}x; "
            f"server cores {cores[1]:.2f} / {cores[2]:.2f}; CPU/request {per[1]:.0f} / {per[2]:.0f} us"
        )
    instance = statistics.median(r.instance_cores for r in rounds if r.server == "fnctl")
    wrk_cores = statistics.median(r.wrk_cores for r in rounds)
    print(
        f"instances {instance:.2f} cores, load generator {wrk_cores:.2f} cores; machine cores {os.cpu_count()} "
        "(issue: fnctl 2/1 >= 1.6x where the cores exist; here: at least the bare servers' ratio)"
    )
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
