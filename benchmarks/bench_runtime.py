"""The in-container runtime's CPU per no-op invocation of a synchronous handler, two copies of it side by side.

Each copy of `runtime-image/fnctl_runtime.py` runs as a local process (no Docker: no cgroup, no seccomp, so the
figures are lower than a container's) behind the gateway's own transport (`AsyncTransport`, worker connections
offered), concurrency 8, and is sent a 657-byte HTTP-trigger event by N concurrent callers after a warm-up that
forks its workers. Rounds alternate which copy goes first; printed: per round and as medians, the supervisor's
and the workers' CPU per invocation (from /proc: user + system), their sum, invocations per second, the ratios
of B to A, and the load average. The host side (this process) is not counted.

    python benchmarks/bench_runtime.py OLD/fnctl_runtime.py NEW/fnctl_runtime.py [--rounds 4]
        [--invocations 8000] [--callers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchcommon import loadavg, process_cpu

from fnctl.invocation.aiotransport import AsyncTransport

HEADERS = {"host": "127.0.0.1:8080", "user-agent": "wrk", "accept": "*/*", "x-forwarded-for": "127.0.0.1"}
HTTP = {"method": "GET", "path": "/t/noop", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "wrk"}
EVENT: dict[str, Any] = {  # the shape of a trigger's proxy event (payload format 2.0)
    "version": "2.0",
    "routeKey": "GET /t/noop",
    "rawPath": "/t/noop",
    "rawQueryString": "",
    "headers": HEADERS,
    "requestContext": {
        "http": HTTP,
        "requestId": "abcdef0123456789",
        "routeKey": "GET /t/noop",
        "stage": "$default",
        "timeEpoch": 1700000000000,
    },
    "body": "",
    "isBase64Encoded": False,
    "pathParameters": {},
    "queryStringParameters": {},
}
CALLER: dict[str, Any] = {"subject": "anonymous", "roles": [], "tenant": None}
WARM_UP = 200  # invocations per caller before measuring


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


async def invoke_many(transport: AsyncTransport, count: int) -> None:
    for _ in range(count):
        result = await transport.invoke(
            EVENT, invocation_id="0123456789abcdef0123", deadline=time.time() + 30, caller=CALLER
        )
        assert result.ok, result


async def one_round(runtime: str, code: str, invocations: int, callers: int) -> tuple[float, float, float]:
    """(supervisor us, workers us) per invocation and invocations per second for one copy of the runtime."""
    directory = tempfile.mkdtemp(prefix="fnbr-")  # AF_UNIX paths are short
    env = os.environ | {
        "FNCTL_HANDLER": "main.handler",
        "FNCTL_CODE_DIR": code,
        "FNCTL_SOCKET_DIR": directory,
        "FNCTL_CONCURRENCY": "8",
        "FNCTL_FUNCTION": "noop",
        "FNCTL_REVISION": "1",
    }
    process = subprocess.Popen([sys.executable, runtime], env=env)
    try:
        transport = AsyncTransport(directory, peer=lambda pid: True)  # the peer check is not what is measured
        await transport.connect(timeout=15)
        await asyncio.gather(*(invoke_many(transport, WARM_UP) for _ in range(callers)))
        workers = children(process.pid)
        supervisor, busy = process_cpu(process.pid), sum(process_cpu(pid) for pid in workers)
        start = time.perf_counter()
        await asyncio.gather(*(invoke_many(transport, invocations // callers) for _ in range(callers)))
        wall = time.perf_counter() - start
        assert children(process.pid) == workers, "a worker came or went while measuring"
        supervisor = process_cpu(process.pid) - supervisor
        busy = sum(process_cpu(pid) for pid in workers) - busy
        await transport.close()
        done = invocations // callers * callers
        return supervisor / done * 1e6, busy / done * 1e6, done / wall
    finally:
        process.kill()
        process.wait()
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


async def run(args: argparse.Namespace) -> None:
    code = tempfile.mkdtemp(prefix="fnbr-code-")
    Path(code, "main.py").write_text("def handler(event, context):\n    return {}\n")
    sides = {"A": args.a, "B": args.b}
    figures: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
    print(f"A = {args.a}\nB = {args.b}\nload average before {loadavg()}")
    for number in range(args.rounds):
        for side in ("A", "B") if number % 2 == 0 else ("B", "A"):
            supervisor, workers, rate = await one_round(sides[side], code, args.invocations, args.callers)
            figures[side].append((supervisor, workers, rate))
            print(
                f"round {number} {side}: supervisor {supervisor:6.1f} us  workers {workers:6.1f} us  "
                f"total {supervisor + workers:6.1f} us  {rate:6.0f}/s  load {loadavg()}",
                flush=True,
            )
    medians = {
        side: (
            statistics.median(f[0] for f in rows),
            statistics.median(f[1] for f in rows),
            statistics.median(f[0] + f[1] for f in rows),
            statistics.median(f[2] for f in rows),
        )
        for side, rows in figures.items()
    }
    for side, (supervisor, workers, total, rate) in medians.items():
        print(f"median {side}: supervisor {supervisor:.1f}  workers {workers:.1f}  total {total:.1f} us  {rate:.0f}/s")
    a, b = medians["A"], medians["B"]
    print(
        f"B/A: supervisor {_ratio(b[0], a[0])}  workers {_ratio(b[1], a[1])}  total {_ratio(b[2], a[2])}  "
        f"invocations/s {_ratio(b[3], a[3])}; load average after {loadavg()}"
    )


def _ratio(b: float, a: float) -> str:
    """B over A, or "-" when A is 0: with direct invocations the supervisor has no share of them (0 CPU
    ticks in a round, both sides alike)."""
    return f"{b / a:.2f}" if a else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the runtime file A (the baseline)")
    parser.add_argument("b", help="the runtime file B")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--invocations", type=int, default=8000, help="per round (10 ms /proc ticks: keep it large)")
    parser.add_argument("--callers", type=int, default=4, help="concurrent callers (over 8: invocations queue)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
