"""bench_scale.py's "gateway-pg" section (issue 19, item 1: gateway throughput on PostgreSQL >= 90 % of the
SQLite gateway's): one no-op function (2 instances x concurrency 8, kept warm) deployed into a SQLite state
and copied to the PostgreSQL database by `fnctl state migrate` (same store, same instances); rounds alternate
a `fnctl serve` on each state (started afresh each round, on the same instances, with its defaults: the
invocation audit on, written by its process to the state), each loaded by `wrk -t1 -c8` on /invoke (POST) and
on an HTTP Trigger (GET). Per load: requests/s, CPU per request of the gateway's process tree (its audit
writer included) and of the PostgreSQL server (all its processes), and the loadavg."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench_workers import TICKS, free_port, tree_cpu

NOOP = "def handler(event, context):\n    return {}\n"
MANIFEST = """\
apiVersion: fnctl/v1
kind: Function
metadata: {name: noop}
spec:
  runtime: python3.11
  source: ../functions/noop
  handler: main.handler
  limits: {timeout: 5s, memory: 64Mi}
  scaling: {minInstances: 2, maxInstances: 2, concurrency: 8}
  access: {roles: [public]}
---
apiVersion: fnctl/v1
kind: Trigger
metadata: {name: noop-http}
spec:
  function: noop
  http: {path: /t/noop, methods: [GET]}
"""
LOADS = {  # name: (path, wrk script)
    "/invoke POST": (
        "/invoke/noop",
        'wrk.method = "POST"\nwrk.body = "{}"\nwrk.headers["Content-Type"] = "application/json"\n',
    ),
    "trigger GET": ("/t/noop", 'wrk.method = "GET"\n'),
}


@dataclass(frozen=True)
class Load:
    backend: str
    load: str
    rps: float
    errors: int
    gateway_us: float  # CPU per request: the gateway's process tree
    server_us: float  # CPU per request: the PostgreSQL server (~0 on SQLite, whose work is the gateway's)


def write_project(root: Path, project: str) -> None:
    (root / "manifests").mkdir(parents=True)
    (root / "functions" / "noop").mkdir(parents=True)
    (root / "functions" / "noop" / "main.py").write_text(NOOP)
    (root / "manifests" / "noop.yaml").write_text(MANIFEST)
    (root / "fnctl.toml").write_text(f'[project]\nname = "{project}"\nmanifests = ["manifests"]\n')
    for name, (_, script) in LOADS.items():
        (root / _script(name)).write_text(script)


def _script(load: str) -> str:
    return re.sub(r"\W+", "-", load).strip("-") + ".lua"


def cpu(root: int) -> float:
    """CPU seconds of `root`'s process tree now, with what its children that ended had used (the root reaped
    them: its cutime and cstime): a PostgreSQL backend of a short-lived connection counts too."""
    fields = Path(f"/proc/{root}/stat").read_text().rsplit(")", 1)[1].split()
    return tree_cpu(root) + (int(fields[13]) + int(fields[14])) / TICKS


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _wrk(port: int, path: str, script: Path, seconds: int, connections: int = 8) -> tuple[float, int]:
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script)]
        + [f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    rps = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    if rps is None:
        raise SystemExit(f"wrk gave no figures for {path}: {done.stdout}{done.stderr}")
    errors = sum(
        int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|connect|read|write|timeout):? (\d+)", done.stdout)
    )
    return float(rps.group(1)), errors


def one_round(root: Path, env: dict[str, str], backend: str, server_pid: int, seconds: int) -> list[Load]:
    """A gateway on `env`'s state, each load once; its figures."""
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "fnctl", "serve", "--no-access-log", "-a", f"127.0.0.1:{port}"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        give_up = time.monotonic() + 60
        while not _ready(port):
            if time.monotonic() > give_up or gateway.poll() is not None:
                raise SystemExit(f"the gateway on {backend} did not become ready")
            time.sleep(0.05)
        figures = []
        for name, (path, _) in LOADS.items():
            _wrk(port, path, root / _script(name), 1)  # warm-up: connections, the runtimes' workers
            gateway_before, server_before = cpu(gateway.pid), cpu(server_pid)
            rps, errors = _wrk(port, path, root / _script(name), seconds)
            requests = max(1.0, rps * seconds)
            figures.append(
                Load(
                    backend,
                    name,
                    rps,
                    errors,
                    (cpu(gateway.pid) - gateway_before) * 1e6 / requests,
                    (cpu(server_pid) - server_before) * 1e6 / requests,
                )
            )
        return figures
    finally:
        gateway.terminate()
        gateway.wait(timeout=60)


def gateway_pg_figures(
    root: Path, on_sqlite: dict[str, str], on_pg: dict[str, str], pgdir: Path, rounds: int, seconds: int
) -> None:
    """Interleaved rounds (SQLite, then PostgreSQL, each round), then the medians and ratios."""
    server_pid = int((pgdir / "data" / "postmaster.pid").read_text().split()[0])
    load_before = _loadavg()
    results: list[Load] = []
    for _ in range(rounds):
        for backend, env in (("SQLite", on_sqlite), ("PostgreSQL", on_pg)):
            results.extend(one_round(root, env, backend, server_pid, seconds))
    print(f"\nno-op function gateway load, wrk -t1 -c8 {seconds}s per load, {rounds} interleaved rounds:")
    for r in results:
        print(
            f"  {r.backend:<10} {r.load:<13} {r.rps:8.0f} req/s  errors {r.errors}  "
            f"gateway {r.gateway_us:5.0f} µs/req  PostgreSQL server {r.server_us:5.0f} µs/req"
        )
    print("medians:")
    for load in LOADS:
        med = {
            b: (
                statistics.median(r.rps for r in results if r.backend == b and r.load == load),
                statistics.median(r.gateway_us for r in results if r.backend == b and r.load == load),
                statistics.median(r.server_us for r in results if r.backend == b and r.load == load),
            )
            for b in ("SQLite", "PostgreSQL")
        }
        ratio = med["PostgreSQL"][0] / med["SQLite"][0]
        print(
            f"  {load:<13} SQLite {med['SQLite'][0]:7.0f} req/s (baseline, gateway {med['SQLite'][1]:.0f} µs/req)  "
            f"PostgreSQL {med['PostgreSQL'][0]:7.0f} req/s (gateway {med['PostgreSQL'][1]:.0f} + server "
            f"{med['PostgreSQL'][2]:.0f} µs/req)  ratio {ratio:.0%} (target >= 90 %: {'met' if ratio >= 0.9 else 'NOT met'})"
        )
    print(f"load average before / after: {load_before} / {_loadavg()}; cores: {os.cpu_count()}")


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
