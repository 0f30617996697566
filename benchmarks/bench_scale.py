"""Scale-out speed: the deployment state on PostgreSQL against SQLite, in the same run.

In a temporary directory (removed afterwards, with every container and image of its uniquely named project):
a throwaway PostgreSQL server (scripts/pg-server.sh: Unix socket only) and a project of --functions generated
functions (each its own source; minInstances 0 by default, so the engine holds images but no instance: the
figure is the state's, not the engine's). One `fnctl apply` deploys them into a SQLite state; `fnctl state
migrate` copies that state to the PostgreSQL database (timed, and verified by the command). Both states then
describe the same deployment (same store identity, same revisions), and a no-op `fnctl apply` runs against
each, --runs times, interleaved A/B so that a noisy moment slows both alike, next to `fnctl --version` (the
interpreter's start-up). Prints the medians, the PostgreSQL/SQLite ratio and the load average.

The Swarm figures are benchmarks/bench_swarm.py's.

Section "gateways" (issue 19, item 2; no Docker): --gateways processes follow the routing table of one
PostgreSQL state as `fnctl serve` does (benchmarks/scale_gateways.py), half of them by LISTEN/NOTIFY with the
poll as fallback (as built), the other half by the poll alone (the baseline, at the same moments); --changes
route changes are written one at a time and each is timed until every gateway of a kind has it. Then
--gateways candidates run the leadership; the leader is killed with SIGKILL --takeovers times and the time
until another leads is measured.

Section "gateway-pg" (issue 19, item 1; Docker): one no-op function's gateway load (/invoke and an HTTP
Trigger, wrk -c8) through a `fnctl serve` on a SQLite state and one on a PostgreSQL state, both loaded at
once in each round: requests/s, CPU per request of the gateway and of the PostgreSQL server, the ratio of the
medians and each round's (benchmarks/scale_gateway_pg.py).

Targets (issue 19): no-op apply of 100 functions on PostgreSQL <= 1.5x the SQLite time; a routing change
seen by every gateway p99 <= 1 s; leader takeover after `kill -9` <= 5 s; gateway throughput on PostgreSQL
>= 90 % of the SQLite gateway's.

    .venv/bin/python benchmarks/bench_scale.py [--functions 100] [--runs 5] [--min-instances 0] [--timeout 900]
                                               [--section all|apply|gateways|gateway-pg] [--gateways 3]
                                               [--changes 40] [--takeovers 5] [--rounds 3] [--seconds 3]

Needs a Docker engine, FNCTL_BASE_IMAGE (default fnctl-base:bookworm) and PostgreSQL's server binaries
(scripts/setup.sh installs them). Bounded by --timeout: past it the run stops and cleans up.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_deploy import HANDLER, commit, fnctl_command, interleaved, name_of  # noqa: E402  (beside this script)
from benchcommon import function_manifest, loadavg, remove_project  # noqa: E402
from scale_gateway_pg import gateway_pg_figures, write_project  # noqa: E402
from scale_gateways_driver import gateway_figures  # noqa: E402

from fnctl.state import pg  # noqa: E402

GATEWAY_PROJECTS = {"SQLite": "{project}-gw", "PostgreSQL": "{project}-gwpg"}  # gateway-pg's, one per state


def _timeout(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError("the benchmark ran past --timeout")


def run(root: Path, env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(fnctl_command() + list(args), cwd=root, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise SystemExit(f"fnctl {' '.join(args)} exited {done.returncode}:\n{tail}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--min-instances", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--section", choices=["all", "apply", "gateways", "gateway-pg"], default="all")
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--takeovers", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="gateway-pg: rounds (both gateways loaded at once)")
    parser.add_argument("--seconds", type=int, default=3, help="gateway-pg: of each wrk load")
    args = parser.parse_args()
    n = args.functions

    workdir = Path(tempfile.mkdtemp(prefix="fnctl-bench-scale-"))
    os.chmod(workdir, 0o755)  # the PostgreSQL server runs as its own user and needs to reach its directory
    pgdir = workdir / "pg"
    project = f"bench-{secrets.token_hex(3)}"
    root = workdir / "project"
    base = os.environ | {
        "FNCTL_BASE_IMAGE": os.environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm"),
        "XDG_STATE_HOME": str(workdir / "xdg"),  # PostgreSQL's host-local files (lock, key stamp) land here
        "NO_COLOR": "1",
    }
    sqlite_state = workdir / "state" / "state.db"
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(args.timeout)
    started = False
    try:
        t0 = time.perf_counter()
        url = subprocess.run(
            ["bash", str(REPO / "scripts" / "pg-server.sh"), "start", str(pgdir)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        started = True
        print(f"PostgreSQL server started in {time.perf_counter() - t0:.2f} s (Unix socket, {pgdir})")
        admin = pg.connect(url)
        admin.execute("CREATE DATABASE bench")
        admin.close()
        pg_state = url.replace("postgresql:///postgres?", "postgresql:///bench?", 1)
        if args.section in ("all", "gateways"):
            gateway_figures(f"{pg_state}#{workdir / 'anchor' / 'state'}", args.gateways, args.changes, args.takeovers)
        if args.section in ("all", "gateway-pg"):
            gateway_pg(workdir, base, url, project, pgdir, args)
        if args.section in ("gateways", "gateway-pg"):
            return

        (root / "manifests").mkdir(parents=True)
        (root / "fnctl.toml").write_text(f'[project]\nname = "{project}"\nmanifests = ["manifests"]\n')
        for i in range(n):
            source = root / "functions" / name_of(i)
            source.mkdir(parents=True)
            (source / "main.py").write_text(HANDLER.format(name=name_of(i), version=1))
        scaling = {"minInstances": args.min_instances, "maxInstances": 2}
        docs = "".join(function_manifest(name_of(i), env={"GREETING": "hello"}, scaling=scaling) for i in range(n))
        (root / "manifests" / "functions.yaml").write_text(docs)
        subprocess.run(["git", "init", "-q"], cwd=root, check=True, capture_output=True)
        commit(root, "bench")

        on_sqlite = base | {"FNCTL_STATE": str(sqlite_state)}
        on_pg = base | {"FNCTL_STATE": pg_state}
        setup = run(root, on_sqlite, "apply", "--lock-timeout", "5")
        print(f"setup: {n} functions deployed into SQLite by one `fnctl apply` in {setup:.1f} s")
        moved = run(root, base, "state", "migrate", "--from", f"sqlite:{sqlite_state}", "--to", pg_state)
        print(f"`fnctl state migrate` SQLite -> PostgreSQL (copy and verify): {moved:.2f} s")

        for _ in range(2):  # warm the file cache, the bytecode and the server's buffers
            run(root, on_sqlite, "apply"), run(root, on_pg, "apply")
        loads = [loadavg()]
        medians = interleaved(
            args.runs,
            {
                "version": lambda: run(root, base, "--version"),
                "apply (SQLite)": lambda: run(root, on_sqlite, "apply"),
                "apply (PostgreSQL)": lambda: run(root, on_pg, "apply"),
            },
        )
        loads.append(loadavg())
        ratio = medians["apply (PostgreSQL)"] / medians["apply (SQLite)"]
        print(f"\nno-op `fnctl apply`, {n} functions, whole processes, medians of {args.runs} interleaved runs:")
        for name, value in medians.items():
            print(f"  {name:<20} {value:6.3f} s")
        print(f"  PostgreSQL / SQLite  {ratio:6.2f}x   (target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})")
        print(f"load average before / after: {loads[0]} / {loads[1]}; cores: {os.cpu_count()}")
    finally:
        signal.alarm(0)
        try:
            remove_project(project)
            for name in GATEWAY_PROJECTS.values():
                remove_project(name.format(project=project))
        finally:
            if started:
                subprocess.run(["bash", str(REPO / "scripts" / "pg-server.sh"), "stop", str(pgdir)], check=False)
            shutil.rmtree(workdir, ignore_errors=True)


def gateway_pg(
    workdir: Path, base: dict[str, str], url: str, project: str, pgdir: Path, args: argparse.Namespace
) -> None:
    """The no-op function deployed by one project into a SQLite state and by another into a database of its
    own, and the gateway load on each (scale_gateway_pg)."""
    admin = pg.connect(url)
    admin.execute("CREATE DATABASE gwbench")
    admin.close()
    states = {
        "SQLite": str(workdir / "gateway-state" / "state.db"),
        "PostgreSQL": url.replace("postgresql:///postgres?", "postgresql:///gwbench?", 1),
    }
    roots, envs = {}, {}
    for backend, state in states.items():
        roots[backend] = workdir / f"gateway-project-{backend.lower()}"
        envs[backend] = base | {"FNCTL_STATE": state}
        write_project(roots[backend], GATEWAY_PROJECTS[backend].format(project=project))
        subprocess.run(["git", "init", "-q"], cwd=roots[backend], check=True, capture_output=True)
        commit(roots[backend], "bench")
        setup = run(roots[backend], envs[backend], "apply", "--lock-timeout", "5")
        print(f"\ngateway-pg: the no-op function deployed (2 instances) into {backend} in {setup:.1f} s")
    gateway_pg_figures(roots, envs, pgdir, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
