"""The document store on PostgreSQL beside SQLite, in the same run (issue 19, item 1): service-level inserts
(`DataPlane.insert`: rights, schema, change log, one write transaction each — what a REST POST and a
`context.db[...].insert` do under the HTTP and socket layers) and gets (`DataPlane.get`), one at a time, and
inserts from 8 threads at once (each its own connection on PostgreSQL, the writers' advisory lock
serialising them). Then the real path: REST inserts (POST) and gets through two `fnctl serve` processes, one on
SQLite and one on PostgreSQL, side by side: a keep-alive client one request at a time, and `wrk -c8` POSTs.
Interleaved A/B rounds, medians, with the load average they ran under.

PostgreSQL is a throwaway server (scripts/pg-server.sh, Unix socket; it runs with fsync=off like the tests',
so SQLite runs with synchronous=OFF here for a like-for-like figure, and with its default NORMAL beside it).

    .venv/bin/python benchmarks/bench_scale_docs.py [--rounds 5] [--ops 300] [--rest-rounds 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fnctl.data.caller import Caller
from fnctl.data.plane import DataPlane
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore, pg, pgopener

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import MANIFESTS  # noqa: E402  (beside this script)
from benchcommon import fnctl_ok, free_port, post_lua, serve, wrk  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pgopener.install()  # a long-running program, as `fnctl serve`: PostgreSQL's opener whole
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


def round_trips(url: str, work: Path) -> str:
    """Round trips of one insert (a generated id, as a POST) and one get on PostgreSQL, counted in libpq's protocol trace (each ends with
    the server's ReadyForQuery): what the load on a shared machine cannot blur."""
    plane = plane_at(url)
    connection = plane.store._db()._conn  # type: ignore[attr-defined]  # noqa: SLF001 (the PgConn's psycopg one)
    plane.insert(OP, "bench", {"n": 1}, id="traced")  # collections loaded: nothing first-time left to trace
    plane.get(OP, "bench", "traced")
    counts = []
    actions: tuple[Callable[[], object], ...] = (
        lambda: plane.insert(OP, "bench", {"n": 2}),
        lambda: plane.get(OP, "bench", "traced"),
    )
    for action in actions:
        trace = work / "trace.txt"
        with trace.open("w") as out:
            connection.pgconn.trace(out.fileno())
            action()
            connection.pgconn.untrace()
        counts.append(sum("\tReadyForQuery" in line for line in trace.read_text().splitlines()))
    plane.store.close()
    return f"round trips on PostgreSQL: insert {counts[0]}, get {counts[1]}"


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


# ---- the real path: REST through fnctl serve ------------------------------------------------------------


class Gateway:
    """A project whose manifests declare the bench collection and a key's rights, applied to `state`
    (FNCTL_STATE's value), and its `fnctl serve` on a free port."""

    def __init__(self, root: Path, state: str) -> None:
        (root / "manifests").mkdir(parents=True)
        (root / "fnctl.toml").write_text(f'[project]\nname = "{root.name}"\nmanifests = ["manifests"]\n')
        (root / "manifests" / "bench.yaml").write_text(MANIFESTS)
        self.root, self.env = root, {**os.environ, "FNCTL_STATE": state}
        self.fnctl("apply")
        self.key = self.fnctl("keys", "create", "bench", "--role", "bench").strip()
        self.port = free_port()
        flags = ("--address", f"127.0.0.1:{self.port}", "--no-access-log")
        self.process = serve(root, self.env, self.port, *flags, timeout=60, path="/healthz")
        self.headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}

    def fnctl(self, *args: str) -> str:
        return fnctl_ok(self.root, self.env, *args)

    def one_by_one(self, ops: int) -> tuple[float, float]:
        """(inserts/s, GET p50 µs) of a keep-alive client, one request at a time."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        ids, started = [], time.perf_counter()
        for i in range(ops):
            connection.request("POST", "/v1/collections/bench/docs", json.dumps(doc(i)), self.headers)
            response = connection.getresponse()
            body = response.read()
            if response.status != 201:
                raise SystemExit(f"POST answered {response.status}: {body[:200]!r}")
            ids.append(json.loads(body)["id"])
        per_s = ops / (time.perf_counter() - started)
        samples = []
        for id_ in ids:
            started = time.perf_counter()
            connection.request("GET", f"/v1/collections/bench/docs/{id_}", headers=self.headers)
            response = connection.getresponse()
            response.read()
            samples.append(time.perf_counter() - started)
        connection.close()
        return per_s, statistics.median(samples) * 1e6

    def concurrent_posts(self, seconds: int) -> float:
        script = self.root / "post.lua"
        script.write_text(post_lua(doc(1), self.key))
        run = wrk(self.port, "/v1/collections/bench/docs", script, seconds=seconds)
        if run.errors:
            raise SystemExit(f"wrk: {run.errors} failed POSTs")
        return run.rps

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def doc(i: int) -> dict[str, object]:
    return {"customer": f"c{i % 50}", "total": i, "items": [{"sku": "a", "qty": 2}]}


def rest(work: Path, url: str, rounds: int, ops: int, seconds: int) -> dict[str, dict[str, list[float]]]:
    gateways = {
        "sqlite": Gateway(work / "rest-sqlite", str(work / "rest-sqlite" / "state" / "state.db")),
        "postgresql": Gateway(work / "rest-pg", f"{url}#{work / 'rest-pg' / 'anchor' / 'state'}"),
    }
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for _ in range(rounds):
            for name, gateway in gateways.items():  # interleaved, as above
                per_s, p50 = gateway.one_by_one(ops)
                into = results.setdefault(name, {"REST inserts/s": [], "REST get p50 µs": [], "wrk -c8 POST/s": []})
                into["REST inserts/s"].append(per_s)
                into["REST get p50 µs"].append(p50)
                into["wrk -c8 POST/s"].append(gateway.concurrent_posts(seconds))
    finally:
        for gateway in gateways.values():
            gateway.stop()
    return results


def report(results: dict[str, dict[str, list[float]]], baseline_name: str) -> None:
    baseline = {k: statistics.median(v) for k, v in results[baseline_name].items()}
    for name, figures in results.items():
        cells = []
        for key, values in figures.items():
            m = statistics.median(values)
            cells.append(f"{key} {m:,.0f} (×{m / baseline[key]:.2f})")
        print(f"  {name:<28} " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--rest-rounds", type=int, default=3, help="0: no REST rounds")
    parser.add_argument("--seconds", type=int, default=2, help="of each wrk run")
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
        print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}  cores: {os.cpu_count()}")
        print(f"service level: medians of {args.rounds} interleaved rounds, {args.ops} operations each")
        report(results, "sqlite (synchronous=NORMAL)")
        print("  (×: against sqlite synchronous=NORMAL, the default; for get p50 lower is better)", flush=True)
        print("  " + round_trips(base.replace("/postgres?", f"/bench{args.rounds - 1}?", 1), work), flush=True)
        if args.rest_rounds:
            admin.execute("DROP DATABASE IF EXISTS benchrest")
            admin.execute("CREATE DATABASE benchrest")
            served = rest(work, base.replace("/postgres?", "/benchrest?", 1), args.rest_rounds, args.ops, args.seconds)
            print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")
            print(f"through fnctl serve: medians of {args.rest_rounds} interleaved rounds ({args.ops} requests each)")
            report(served, "sqlite")
            print("  (×: against the SQLite gateway in the same rounds)")
        admin.close()
    finally:
        subprocess.run(["bash", str(script), "stop", str(server)], check=False, capture_output=True)
        shutil.rmtree(server, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
