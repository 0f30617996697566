"""Speed of the data plane, each figure beside a baseline measured in the same run (medians; these machines are
noisy, so read the ratios), each with the issue's target:

- import of 100,000 documents with `fnctl data import` (check-first, the default, and one pass) — target ≤ 10 s;
  baseline: raw sqlite3 `executemany` of the same JSON in one transaction
- service-level inserts (`DataPlane.insert`, one transaction each: rights, schema, change log) vs raw sqlite3
  inserts of the same JSON, one transaction each (WAL, synchronous=NORMAL)
- a procedure of 10 reads + 10 writes through the service (one Txn, one commit) — target p50 ≤ 5 ms;
  baseline: the same 10 reads + 10 writes as raw sqlite3 in one transaction
- through a real `fnctl serve`: REST GET of one document, p50 (sequential keep-alive client) — target ≤ 1 ms,
  and throughput (wrk) beside `/healthz`'s — target ≥ 50 %; REST inserts/s (wrk POST) — target ≥ 3,000/s,
  beside raw sqlite3 inserts/s; medians of --rounds-rest interleaved rounds (GET, /healthz, POST, raw
  sqlite3), with the load average they ran under; with --against OLD_TREE, a second gateway running an older
  checkout's code (PYTHONPATH=OLD_TREE) takes the same inserts in each round: its inserts/s and CPU per insert
  beside this code's (e.g. `git worktree add /tmp/old main` for the change at hand)

- through a real `fnctl serve` and deployed containers (FNCTL_BASE_IMAGE, default fnctl-base:bookworm):
  `context.db[...].get` from a warm handler, p50 timed inside the handler — target ≤ 0.3 ms; baseline: a bare
  `call` frame round trip (a method the broker refuses at once, from the frame's read callback: the same
  frames and socket, no database), whose p50/p99 are issue 18's sync `context.call` figures (≤ 0.15 ms /
  ≤ 1 ms under the default CPU quota); the same from an async handler (`await context.acall`, ≤ 0.1 ms); and 50 concurrent procedures moving money between 20 accounts for --transfer-seconds (default
  30): the total before and after, transfers committed, conflicts retried (handler runs minus answers), 409s,
  and none lost (the change log holds two writes per committed transfer)

Needs wrk and a Docker engine. Every container and image of the handler project is removed afterwards.

    .venv/bin/python benchmarks/bench_data.py [--docs 100000] [--seconds 5] [--transfer-seconds 30]
    .venv/bin/python benchmarks/bench_data.py --only rest --against /tmp/old [--rounds-rest 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from benchcommon import fnctl_ok, free_port, post_lua, process_cpu, remove_project, serve, stop_processes, wrk

from fnctl.data.caller import Caller
from fnctl.data.plane import DataPlane
from fnctl.manifest.model import parse_collection
from fnctl.state import docstore

SCHEMA = {
    "type": "object",
    "required": ["customer", "total"],
    "properties": {
        "customer": {"type": "string"},
        "total": {"type": "number"},
        "items": {"type": "array", "items": {"type": "object"}},
    },
}
SPEC = {"schema": SCHEMA, "indexes": [{"fields": ["customer"]}]}
MANIFESTS = """apiVersion: fnctl/v1
kind: Collection
metadata: {name: bench}
spec:
  schema: {type: object, required: [customer, total], properties: {customer: {type: string}, total: {type: number}}}
  indexes: [{fields: [customer]}]
---
apiVersion: fnctl/v1
kind: Policy
metadata: {name: bench}
spec:
  roles:
    bench: {read: [bench], write: [bench]}
"""


def doc(i: int) -> dict[str, object]:
    return {"customer": f"c{i % 100}", "total": i, "items": [{"sku": "a", "qty": 1, "price": 2.5}]}


def line(target: str, figure: str, baseline: str, ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("  [meets target]" if ok else "  [MISSES target]")
    print(f"{figure:<58} | baseline: {baseline:<42} | target: {target}{verdict}", flush=True)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def p99_ms(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] * 1000


# ---- in-process ------------------------------------------------------------------------------------------


def plane_at(path: Path) -> DataPlane:
    store = docstore.connect(path)
    plane = DataPlane(store, lambda: ())
    plane.sync_collections([parse_collection("bench", SPEC)], prune=False, force=False)
    return plane


def raw_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE docs (tenant TEXT, id TEXT, version INTEGER, data TEXT, PRIMARY KEY (tenant, id))")
    return db


def bench_import(work: Path, count: int) -> None:
    source = work / "import.ndjson"
    with source.open("w", encoding="utf-8") as out:
        for i in range(count):
            out.write(json.dumps({"id": f"d{i:07d}", "data": doc(i)}) + "\n")
    db = raw_db(work / "raw-import.db")
    started = time.perf_counter()
    db.execute("BEGIN")
    db.executemany("INSERT INTO docs VALUES ('', ?, 1, ?)", ((f"d{i:07d}", json.dumps(doc(i))) for i in range(count)))
    db.execute("COMMIT")
    raw = time.perf_counter() - started
    db.close()
    times = {}
    for mode in ("--check-first", "--no-check-first"):
        state = work / f"import{mode}" / "state.db"
        state.parent.mkdir()
        plane_at(docstore.data_path(state)).store.close()
        (work / "fnctl.toml").write_text('[project]\nname = "benchdata"\n', encoding="utf-8")
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "fnctl", "data", "import", "bench", str(source), mode],
            cwd=work,
            env={**os.environ, "FNCTL_STATE": str(state)},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        times[mode] = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"fnctl data import failed: {done.stderr}")
    for mode, seconds in times.items():
        line(
            "≤ 10 s",
            f"import {count:,} docs (fnctl data import {mode}): {seconds:.1f} s",
            f"raw sqlite3 executemany {raw:.2f} s ({seconds / raw:.0f}x)",
            seconds <= 10,
        )


def bench_inserts(work: Path, count: int) -> float:
    plane = plane_at(work / "inserts.data.db")
    operator = Caller.operator("bench")
    started = time.perf_counter()
    for i in range(count):
        plane.insert(operator, "bench", doc(i))
    service = count / (time.perf_counter() - started)
    db = raw_db(work / "raw-inserts.db")
    started = time.perf_counter()
    for i in range(count):
        db.execute("INSERT INTO docs VALUES ('', ?, 1, ?)", (f"r{i}", json.dumps(doc(i))))  # autocommit: one txn each
    raw = count / (time.perf_counter() - started)
    line(
        "(none: the price of the service)",
        f"service inserts (DataPlane.insert): {service:,.0f}/s",
        f"raw sqlite3 one txn each {raw:,.0f}/s ({service / raw:.0%})",
    )
    plane.store.close()
    db.close()
    return raw


def bench_procedure(work: Path, rounds: int) -> None:
    plane = plane_at(work / "procedure.data.db")
    operator = Caller.operator("bench")
    for i in range(20):
        plane.insert(operator, "bench", {"customer": "a", "total": 100}, id=f"acct{i}")
    samples = []
    for r in range(rounds):
        started = time.perf_counter()
        txn = plane.transaction(operator)
        for i in range(10):
            txn.get("bench", f"acct{(r + i) % 20}")
        for i in range(10):
            txn.patch("bench", f"acct{(r + i + 10) % 20}", {"total": r})
        txn.commit()
        samples.append(time.perf_counter() - started)
    db = raw_db(work / "raw-procedure.db")
    for i in range(20):
        db.execute("INSERT INTO docs VALUES ('', ?, 1, ?)", (f"acct{i}", json.dumps({"customer": "a", "total": 100})))
    raw = []
    for r in range(rounds):
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        for i in range(10):
            db.execute(
                "SELECT version, data FROM docs WHERE tenant = '' AND id = ?", (f"acct{(r + i) % 20}",)
            ).fetchone()
        for i in range(10):
            db.execute(
                "UPDATE docs SET version = version + 1, data = ? WHERE tenant = '' AND id = ?",
                (json.dumps({"customer": "a", "total": r}), f"acct{(r + i + 10) % 20}"),
            )
        db.execute("COMMIT")
        raw.append(time.perf_counter() - started)
    p50 = median_ms(samples)
    line(
        "p50 ≤ 5 ms",
        f"procedure 10 reads + 10 writes (service): p50 {p50:.2f} ms",
        f"raw sqlite3 same in one txn p50 {median_ms(raw):.2f} ms",
        p50 <= 5,
    )
    plane.store.close()
    db.close()


# ---- through fnctl serve ---------------------------------------------------------------------------------


def wrk_cpu(pid: int, port: int, path: str, script: Path, seconds: int) -> tuple[float, int, float]:
    """`wrk -t1 -c8`: (requests/s, non-2xx + socket errors), and the gateway's CPU per request in µs (what the load does not change much)."""
    before = process_cpu(pid)
    run = wrk(port, path, script, seconds=seconds)
    return run.rps, run.errors, (process_cpu(pid) - before) * 1e6 / max(1.0, run.rps * seconds)


def raw_inserts_per_second(work: Path, count: int) -> float:
    """Raw sqlite3 inserts of the bench's JSON, one transaction each (WAL, synchronous=NORMAL): the baseline
    of the inserts' figures, measured again beside each round."""
    path = work / f"raw-round-{time.monotonic_ns()}.db"
    db = raw_db(path)
    body = json.dumps(doc(1))
    started = time.perf_counter()
    for i in range(count):
        db.execute("INSERT INTO docs VALUES ('', ?, 1, ?)", (f"r{i}", body))
    rate = count / (time.perf_counter() - started)
    db.close()
    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    return rate


def serve_project(root: Path, code: Path | None = None) -> tuple[subprocess.Popen[bytes], int, str]:
    """A project with the bench collection, an API key and one document, served by `fnctl serve` (of the
    source tree `code` when given: an older checkout, for a baseline); (the gateway, its port, the key)."""
    (root / "manifests").mkdir(parents=True)
    (root / "fnctl.toml").write_text('[project]\nname = "benchdata-serve"\nmanifests = ["manifests"]\n')
    (root / "manifests" / "bench.yaml").write_text(MANIFESTS)
    env = {**os.environ, "FNCTL_STATE": str(root / "state" / "state.db")}
    if code is not None:
        env["PYTHONPATH"] = str(code)

    def fnctl(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "fnctl", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"fnctl {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    fnctl("apply")
    key = fnctl("keys", "create", "bench", "--role", "bench").strip()
    fnctl("data", "put", "bench", "one", "-d", json.dumps({"customer": "c", "total": 1}))
    port = free_port()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "fnctl", "serve", "--address", f"127.0.0.1:{port}"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return gateway, port, key
        except OSError:
            if time.monotonic() > deadline:
                gateway.kill()
                raise SystemExit("fnctl serve did not listen within 30 s") from None
            time.sleep(0.05)


def post_script(path: Path, key: str) -> Path:
    path.write_text(post_lua({"customer": "c", "total": 1}, key))
    return path


def bench_rest(work: Path, seconds: int, raw_inserts: float, rounds: int = 3, against: Path | None = None) -> None:
    root = work / "serve"
    gateway, port, key = serve_project(root)
    old = None
    try:
        # the baseline's gateway (an older checkout of the code), its inserts interleaved with these
        old = serve_project(work / "serve-old", against) if against is not None else None
        headers = {"Authorization": f"Bearer {key}"}
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        samples = []
        for i in range(2200):
            started = time.perf_counter()
            connection.request("GET", "/v1/collections/bench/docs/one", headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"GET answered {response.status}")
            if i >= 200:
                samples.append(time.perf_counter() - started)
        health = []
        for i in range(2200):
            started = time.perf_counter()
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            if i >= 200:
                health.append(time.perf_counter() - started)
        connection.close()
        p50 = median_ms(samples)
        line(
            "p50 ≤ 1 ms",
            f"REST GET one document: p50 {p50:.2f} ms",
            f"/healthz p50 {median_ms(health):.2f} ms",
            p50 <= 1,
        )
        get_lua, health_lua = root / "get.lua", root / "health.lua"
        get_lua.write_text(f'wrk.headers["Authorization"] = "Bearer {key}"\n')
        health_lua.write_text("")
        post_lua = post_script(root / "post.lua", key)
        old_lua = post_script(root / "post-old.lua", old[2]) if old is not None else None
        olds: list[tuple[float, float]] = []  # the baseline's (inserts/s, CPU µs per insert) per round
        # Interleaved rounds, each figure the median of its rounds beside its baseline's: on a shared machine
        # one round of each, minutes apart, compares the load more than the code.
        gets, healths, posts, raws, loads = [], [], [], [], []
        cpu: dict[str, list[float]] = {"get": [], "health": [], "post": []}
        errors = {"get": 0, "post": 0}
        for _ in range(rounds):
            loads.append(os.getloadavg()[0])
            get_rps, get_errors, get_cpu = wrk_cpu(
                gateway.pid, port, "/v1/collections/bench/docs/one", get_lua, seconds
            )
            health_rps, _, health_cpu = wrk_cpu(gateway.pid, port, "/healthz", health_lua, seconds)
            post_rps, post_errors, post_cpu = wrk_cpu(
                gateway.pid, port, "/v1/collections/bench/docs", post_lua, seconds
            )
            gets.append(get_rps)
            healths.append(health_rps)
            posts.append(post_rps)
            raws.append(raw_inserts_per_second(work, 2000))
            if old is not None and old_lua is not None:
                old_rps, _, old_cpu = wrk_cpu(old[0].pid, old[1], "/v1/collections/bench/docs", old_lua, seconds)
                olds.append((old_rps, old_cpu))
            errors["get"] += get_errors
            errors["post"] += post_errors
            for name, used in (("get", get_cpu), ("health", health_cpu), ("post", post_cpu)):
                cpu[name].append(used)
        get_rps, health_rps = statistics.median(gets), statistics.median(healths)
        ratios = sorted(g / h for g, h in zip(gets, healths, strict=True))
        load = f"load {min(loads):.1f}-{max(loads):.1f}"
        line(
            "≥ 50 % of /healthz",
            f"REST GET throughput: {get_rps:,.0f}/s ({errors['get']} errors)",
            f"/healthz {health_rps:,.0f}/s ({get_rps / health_rps:.0%}; rounds {', '.join(f'{r:.0%}' for r in ratios)})",
            get_rps >= health_rps / 2,
        )
        post_rps, raw_rps = statistics.median(posts), statistics.median(raws)
        line(
            "≥ 3,000/s",
            f"REST inserts: {post_rps:,.0f} docs/s ({errors['post']} errors)",
            f"raw sqlite3 one txn each {raw_rps:,.0f}/s ({post_rps / raw_rps:.0%})",
            post_rps >= 3000,
        )
        get_cpu, health_cpu, post_cpu = (statistics.median(cpu[name]) for name in ("get", "health", "post"))
        print(
            f"  (medians of {rounds} interleaved rounds of {seconds} s; {load}; in-process raw before: "
            f"{raw_inserts:,.0f}/s)\n  gateway CPU per request (the figures' price, which the load changes "
            f"little): GET {get_cpu:.0f} µs, /healthz {health_cpu:.0f} µs ({get_cpu / health_cpu:.1f}x), "
            f"insert {post_cpu:.0f} µs (3,000/s needs ≤ 333 µs of a whole core)",
            flush=True,
        )
        if olds:
            old_rps, old_cpu = statistics.median(r for r, _ in olds), statistics.median(c for _, c in olds)
            print(
                f"  the same inserts by the code of {against}, interleaved: {old_rps:,.0f}/s, gateway CPU "
                f"{old_cpu:.0f} µs per insert (this code: {post_rps / old_rps:.2f}x the inserts/s, "
                f"{post_cpu / old_cpu:.2f}x the CPU)",
                flush=True,
            )
    finally:
        stop_processes([gateway], 20)
        if old is not None:
            stop_processes([old[0]], 20)


# ---- through fnctl serve, with handlers in containers ----------------------------------------------------

HANDLER = """\
import time

RUNS = 0


def handler(event, context):
    op = event.get("op")
    if op == "probe":
        return {"ok": True}
    if op == "get":  # warm: the first rounds are not kept
        accounts = context.db["accounts"]
        gets, bare = [], []
        for i in range(event["n"] + 50):
            started = time.perf_counter()
            accounts.get("a0")
            took = time.perf_counter() - started
            started = time.perf_counter()
            try:
                context.call("bench.ping")
            except Exception:  # refused by the broker: a round trip of frames and nothing else
                pass
            if i >= 50:
                gets.append(took)
                bare.append(time.perf_counter() - started)
        return {"gets": gets, "bare": bare}
    raise ValueError(op)


# Async: its invocations share one process and event loop (a synchronous handler's run in worker processes,
# one each: 50 of them would not fit in 128Mi), so RUNS counts every run.
async def ahandler(event, context):
    global RUNS
    op = event.get("op")
    if op == "probe":
        return {"ok": True}
    if op == "runs":
        return {"runs": RUNS}
    if op == "get":
        accounts = context.db["accounts"]
        gets, bare = [], []
        for i in range(event["n"] + 50):
            started = time.perf_counter()
            await accounts.aget("a0")
            took = time.perf_counter() - started
            started = time.perf_counter()
            try:
                await context.acall("bench.ping")
            except Exception:
                pass
            if i >= 50:
                gets.append(took)
                bare.append(time.perf_counter() - started)
        return {"gets": gets, "bare": bare}
    if op == "transfer":
        RUNS += 1
        accounts = context.db["accounts"]
        src, dst = await accounts.aget(event["from"]), await accounts.aget(event["to"])
        await accounts.aupdate(src["id"], {"balance": src["data"]["balance"] - event["amount"]})
        await accounts.aupdate(dst["id"], {"balance": dst["data"]["balance"] + event["amount"]})
        return {"moved": event["amount"]}
    raise ValueError(op)
"""

HANDLER_MANIFESTS = """apiVersion: fnctl/v1
kind: Collection
metadata: {{name: accounts}}
spec:
  schema: {{type: object, required: [balance], properties: {{balance: {{type: integer}}}}}}
---
apiVersion: fnctl/v1
kind: Policy
metadata: {{name: bank}}
spec:
  roles:
    clerk: {{read: [accounts], write: [accounts]}}
---
apiVersion: fnctl/v1
kind: Function
metadata: {{name: reader}}
spec:
  runtime: python3.11
  source: ../functions/bank
  handler: main.handler
  limits: {{timeout: 30s, memory: 128Mi, dbOperations: 100000}}
  scaling: {{minInstances: 1, maxInstances: 1, concurrency: 4}}
  access: {{roles: [clerk]}}
  healthCheck:
    - event: {{op: probe}}
---
apiVersion: fnctl/v1
kind: Function
metadata: {{name: areader}}
spec:
  runtime: python3.11
  source: ../functions/bank
  handler: main.ahandler
  limits: {{timeout: 30s, memory: 128Mi, dbOperations: 100000}}
  scaling: {{minInstances: 1, maxInstances: 1, concurrency: 4}}
  access: {{roles: [clerk]}}
  healthCheck:
    - event: {{op: probe}}
---
apiVersion: fnctl/v1
kind: Function
metadata: {{name: transfer}}
spec:
  runtime: python3.11
  source: ../functions/bank
  handler: main.ahandler
  transaction: {{retries: {retries}}}
  limits: {{timeout: 30s, memory: 128Mi}}
  scaling: {{minInstances: 1, maxInstances: 1, concurrency: 50}}
  access: {{roles: [clerk]}}
  healthCheck:
    - event: {{op: probe}}
"""


def _post(
    port: int, key: str, path: str, body: object, connection: http.client.HTTPConnection | None = None
) -> tuple[int, object]:
    own = connection is None
    conn = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        if own:
            conn.close()


def _balances(port: int, key: str) -> dict[str, int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "GET", "/v1/collections/accounts/docs?limit=1000", headers={"Authorization": f"Bearer {key}"}
        )
        page = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    return {d["id"]: d["data"]["balance"] for d in page["documents"]}


def bench_handlers(work: Path, transfer_seconds: int, rounds: int, retries: int) -> None:
    import secrets
    import threading

    root = work / "handlers"
    name = f"bd-{secrets.token_hex(4)}"
    port = free_port()
    (root / "manifests").mkdir(parents=True)
    (root / "functions" / "bank").mkdir(parents=True)
    (root / "functions" / "bank" / "main.py").write_text(HANDLER)
    (root / "fnctl.toml").write_text(
        f'[project]\nname = "{name}"\nmanifests = ["manifests"]\n\n[gateway]\naddress = "127.0.0.1:{port}"\n'
    )
    (root / "manifests" / "bank.yaml").write_text(HANDLER_MANIFESTS.format(retries=retries))
    env = {
        **os.environ,
        "FNCTL_STATE": str(root / "state" / "state.db"),
        "FNCTL_BASE_IMAGE": os.environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm"),
    }

    gateway = None
    try:
        fnctl_ok(root, env, "apply")
        key = fnctl_ok(root, env, "keys", "create", "bench", "--role", "clerk").strip()
        gateway = serve(root, env, port)
        accounts = [
            {"op": "insert", "collection": "accounts", "id": f"a{i}", "document": {"balance": 1000}} for i in range(20)
        ]
        status, body = _post(port, key, "/v1/batch", {"operations": accounts})
        if status != 200:
            raise SystemExit(f"seeding the accounts answered {status}: {body}")

        status, body = _post(port, key, "/invoke/reader", {"op": "get", "n": rounds})
        if status != 200 or not isinstance(body, dict):
            raise SystemExit(f"the context.db round answered {status}: {body}")
        p50, bare = median_ms(body["gets"]), median_ms(body["bare"])
        line(
            "p50 ≤ 0.3 ms",
            f"context.db get, warm handler: p50 {p50:.3f} ms",
            f"bare call frame round trip p50 {bare:.3f} ms",
            p50 <= 0.3,
        )
        line(
            "call p50 ≤ 0.15 ms, p99 ≤ 1 ms",
            f"context.call (sync handler, default CPU quota): p50 {bare:.3f} ms, p99 {p99_ms(body['bare']):.3f} ms",
            "(the bare call above)",
            bare <= 0.15 and p99_ms(body["bare"]) <= 1.0,
        )
        status, body = _post(port, key, "/invoke/areader", {"op": "get", "n": rounds})
        if status != 200 or not isinstance(body, dict):
            raise SystemExit(f"the async context.db round answered {status}: {body}")
        p50, bare = median_ms(body["gets"]), median_ms(body["bare"])
        line(
            "acall p50 ≤ 0.1 ms",
            f"context.acall (async handler): p50 {bare:.3f} ms, p99 {p99_ms(body['bare']):.3f} ms",
            f"await db.aget p50 {p50:.3f} ms",
            bare <= 0.1,
        )

        before = _balances(port, key)
        statuses: dict[int, int] = {}
        lock = threading.Lock()
        stop = time.monotonic() + transfer_seconds

        def worker(seed: int) -> None:
            import random

            rng = random.Random(seed)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            while time.monotonic() < stop:
                a, b = rng.sample(range(20), 2)
                try:
                    status, _ = _post(
                        port,
                        key,
                        "/invoke/transfer",
                        {"op": "transfer", "from": f"a{a}", "to": f"a{b}", "amount": rng.randint(1, 10)},
                        connection,
                    )
                except (OSError, http.client.HTTPException):
                    status = -1
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
            connection.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        after = _balances(port, key)
        status, runs = _post(port, key, "/invoke/transfer", {"op": "runs"})
        handler_runs = int(runs["runs"]) if isinstance(runs, dict) else -1
        committed, refused = statuses.get(200, 0), statuses.get(409, 0)
        answered = sum(statuses.values())
        data = docstore.connect(docstore.data_path(root / "state" / "state.db"))
        try:
            logged = len([c for c in data.changes(0, "", ["accounts"], 10_000_000) if c.function == "transfer"])
        finally:
            data.close()
        others = {k: v for k, v in statuses.items() if k not in (200, 409)}
        intact = sum(before.values()) == sum(after.values()) == 20_000 and not others and logged == 2 * committed
        line(
            "total unchanged, none lost",
            f"50 concurrent transfers {transfer_seconds} s: total {sum(before.values())} → {sum(after.values())}",
            f"{committed} committed ({committed / transfer_seconds:,.0f}/s), {handler_runs - answered} conflicts "
            f"retried, {refused} answered 409, other answers {others or 'none'}, change log {logged} writes "
            f"(= 2 x committed: {logged == 2 * committed})",
            intact,
        )
    finally:
        if gateway is not None:
            stop_processes([gateway], 30)
        remove_project(name)


def _timeout(signum: int, frame: FrameType | None) -> None:
    raise SystemExit("bench_data: timed out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--docs", type=int, default=100_000, help="documents to import")
    parser.add_argument("--inserts", type=int, default=5_000, help="service-level inserts")
    parser.add_argument("--rounds", type=int, default=1_000, help="procedures")
    parser.add_argument("--seconds", type=int, default=5, help="each wrk round")
    parser.add_argument("--rounds-rest", type=int, default=3, help="interleaved wrk rounds (GET, /healthz, POST)")
    parser.add_argument("--transfer-seconds", type=int, default=30, help="the concurrent transfers (at most 30)")
    parser.add_argument("--get-rounds", type=int, default=2000, help="context.db gets timed in the handler")
    parser.add_argument("--retries", type=int, default=10, help="the transfer procedure's transaction retries")
    parser.add_argument(
        "--against",
        type=Path,
        help="a source tree (an older checkout) whose gateway's inserts are interleaved as a baseline",
    )
    parser.add_argument("--only", choices=("all", "local", "rest", "handlers"), default="all")
    parser.add_argument("--timeout", type=int, default=900, help="give up after this many seconds")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(args.timeout)
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        raw = 0.0
        if args.only in ("all", "local"):
            bench_import(work, args.docs)
        if args.only in ("all", "local", "rest"):
            raw = bench_inserts(work, args.inserts)
        if args.only in ("all", "local"):
            bench_procedure(work, args.rounds)
        if args.only in ("all", "rest"):
            if shutil.which("wrk") is None:
                print("wrk is not installed: REST figures skipped (apt-get install -y wrk)")
            else:
                bench_rest(work, args.seconds, raw, args.rounds_rest, args.against)
        if args.only in ("all", "handlers"):
            bench_handlers(work, min(30, max(1, args.transfer_seconds)), args.get_rounds, args.retries)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
