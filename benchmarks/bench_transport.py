"""Host-to-runtime transport speed: warm round-trip latency and 8-caller throughput of a no-op invocation, and
the round trip of a handler's `context.call` (sync handler, in a worker process, on the worker connection the
transport offers: docs/protocol.md) and `await context.acall` (async handler, on the runtime's event loop) to
the gateway's transport (`AsyncTransport`, answering at once as the broker answers a `db.get` or a refusal),
timed inside the handler.

The invocation figures are compared with a bare asyncio length-prefixed echo server over a Unix socket, the
call figures with a socketpair ping-pong between two processes (the floor of any round trip between two
Python processes here), all measured in the same run (these machines are noisy: each figure is the median over
rounds, and the ratio is what to watch). Targets (issue 18): acall p50 <= 100 us, call p50 <= 150 us, p99 <= 1 ms.

    python benchmarks/bench_transport.py [--rounds 3] [--sequential 2000] [--count 20000] [--calls 2000]
                                         [--socket-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchcommon import echo_child  # noqa: E402

from fnctl.engine.instances import host_transport  # noqa: E402
from fnctl.invocation.aiotransport import Answered, AsyncTransport  # noqa: E402
from fnctl.invocation.protocol import encode_frame  # noqa: E402
from fnctl.invocation.transport import UnixSocketTransport  # noqa: E402

RUNTIME = ROOT / "runtime-image" / "fnctl_runtime.py"
EVENT = {"n": 1}
WARMUP = 200


@dataclass(frozen=True)
class Figures:
    p50_us: float
    p95_us: float
    per_second: float


# ---- the baseline: a bare echo server and a raw client ---------------------------------------


class _Echo(asyncio.Protocol):
    """Echoes each length-prefixed frame back unparsed: the floor for one request/reply in Python."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            end = 4 + int.from_bytes(self.buf[:4], "big")
            if len(self.buf) < end:
                return
            assert self.transport is not None
            self.transport.write(bytes(self.buf[:end]))
            del self.buf[:end]


async def _serve_echo(path: str) -> None:
    server = await asyncio.get_running_loop().create_unix_server(_Echo, path)
    async with server:
        await server.serve_forever()


class RawClient:
    """One connection, one request at a time: no multiplexing, no JSON."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.stream = self.sock.makefile("rb")
        self.frame = encode_frame({"type": "invoke", "id": 1, "event": EVENT})

    def round_trip(self) -> None:
        self.sock.sendall(self.frame)
        size = int.from_bytes(self.stream.read(4), "big")
        self.stream.read(size)

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


# ---- processes under test -------------------------------------------------------------------


def _wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    give_up = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > give_up:
            raise SystemExit(f"the server for {path} did not start (exit code {process.poll()})")
        time.sleep(0.01)


@contextmanager
def echo_server(workdir: Path) -> Iterator[str]:
    path = workdir / "echo.sock"
    process = subprocess.Popen([sys.executable, __file__, "--serve-echo", str(path)])
    try:
        _wait_for(path, process)
        yield str(path)
    finally:
        process.kill()
        process.wait()


@contextmanager
def runtime_instance(workdir: Path) -> Iterator[Callable[[], UnixSocketTransport]]:
    """The runtime as a subprocess; yields a maker of transports that accept only that process."""
    code = workdir / "code"
    code.mkdir()
    (code / "main.py").write_text("def handler(event, context):\n    return event\n")
    (workdir / "run").mkdir()
    directory = str(workdir / "run")
    env = {
        **os.environ,
        "FNCTL_HANDLER": "main.handler",
        "FNCTL_CODE_DIR": str(code),
        "FNCTL_SOCKET_DIR": directory,
        "FNCTL_FUNCTION": "bench",
        "FNCTL_REVISION": "bench",
    }
    process = subprocess.Popen([sys.executable, str(RUNTIME)], env=env)
    try:
        yield lambda: UnixSocketTransport(directory, peer=lambda pid: pid == process.pid)
    finally:
        process.terminate()  # SIGTERM drains: nothing is in flight by now
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---- measurements ---------------------------------------------------------------------------


def latency(call: Callable[[], None], count: int) -> tuple[float, float]:
    """p50 and p95 in microseconds over `count` sequential calls."""
    samples = []
    for _ in range(count):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    cuts = statistics.quantiles(samples, n=20)
    return statistics.median(samples), cuts[18]


def throughput(calls: list[Callable[[], None]], count: int) -> float:
    """Calls per second with one thread per entry of `calls`, `count` calls in all."""
    share = count // len(calls)
    barrier = threading.Barrier(len(calls) + 1)

    def worker(call: Callable[[], None]) -> None:
        barrier.wait()
        for _ in range(share):
            call()

    threads = [threading.Thread(target=worker, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return share * len(calls) / (time.perf_counter() - start)


def measure_runtime(make: Callable[[], UnixSocketTransport], args: argparse.Namespace) -> Figures:
    with make() as transport:
        transport.connect(timeout=15)
        ids = iter(range(1 << 62))

        def invoke() -> None:
            reply = transport.invoke(EVENT, invocation_id=str(next(ids)), deadline=time.time() + 30)
            if not reply.ok:
                raise SystemExit(f"the benchmark handler failed: {reply.error}")

        for _ in range(WARMUP):
            invoke()
        p50, p95 = latency(invoke, args.sequential)
        rate = throughput([invoke] * args.threads, args.count)  # one shared connection, as the pool uses it
    return Figures(p50, p95, rate)


def measure_baseline(path: str, args: argparse.Namespace) -> Figures:
    clients = [RawClient(path) for _ in range(args.threads)]  # a connection per thread: no multiplexing
    try:
        for _ in range(WARMUP):
            clients[0].round_trip()
        p50, p95 = latency(clients[0].round_trip, args.sequential)
        rate = throughput([c.round_trip for c in clients], args.count)
    finally:
        for client in clients:
            client.close()
    return Figures(p50, p95, rate)


# ---- context.call / context.acall -----------------------------------------------------------

CALLERS = """
import time
def handler(event, context):
    took = []
    for _ in range(event["n"]):
        started = time.perf_counter_ns()
        context.call("ping", {})
        took.append(time.perf_counter_ns() - started)
    return took
async def ahandler(event, context):
    took = []
    for _ in range(event["n"]):
        started = time.perf_counter_ns()
        await context.acall("ping", {})
        took.append(time.perf_counter_ns() - started)
    return took
"""


@dataclass(frozen=True)
class CallFigures:
    p50_us: float
    p99_us: float


def _call_figures(nanoseconds: list[int]) -> CallFigures:
    samples = [n / 1000 for n in nanoseconds]
    return CallFigures(statistics.median(samples), statistics.quantiles(samples, n=100)[98])


def _answer_now(invocation_id: str, method: str, params: dict[str, object]) -> Answered:
    return Answered(None)


def _runtime_or_its_worker(pid: int) -> Callable[[int], bool]:
    """The peer check of a runtime run as a local process: it, or a worker process it forked (in a container,
    the cgroup check admits both)."""

    def check(peer: int) -> bool:
        try:
            with open(f"/proc/{peer}/stat", encoding="ascii") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        return pid in (peer, parent)

    return check


async def _calls_from(directory: str, pid: int, count: int) -> list[int]:
    transport = AsyncTransport(directory, peer=_runtime_or_its_worker(pid), on_call=_answer_now)
    await transport.connect(timeout=15)
    try:
        await transport.invoke({"n": WARMUP}, invocation_id="warm", deadline=time.time() + 60)
        result = await transport.invoke({"n": count}, invocation_id="timed", deadline=time.time() + 60)
        if not result.ok or not isinstance(result.result, list):
            raise SystemExit(f"the call benchmark handler failed: {result.error}")
        return [int(n) for n in result.result]
    finally:
        await transport.close()


def measure_calls(workdir: Path, handler: str, count: int) -> CallFigures:
    """`count` calls from one invocation of `handler` (main.handler: sync, main.ahandler: async)."""
    code = workdir / f"code-{handler}"
    code.mkdir(exist_ok=True)
    (code / "main.py").write_text(CALLERS)
    directory = workdir / f"run-{handler}"
    directory.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "FNCTL_HANDLER": handler,
        "FNCTL_CODE_DIR": str(code),
        "FNCTL_SOCKET_DIR": str(directory),
        "FNCTL_FUNCTION": "bench",
        "FNCTL_REVISION": "bench",
    }
    process = subprocess.Popen([sys.executable, str(RUNTIME)], env=env)
    try:
        return _call_figures(asyncio.run(_calls_from(str(directory), process.pid, count)))
    finally:
        process.terminate()
        process.wait(timeout=10)


def measure_pingpong(count: int) -> CallFigures:
    """A call-sized frame to a child process and back over a socketpair, both sides blocking Python."""
    frame = encode_frame({"type": "call", "id": "w1.1", "invocation_id": "x" * 32, "method": "ping", "params": {}})
    took = []
    with echo_child() as ours:
        for n in range(WARMUP + count):
            started = time.perf_counter_ns()
            ours.sendall(frame)
            got = 0
            while got < len(frame):
                got += len(ours.recv(65536))
            if n >= WARMUP:
                took.append(time.perf_counter_ns() - started)
    return _call_figures(took)


def median_figures(rounds: list[Figures]) -> Figures:
    names = ("p50_us", "p95_us", "per_second")
    return Figures(*(statistics.median(getattr(r, name) for r in rounds) for name in names))


def run(args: argparse.Namespace) -> dict[str, Figures]:
    results: dict[str, list[Figures]] = {"runtime": [], "baseline": []}
    workdir = Path(tempfile.mkdtemp(prefix="fnbench-"))  # short: AF_UNIX paths are limited to ~108 bytes
    give_up = time.monotonic() + args.max_seconds
    try:
        with echo_server(workdir) as echo, _target(args, workdir) as target:
            for n in range(args.rounds):
                results["runtime"].append(measure_runtime(target, args))
                results["baseline"].append(measure_baseline(echo, args))
                print(
                    f"round {n + 1}: runtime {_row(results['runtime'][-1])} | baseline {_row(results['baseline'][-1])}",
                    file=sys.stderr,
                )
                if time.monotonic() > give_up:
                    print("time budget spent: stopping early", file=sys.stderr)
                    break
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {name: median_figures(rounds) for name, rounds in results.items()}


def run_calls(args: argparse.Namespace) -> dict[str, CallFigures]:
    """Rounds of: the socketpair baseline, sync `context.call`, async `context.acall`; medians over rounds."""
    rounds: dict[str, list[CallFigures]] = {"pingpong": [], "call": [], "acall": []}
    workdir = Path(tempfile.mkdtemp(prefix="fncall-"))
    try:
        for n in range(args.rounds):
            rounds["pingpong"].append(measure_pingpong(args.calls))
            rounds["call"].append(measure_calls(workdir, "main.handler", args.calls))
            rounds["acall"].append(measure_calls(workdir, "main.ahandler", args.calls))
            row = ", ".join(f"{k} p50 {v[-1].p50_us:.0f} µs p99 {v[-1].p99_us:.0f} µs" for k, v in rounds.items())
            print(f"call round {n + 1}: {row}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        name: CallFigures(statistics.median(f.p50_us for f in got), statistics.median(f.p99_us for f in got))
        for name, got in rounds.items()
    }


def report_calls(figures: dict[str, CallFigures], args: argparse.Namespace) -> None:
    base = figures["pingpong"]
    print(f"\nhandler -> host call round trip, timed in the handler, median of {args.rounds} rounds of {args.calls}")
    print(f"{'':34}{'p50 µs':>10}{'p99 µs':>10}{'p50 ratio':>11}{'target':>22}")
    targets = {"call": "p50 <= 150, p99 <= 1000", "acall": "p50 <= 100", "pingpong": "(baseline)"}
    names = {
        "call": "context.call (sync, worker)",
        "acall": "context.acall (async, loop)",
        "pingpong": "socketpair ping-pong",
    }
    for key in ("call", "acall", "pingpong"):
        f = figures[key]
        print(f"{names[key]:34}{f.p50_us:>10.1f}{f.p99_us:>10.1f}{f.p50_us / base.p50_us:>10.2f}x{targets[key]:>22}")


@contextmanager
def _target(args: argparse.Namespace, workdir: Path) -> Iterator[Callable[[], UnixSocketTransport]]:
    if args.socket_dir:  # a running instance: its peer check reads the container ID kept in the directory
        yield lambda: host_transport(args.socket_dir, "")
    else:
        with runtime_instance(workdir) as make:
            yield make


def _row(f: Figures) -> str:
    return f"p50 {f.p50_us:.0f} µs, p95 {f.p95_us:.0f} µs, {f.per_second:,.0f}/s"


def report(figures: dict[str, Figures], args: argparse.Namespace) -> None:
    rt, base = figures["runtime"], figures["baseline"]
    target = args.socket_dir or "runtime subprocess"
    print(
        f"no-op invoke, median of {args.rounds} rounds: {args.sequential} sequential, "
        f"{args.count} with {args.threads} threads; target: {target}"
    )
    print(f"{'':26}{'p50 µs':>10}{'p95 µs':>10}{'invokes/s':>12}")
    for name, f in (("fnctl runtime", rt), ("bare echo (baseline)", base)):
        print(f"{name:26}{f.p50_us:>10.1f}{f.p95_us:>10.1f}{f.per_second:>12,.0f}")
    print(
        f"{'ratio runtime/baseline':26}{rt.p50_us / base.p50_us:>9.2f}x{rt.p95_us / base.p95_us:>9.2f}x"
        f"{rt.per_second / base.per_second:>11.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--socket-dir", help="measure an already running instance (its socket directory) instead of a subprocess"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=2000, help="invocations for the latency figures")
    parser.add_argument("--count", type=int, default=20000, help="invocations for the throughput figure")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2000, help="context.call round trips per round (0: none)")
    parser.add_argument("--max-seconds", type=float, default=120, help="stop after the round that passes this")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--serve-echo", metavar="PATH", help=argparse.SUPPRESS)  # the baseline server process
    args = parser.parse_args()
    if args.serve_echo:
        asyncio.run(_serve_echo(args.serve_echo))
        return
    figures = run(args) if args.sequential > 0 else {}
    calls = run_calls(args) if args.calls > 0 and not args.socket_dir else {}
    if args.json:
        out = {name: asdict(f) for name, f in figures.items()} | {name: asdict(f) for name, f in calls.items()}
        print(json.dumps(out, indent=2))
        return
    if figures:
        report(figures, args)
    if calls:
        report_calls(calls, args)


if __name__ == "__main__":
    main()
