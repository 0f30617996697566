"""Speed of the gateway (`fnctl serve`) in front of real instances, as a whole process, with wrk.

A generated project (temporary directory; every container and image it made is removed afterwards) deploys
N functions (default 50): `noop` (one instance, concurrency 8), `load` (4 instances of concurrency 50, for
many clients), `cold` (minInstances 0) and N - 3 others with one instance each. Then, against one
`fnctl serve` with its defaults (access log on, to /dev/null):

- throughput at concurrency 8 (`wrk -t1 -c8`, POST of `{}`): a bare aiohttp "hello" server (the same
  library and event loop, the same requests) against the gateway invoking `noop`; rounds interleaved, medians;
- added latency: p50 of sequential invocations through the gateway (a raw HTTP/1.1 keep-alive client)
  minus p50 of the same invocation sent straight to the instance's Unix socket (a raw frame client);
- 200 keep-alive clients for --load-seconds (default 30) on `load` (`wrk -t2 -c200`): errors and p99;
- cold start with minInstances 0: the gateway stops `cold` when idle (--idle-timeout 2s), then one request
  times its start; the median of --cold-runs;
- the gateway's resident memory (VmRSS, and its peak VmHWM) with N functions deployed, after all the above.

Both servers run on uvloop when it is importable here (the gateway's optional fast event loop), else on
asyncio's own loop; the report says which, so that figures are compared like with like.

Targets (issue): throughput >= 40% of bare aiohttp; added p50 <= 1 ms; 200 clients with zero errors; cold
start median <= 1.0 s; RSS <= 80 MB with 50 functions.

    .venv/bin/python benchmarks/bench_gateway.py [--functions 50] [--seconds 8] [--rounds 3] [--load-seconds 30]

Needs a Docker engine, wrk, and FNCTL_BASE_IMAGE (default fnctl-base:bookworm). Bounded by --timeout
(default 900 s): past it, the run stops and cleans up.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import cast

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NOOP = "def handler(event, context):\n    return {}\n"
FUNCTION = """\
---
apiVersion: fnctl/v1
kind: Function
metadata: {{name: {name}}}
spec:
  runtime: python3.11
  source: ../functions/noop
  handler: main.handler
  limits: {{timeout: 5s, memory: 64Mi, pids: {pids}}}
  scaling: {{minInstances: {min}, maxInstances: {max}, concurrency: {concurrency}}}
  access: {{roles: [public]}}
  healthCheck:
    - event: {{}}
"""
# The baseline: aiohttp's own hello world, on the same event loop the gateway would pick.
BARE = """
import sys
from aiohttp import web
try:
    import uvloop
except ImportError:
    uvloop = None

async def hello(request):
    await request.read()
    return web.Response(body=b'{}', content_type='application/json')

app = web.Application()
app.router.add_route('*', '/{tail:.*}', hello)
web.run_app(app, host='127.0.0.1', port=int(sys.argv[1]), access_log=None, print=None,
            **({'loop': uvloop.new_event_loop()} if uvloop else {}))
"""
POST_LUA = 'wrk.method = "POST"\nwrk.body = "{}"\nwrk.headers["Content-Type"] = "application/json"\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def until(condition: Callable[[], object], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


def http_post(port: int, path: str) -> int:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


# ---- wrk ----


@dataclass(frozen=True)
class Wrk:
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int
    requests: int

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(port: int, path: str, script: Path, *, threads: int, connections: int, seconds: int) -> Wrk:
    done = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "5s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    out = done.stdout
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))  # wrk may pad "3.56s "
    if set(latency) != {"50", "99"} or "Requests/sec:" not in out:
        raise SystemExit(f"wrk gave no figures for {path} (exit {done.returncode}):\n{out}{done.stderr}")
    return Wrk(
        float(_first(r"Requests/sec:\s+([\d.]+)", out)),
        _ms(latency["50"]),
        _ms(latency["99"]),
        sum(int(g) for g in socket_errors.groups()) if socket_errors else 0,
        int(non_2xx.group(1)) if non_2xx else 0,
        int(_first(r"(\d+) requests in", out)),
    )


def _first(pattern: str, text: str) -> str:
    """The first group of `pattern` in wrk's output, which has it (checked above)."""
    found = re.search(pattern, text)
    if found is None:
        raise SystemExit(f"wrk's output lacks {pattern!r}:\n{text}")
    return found.group(1)


# ---- raw sequential clients, for latency ----

REQUEST = b"POST /invoke/noop HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def http_latencies(port: int, count: int) -> list[float]:
    """Sequential invocations over one keep-alive connection; seconds each."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    buffer = b""
    try:
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(REQUEST)
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(65536)
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            while len(buffer) < length:
                buffer += sock.recv(65536)
            buffer = buffer[length:]
            times.append(time.perf_counter() - start)
            assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        sock.close()
    return times


def direct_latencies(socket_dir: str, container_id: str, count: int) -> list[float]:
    """Sequential invocations straight to the instance's runtime; seconds each."""
    from fnctl.invocation.protocol import FrameDecoder, invoke_frame
    from fnctl.invocation.rendezvous import Rendezvous, container_peer

    def receive() -> dict[str, object]:
        message = decoder.read_from(sock.recv)
        if message is None:
            raise SystemExit("the instance closed the connection")
        return message

    rendezvous = Rendezvous(socket_dir)  # the runtime connects out to a listener of ours, checked as the host does
    try:
        sock = rendezvous.accept(time.monotonic() + 10, container_peer(container_id))
    finally:
        rendezvous.close()
    decoder = FrameDecoder()  # the host's own codec: the same frames the gateway sends, without the gateway
    times = []
    try:
        assert receive().get("type") == "ready"
        for n in range(count):
            start = time.perf_counter()
            sock.sendall(invoke_frame(n + 1, {}, f"b{n}", time.time() + 5, None))
            reply = receive()
            times.append(time.perf_counter() - start)
            assert reply.get("type") == "result" and reply.get("ok"), reply
    finally:
        sock.close()
    return times


def ipc_round_trip(count: int = 5000) -> tuple[float, float]:
    """Wall and client-CPU microseconds of one 50-byte ping-pong between two processes over a socket pair:
    the price of one hop on this machine, which the gateway pays twice per request and a bare server once."""
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo side
        parent.close()
        while data := child.recv(100):
            child.send(data)
        os._exit(0)
    child.close()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        parent.send(b"x" * 50)
        parent.recv(100)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    parent.close()
    os.waitpid(pid, 0)
    return wall / count * 1e6, cpu / count * 1e6


# ---- the run ----


@dataclass
class Setup:
    root: Path
    name: str
    state: Path
    env: dict[str, str]
    port: int


def make_project(count: int) -> Setup:
    root = Path(tempfile.mkdtemp(prefix="fnctl-bench-gw-"))
    name = f"b-{secrets.token_hex(4)}"
    port = free_port()
    (root / "manifests").mkdir()
    (root / "functions" / "noop").mkdir(parents=True)
    (root / "functions" / "noop" / "main.py").write_text(NOOP)
    (root / "fnctl.toml").write_text(
        f'[project]\nname = "{name}"\nmanifests = ["manifests"]\n\n[gateway]\naddress = "127.0.0.1:{port}"\n'
    )
    docs = [
        FUNCTION.format(name="noop", min=1, max=1, concurrency=8, pids=64),
        # sized for 200 clients from the start (4 x 50 slots, a worker thread each): the figure is the
        # gateway's, not the time the pool takes to scale up
        FUNCTION.format(name="load", min=4, max=4, concurrency=50, pids=128),
        FUNCTION.format(name="cold", min=0, max=1, concurrency=8, pids=64),
    ]
    docs += [FUNCTION.format(name=f"fn-{i:02d}", min=1, max=1, concurrency=8, pids=64) for i in range(3, count)]
    (root / "manifests" / "functions.yaml").write_text("".join(docs))
    env = os.environ | {
        "FNCTL_STATE": str(root / "state" / "state.db"),
        "FNCTL_BASE_IMAGE": os.environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm"),
    }
    return Setup(root, name, root / "state" / "state.db", env, port)


def fnctl(setup: Setup, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "fnctl", *args],
        cwd=setup.root,
        env=setup.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise SystemExit(f"fnctl {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def instances_of(port: int, function: str) -> float | None:
    _, body = http_get(port, "/metrics")
    found = re.search(rf'^fnctl_instances{{function="{function}",revision="\d+"}} ([\d.]+)$', body.decode(), re.M)
    return float(found.group(1)) if found else None


def cold_starts(port: int, runs: int) -> list[float]:
    import http.client

    times = []
    for _ in range(runs):
        until(lambda: instances_of(port, "cold") == 0.0, "the idle `cold` instance to stop", timeout=60)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start = time.perf_counter()
        connection.request("POST", "/invoke/cold", body=b"{}", headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        times.append(time.perf_counter() - start)
        connection.close()
        if response.status != 200 or response.getheader("X-Fnctl-Cold-Start") != "1":
            raise SystemExit(f"the cold request was not a cold start: {response.status} {response.getheaders()}")
    return times


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    value = {k: int(v.split()[0]) / 1024 for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.+)$", status, re.M)}
    return value["VmRSS"], value["VmHWM"]


def cleanup(setup: Setup) -> None:
    import docker

    client = docker.from_env(timeout=120)
    for container in client.containers.list(all=True, filters={"label": f"io.fnctl.project={setup.name}"}):
        socket_dir = container.labels.get("io.fnctl.socket-dir")
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)
    for image in client.images.list(filters={"label": f"io.fnctl.project={setup.name}"}):
        try:
            client.images.remove(image.id, force=True)
        except docker.errors.APIError:
            pass
    shutil.rmtree(setup.root, ignore_errors=True)


def _timeout(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError("the benchmark ran past --timeout")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--functions", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=8, help="each wrk throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=2000, help="invocations per latency round")
    parser.add_argument("--load-seconds", type=int, default=30)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=900)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(args.timeout)
    setup = make_project(max(args.functions, 3))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        started = time.perf_counter()
        fnctl(setup, "apply")
        deployed = time.perf_counter() - started
        results = run(setup, args, processes)
    finally:
        signal.alarm(0)
        for process in processes:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        cleanup(setup)
    report(results, args, deployed)


def run(setup: Setup, args: argparse.Namespace, processes: list[subprocess.Popen[bytes]]) -> dict[str, object]:
    from fnctl.state.store import connect

    script = setup.root / "post.lua"
    script.write_text(POST_LUA)
    gateway = subprocess.Popen(
        [sys.executable, "-m", "fnctl", "serve", "--idle-timeout", "2s"],
        cwd=setup.root,
        env=setup.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(gateway)
    bare_port = free_port()
    bare_server = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)])
    processes.append(bare_server)
    until(lambda: http_get(setup.port, "/readyz")[0] == 200, "the gateway", 120)
    until(lambda: http_get(bare_port, "/")[0] == 200, "the bare server", 30)
    names = ["noop", "load", "cold"] + [f"fn-{i:02d}" for i in range(3, args.functions)]
    for name in names:  # every pool in use once, as in production
        status = http_post(setup.port, f"/invoke/{name}")
        if status != 200:
            raise SystemExit(f"invoking {name} through the gateway answered {status}")
    store = connect(setup.state)
    row = next(iter(store.instances("noop")))
    store.close()
    runtime_pid = int(
        subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Pid}}", row.container_id or ""],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )

    bare, through, cpu = [], [], []
    for _ in range(args.rounds):  # interleaved: a noisy moment slows both alike
        before = cpu_seconds(bare_server.pid)
        bare.append(wrk(bare_port, "/invoke/noop", script, threads=1, connections=8, seconds=args.seconds))
        bare_cpu = cpu_seconds(bare_server.pid) - before
        before_gw, before_rt = cpu_seconds(gateway.pid), cpu_seconds(runtime_pid)
        through.append(wrk(setup.port, "/invoke/noop", script, threads=1, connections=8, seconds=args.seconds))
        cpu.append(
            (
                bare_cpu / bare[-1].requests,
                (cpu_seconds(gateway.pid) - before_gw) / through[-1].requests,
                (cpu_seconds(runtime_pid) - before_rt) / through[-1].requests,
            )
        )
    direct, via = [], []
    for _ in range(args.rounds):
        direct += direct_latencies(row.socket_dir, row.container_id or "", args.sequential)
        via += http_latencies(setup.port, args.sequential)
    ipc = ipc_round_trip()
    load = wrk(setup.port, "/invoke/load", script, threads=2, connections=200, seconds=args.load_seconds)
    colds = cold_starts(setup.port, args.cold_runs)
    rss, peak = rss_mb(gateway.pid)
    return {
        "bare": bare,
        "gateway": through,
        "direct": direct,
        "via": via,
        "load": load,
        "cold": colds,
        "rss": rss,
        "peak": peak,
        "cpu": cpu,
        "ipc": ipc,
    }


def event_loop() -> str:
    """The event loop both servers pick (they run with this interpreter and environment)."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("uvloop") is None:
        return "asyncio (uvloop not installed)"
    return f"uvloop {importlib.metadata.version('uvloop')}"


def report(r: dict[str, object], args: argparse.Namespace, deployed: float) -> None:
    bare_rps = statistics.median(w.rps for w in r["bare"])  # type: ignore[attr-defined]
    gw_rps = statistics.median(w.rps for w in r["gateway"])  # type: ignore[attr-defined]
    direct_p50 = statistics.median(r["direct"]) * 1000  # type: ignore[arg-type]
    via_p50 = statistics.median(r["via"]) * 1000  # type: ignore[arg-type]
    load: Wrk = r["load"]  # type: ignore[assignment]
    cold_runs = cast(list[float], r["cold"])
    cold = statistics.median(cold_runs)
    ipc = cast(tuple[float, float], r["ipc"])
    ratio, added = gw_rps / bare_rps, via_p50 - direct_p50
    cpu_us = [statistics.median(c[i] for c in r["cpu"]) * 1e6 for i in range(3)]  # type: ignore[attr-defined]
    rows = [
        ("throughput, wrk -t1 -c8, bare aiohttp hello", f"{bare_rps:,.0f} req/s", ""),
        (
            "throughput, wrk -t1 -c8, gateway -> noop (1 instance)",
            f"{gw_rps:,.0f} req/s",
            f"{ratio:.0%} of bare (target >= 40%)",
        ),
        (
            "  CPU per request: bare server / gateway / runtime",
            f"{cpu_us[0]:.0f} / {cpu_us[1]:.0f} / {cpu_us[2]:.0f} us",
            "where the 2 cores go (wrk takes its share too)",
        ),
        (
            "  one process-to-process round trip (socketpair)",
            f"{ipc[0]:.0f} us",
            f"{ipc[1]:.0f} us of the caller's CPU: a hop's price here",
        ),
        ("latency p50, straight to the instance socket", f"{direct_p50:.3f} ms", ""),
        ("latency p50, through the gateway", f"{via_p50:.3f} ms", f"added {added:.3f} ms (target <= 1 ms)"),
        (
            f"200 keep-alive clients, {args.load_seconds} s (wrk -t2 -c200)",
            f"{load.rps:,.0f} req/s",
            f"{load.errors} errors in {load.requests:,} (target 0: {load.socket_errors} socket, {load.non_2xx} "
            f"non-2xx); p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms",
        ),
        (
            f"cold start, minInstances 0 (median of {len(cold_runs)})",
            f"{cold:.3f} s",
            "runs " + ", ".join(f"{t:.2f}" for t in cold_runs) + " s (target <= 1.0 s)",
        ),
        (
            f"gateway RSS, {args.functions} functions deployed",
            f"{r['rss']:.1f} MB",
            f"peak {r['peak']:.1f} MB (target <= 80 MB)",
        ),
    ]
    width = max(len(name) for name, _, _ in rows)
    print(
        f"gateway benchmark: {args.functions} functions deployed in {deployed:.1f} s; "
        f"medians of {args.rounds} interleaved rounds ({args.seconds} s wrk, {args.sequential} sequential); "
        f"event loop: {event_loop()}"
    )
    print(f"| {'measure':<{width}} | {'figure':>14} | note")
    print(f"|{'-' * (width + 2)}|{'-' * 16}|------")
    for name, figure, note in rows:
        print(f"| {name:<{width}} | {figure:>14} | {note}")
    missed = [
        m
        for m, bad in (
            ("throughput", ratio < 0.40),
            ("added latency", added > 1.0),
            ("load errors", load.errors > 0),
            ("cold start", cold > 1.0),
            ("RSS", cast(float, r["rss"]) > 80),
        )
        if bad
    ]
    print("\nall targets met" if not missed else f"\nmissed: {', '.join(missed)}")


if __name__ == "__main__":
    main()
