"""bench_scale.py's "gateway-pg" section (issue 19, item 1: gateway throughput on PostgreSQL >= 90 % of the
SQLite gateway's): one no-op function (2 instances x concurrency 8, kept warm) deployed by the same project
into a SQLite state and into a PostgreSQL database (each its own instances); a `fnctl serve` on each state,
both up for the whole run (their defaults: the invocation audit on, written by their processes to the state),
and in each round both loaded at once by `wrk -t1 -c8`, on /invoke (POST), then on an HTTP Trigger (GET).

Why at once: on this shared 2-core machine other work comes and goes within a second. One gateway loaded
after the other (the previous design, a gateway started afresh per round) put someone else's load on one side
only: per-round ratios of 17-817 % at load 13-17, 48-109 % at load 7-8, whichever backend. Loaded together,
both gateways have the same moments and share the cores, the PostgreSQL server's work included: the ratio is
what each costs, not when it ran. Per load and gateway: requests/s, CPU per request of the gateway's process
tree (its audit writer included) and of the PostgreSQL server (all its processes: the PostgreSQL gateway's),
the loadavg; then the medians and their ratio, each round's ratio, and the ratio of all rounds' requests."""

from __future__ import annotations

import os
import re
import statistics
from concurrent.futures import ThreadPoolExecutor
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
    loadavg: str  # the machine's 1-minute load average right after


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


def one_round(gateways: dict[str, tuple[int, int, Path]], name: str, server_pid: int, seconds: int) -> list[Load]:
    """The load `name` on every gateway (backend: its port, pid and project root) at once: their figures. The
    PostgreSQL server's CPU is the PostgreSQL gateway's (the SQLite one never reaches it)."""
    path, _ = LOADS[name]
    before = {backend: cpu(pid) for backend, (_, pid, _) in gateways.items()}
    server_before = cpu(server_pid)
    with ThreadPoolExecutor(len(gateways)) as pool:
        runs = {
            backend: pool.submit(wrk, port, path, root / _script(name), seconds=seconds)
            for backend, (port, _, root) in gateways.items()
        }
        loads = {backend: run.result() for backend, run in runs.items()}
    server = cpu(server_pid) - server_before
    now = loadavg().split()[0]
    figures = []
    for backend, (_, pid, _) in gateways.items():
        requests = max(1, loads[backend].requests)
        server_us = server * 1e6 / requests if backend == "PostgreSQL" else 0.0
        gateway_us = (cpu(pid) - before[backend]) * 1e6 / requests
        figures.append(Load(backend, name, loads[backend].rps, loads[backend].errors, gateway_us, server_us, now))
    return figures


def gateway_pg_figures(
    roots: dict[str, Path], envs: dict[str, dict[str, str]], pgdir: Path, rounds: int, seconds: int
) -> None:
    """Both gateways up (roots and envs by backend, "SQLite" and "PostgreSQL"), the rounds, then the medians
    and ratios."""
    server_pid = int((pgdir / "data" / "postmaster.pid").read_text().split()[0])
    processes = {}
    gateways: dict[str, tuple[int, int, Path]] = {}
    try:
        for backend, env in envs.items():
            port = free_port()
            processes[backend] = serve(
                roots[backend], env, port, "--no-access-log", "-a", f"127.0.0.1:{port}", timeout=60
            )
            gateways[backend] = (port, processes[backend].pid, roots[backend])
        load_before = loadavg()
        results: list[Load] = []
        for name, (path, _) in LOADS.items():
            for port, _, root in gateways.values():  # warm-up: connections, the runtimes' workers
                wrk(port, path, root / _script(name), seconds=1)
            for _ in range(rounds):
                results += one_round(gateways, name, server_pid, seconds)
    finally:
        stop_processes(processes.values())
    report(results, rounds, seconds)
    print(f"load average before / after: {load_before} / {loadavg()}; cores: {os.cpu_count()}")


def report(results: list[Load], rounds: int, seconds: int) -> None:
    print(
        f"\nno-op function gateway load, wrk -t1 -c8 {seconds}s per load, {rounds} rounds, both gateways loaded at once:"
    )
    for r in results:
        print(
            f"  {r.backend:<10} {r.load:<13} {r.rps:8.0f} req/s  errors {r.errors}  gateway {r.gateway_us:5.0f} µs/req"
            f"  PostgreSQL server {r.server_us:5.0f} µs/req  load {r.loadavg}"
        )
    print("medians:")
    for load in LOADS:
        of = {b: [r for r in results if r.backend == b and r.load == load] for b in ("SQLite", "PostgreSQL")}
        med = {
            b: [statistics.median(getattr(r, f) for r in rs) for f in ("rps", "gateway_us", "server_us")]
            for b, rs in of.items()
        }
        ratio = med["PostgreSQL"][0] / med["SQLite"][0]
        rounds_ratios = [p.rps / s.rps for s, p in zip(of["SQLite"], of["PostgreSQL"], strict=True)]
        print(
            f"  {load:<13} SQLite {med['SQLite'][0]:7.0f} req/s (baseline, gateway {med['SQLite'][1]:.0f} µs/req)  "
            f"PostgreSQL {med['PostgreSQL'][0]:7.0f} req/s (gateway {med['PostgreSQL'][1]:.0f} + server "
            f"{med['PostgreSQL'][2]:.0f} µs/req)  ratio {ratio:.0%} (target >= 90 %: {'met' if ratio >= 0.9 else 'NOT met'})"
        )
        # all rounds together: the requests each served in the same seconds (a round's noise weighs by its length)
        total = sum(r.rps for r in of["PostgreSQL"]) / sum(r.rps for r in of["SQLite"])
        print(
            f"  {'':<13} each round's ratio: {' '.join(f'{x:.0%}' for x in rounds_ratios)}"
            f" (median {statistics.median(rounds_ratios):.0%}); all rounds' requests: {total:.0%}"
        )
