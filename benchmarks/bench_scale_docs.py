"""The document store on PostgreSQL beside SQLite, in the same run (issue 19, item 1): service-level inserts
(`DataPlane.insert`: rights, schema, change log, one write transaction each — what a REST POST and a
`context.db[...].insert` do under the HTTP and socket layers) and gets (`DataPlane.get`), one at a time, and
inserts from 8 threads at once (each its own connection on PostgreSQL, the writers' advisory lock
serialising them). Interleaved A/B rounds, medians, with the load average they ran under.

PostgreSQL is a throwaway server (scripts/pg-server.sh, Unix socket; it runs with fsync=off like the tests',
so SQLite runs with synchronous=OFF here for a like-for-like figure, and with its default NORMAL beside it).

    .venv/bin/python benchmarks/bench_scale_docs.py [--rounds 5] [--ops 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from fnctl.data.caller import Caller
from fnctl.data.plane import DataPlane
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore, pg

ROOT = Path(__file__).resolve().parent.parent
OP = Caller.operator("bench", "acme")
SPEC = {"schema": {"type": "object"}, "indexes": [{"fields": ["n"]}]}


def plane_at(location: docstore.Location) -> DataPlane:
    plane = DataPlane(docstore.connect(location), lambda: ())
    plane.sync_collections([parse_collection("bench", SPEC)], prune=False, force=False)
    return plane


def inserts(plane: DataPlane, ops: int) -> tuple[float, list[str]]:
    ids = []
    started = time.perf_counter()
    for i in range(ops):
        ids.append(plane.insert(OP, "bench", {"n": i, "name": f"doc {i}", "tags": ["a", "b"]}).id)
    return ops / (time.perf_counter() - started), ids


def gets(plane: DataPlane, ids: list[str]) -> float:
    samples = []
    for id_ in ids:
        started = time.perf_counter()
        plane.get(OP, "bench", id_)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def threaded_inserts(plane: DataPlane, ops: int, threads: int = 8) -> float:
    def work() -> None:
        for i in range(ops // threads):
            plane.insert(OP, "bench", {"n": i})

    workers = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return (ops // threads * threads) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-docs-"))
    server = Path(tempfile.mkdtemp(prefix="fnctl-pg-bench-"))
    script = ROOT / "scripts" / "pg-server.sh"
    url = subprocess.run(["bash", str(script), "start", str(server)], check=True, capture_output=True, text=True)
    base = url.stdout.strip()
    try:
        admin = pg.connect(base)
        results: dict[str, dict[str, list[float]]] = {}
        for r in range(args.rounds):
            admin.execute(f"DROP DATABASE IF EXISTS bench{r}")
            admin.execute(f"CREATE DATABASE bench{r}")
            backends: dict[str, docstore.Location] = {
                "sqlite (synchronous=NORMAL)": work / f"normal{r}.data.db",
                "sqlite (synchronous=OFF)": work / f"off{r}.data.db",
                "postgresql": base.replace("/postgres?", f"/bench{r}?", 1),
            }
            for name, location in backends.items():  # interleaved: each round runs every backend once
                plane = plane_at(location)
                if "OFF" in name:
                    plane.store._db().execute("PRAGMA synchronous = OFF")  # noqa: SLF001 (one thread: the bench's)
                per_s, ids = inserts(plane, args.ops)
                got = gets(plane, ids)
                many = threaded_inserts(plane, args.ops)
                plane.store.close()
                into = results.setdefault(name, {"inserts/s": [], "get p50 µs": [], "8-thread inserts/s": []})
                into["inserts/s"].append(per_s)
                into["get p50 µs"].append(got)
                into["8-thread inserts/s"].append(many)
        admin.close()
        print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}  cores: {os.cpu_count()}")
        print(f"medians of {args.rounds} interleaved rounds, {args.ops} operations each")
        baseline = {k: statistics.median(v) for k, v in results["sqlite (synchronous=NORMAL)"].items()}
        for name, figures in results.items():
            cells = []
            for key, values in figures.items():
                m = statistics.median(values)
                cells.append(f"{key} {m:,.0f} (×{m / baseline[key]:.2f})")
            print(f"  {name:<28} " + "  ".join(cells))
        print("  (×: against sqlite synchronous=NORMAL, the default; for get p50 lower is better)")
    finally:
        subprocess.run(["bash", str(script), "stop", str(server)], check=False, capture_output=True)
        shutil.rmtree(server, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
