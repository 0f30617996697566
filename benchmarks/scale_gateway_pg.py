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
from dataclasses import dataclass
from pathlib import Path

from benchcommon import (
    TICKS,
    free_port,
    function_manifest,
    http_trigger,
    loadavg,
    post_lua,
    serve,
    stop_processes,
    tree_cpu,
    wrk,
)

NOOP = "def handler(event, context):\n    return {}\n"
SCALING = {"minInstances": 2, "maxInstances": 2, "concurrency": 8}
MANIFEST = function_manifest("noop", scaling=SCALING, access={"roles": ["public"]})
MANIFEST += http_trigger("noop", "/t/noop", "GET")  # the "trigger GET" load's path
LOADS = {  # name: (path, wrk script)
    "/invoke POST": ("/invoke/noop", post_lua()),
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


def one_round(root: Path, env: dict[str, str], backend: str, server_pid: int, seconds: int) -> list[Load]:
    """A gateway on `env`'s state, each load once; its figures."""
    port = free_port()
    gateway = serve(root, env, port, "--no-access-log", "-a", f"127.0.0.1:{port}", timeout=60)
    try:
        figures = []
        for name, (path, _) in LOADS.items():
            script = root / _script(name)
            wrk(port, path, script, seconds=1)  # warm-up: connections, the runtimes' workers
            gateway_before, server_before = cpu(gateway.pid), cpu(server_pid)
            load = wrk(port, path, script, seconds=seconds)
            requests = max(1, load.requests)
            figures.append(
                Load(
                    backend,
                    name,
                    load.rps,
                    load.errors,
                    (cpu(gateway.pid) - gateway_before) * 1e6 / requests,
                    (cpu(server_pid) - server_before) * 1e6 / requests,
                )
            )
        return figures
    finally:
        stop_processes([gateway])


def gateway_pg_figures(
    root: Path, on_sqlite: dict[str, str], on_pg: dict[str, str], pgdir: Path, rounds: int, seconds: int
) -> None:
    """Interleaved rounds (SQLite, then PostgreSQL, each round), then the medians and ratios."""
    server_pid = int((pgdir / "data" / "postmaster.pid").read_text().split()[0])
    load_before = loadavg()
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
    print(f"load average before / after: {load_before} / {loadavg()}; cores: {os.cpu_count()}")
