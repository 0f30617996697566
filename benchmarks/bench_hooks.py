"""Data plane II: views and onCommit events, through a real `fnctl serve` and real containers.

Views: a cached view read through the gateway (p50, next to /healthz in the same run: what the gateway itself
costs), and the hit rate of a workload of 100 reads per overlapping write. onCommit: the time from a write's
commit to its handler's run (p50), and N events (default 10,000) delivered with none lost and none twice.
Hooks: a REST insert into a collection with one before-hook (a warm instance that accepts the document), p50,
beside the same insert into a collection without hooks (same schema, same gateway, alternating with it).

    .venv/bin/python benchmarks/bench_hooks.py [--only views|events|hooks] [--events 10000] [--writes 500]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from benchcommon import fnctl_ok, free_port, function_manifest, remove_project, serve, stop_processes

HANDLERS = """\
def summary(event, context):
    docs = context.db["orders"].find({"customer": event["customer"]})["documents"]
    return {"customer": event["customer"], "count": len(docs), "total": sum(d["data"]["total"] for d in docs)}


def accept(event, context):
    return None  # a before-hook that accepts the document as proposed


def notify(event, context):
    try:
        context.db["seen"].insert({"seq": event["seq"]}, id=event["eventId"])
    except context.db.Conflict:
        context.db["dups"].insert({"eventId": event["eventId"]})
    return None
"""
HOOKS = {"source": "../functions/hooks", "access": {"roles": ["bench"]}}
MANIFESTS = (
    function_manifest(
        "summary",
        handler="main.summary",
        scaling={"minInstances": 1, "maxInstances": 2, "concurrency": 8},
        parameters={"type": "object", "required": ["customer"], "properties": {"customer": {"type": "string"}}},
        **HOOKS,
    )
    + function_manifest(
        "notify",
        handler="main.notify",
        runAs="function",
        scaling={"minInstances": 2, "maxInstances": 2, "concurrency": 16},
        **HOOKS,
    )
    + function_manifest(
        "accept", handler="main.accept", scaling={"minInstances": 1, "maxInstances": 1, "concurrency": 8}, **HOOKS
    )
    + """\
---
apiVersion: fnctl/v1
kind: View
metadata: {name: summary}
spec: {function: summary}
---
apiVersion: fnctl/v1
kind: Trigger
metadata: {name: notify}
spec: {function: notify, on: {collection: events, event: onCommit}}
---
apiVersion: fnctl/v1
kind: Trigger
metadata: {name: hooked-check}
spec: {function: accept, on: {collection: hooked, event: beforeCreate}}
---
apiVersion: fnctl/v1
kind: Policy
metadata: {name: bench}
spec:
  roles:
    bench: {invoke: ["*"], read: ["*"], write: ["*"]}
    "function:notify": {write: [seen, dups]}
"""
    + "".join(
        f"---\napiVersion: fnctl/v1\nkind: Collection\nmetadata: {{name: {c}}}\nspec: {{schema: {{type: object}}}}\n"
        for c in ("orders", "events", "seen", "dups", "plain", "hooked")
    )
)


def line(target: str, figure: str, baseline: str, ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("  ok" if ok else "  MISSED")
    print(f"{figure:<58} | {baseline:<44} | target {target}{verdict}", flush=True)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


class Client:
    """One keep-alive connection to the gateway."""

    def __init__(self, port: int, key: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any, dict[str, str]]:
        payload = None if body is None else json.dumps(body).encode()
        self.connection.request(method, path, body=payload, headers={**self.headers, **headers})
        response = self.connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None, {k.lower(): v for k, v in response.getheaders()}


def _at(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def bench_views(client: Client, samples: int) -> None:
    client.call("POST", "/v1/collections/orders/docs?id=o0", {"customer": "c1", "total": 1})
    client.call("GET", "/v1/views/summary?customer=c1")  # computed once; then hits
    health, hits = [], []
    for _ in range(samples):
        start = time.perf_counter()
        client.call("GET", "/healthz")
        health.append(time.perf_counter() - start)
        start = time.perf_counter()
        _, _, headers = client.call("GET", "/v1/views/summary?customer=c1")
        hits.append(time.perf_counter() - start)
        assert headers.get("x-fnctl-view-cache") == "hit"
    hit, base = median_ms(hits), median_ms(health)
    line(
        "p50 ≤ 1 ms",
        f"view hit through the gateway: p50 {hit:.3f} ms",
        f"/healthz p50 {base:.3f} ms (x{hit / base:.1f})",
        hit <= 1.0,
    )
    reads = served = 0
    for round_ in range(20):
        # each write overlaps the view's find: its entry is evicted, the next read recomputes it
        client.call("PUT", "/v1/collections/orders/docs/o0", {"customer": "c1", "total": round_}, **{"If-Match": "*"})
        for _ in range(100):
            _, body, headers = client.call("GET", "/v1/views/summary?customer=c1")
            assert body["total"] == round_, body  # never stale
            reads += 1
            served += headers.get("x-fnctl-view-cache") == "hit"
    rate = served / reads
    line("≥ 95 %", f"hit rate, 100 reads per overlapping write: {rate:.1%}", f"{reads} reads, 20 writes", rate >= 0.95)


def bench_events(client: Client, data_file: Path, count: int, latency_rounds: int) -> None:
    from fnctl.state import docstore

    docs = docstore.connect(data_file)
    try:
        # Latency: one write at a time, each delivered before the next (its handler's write carries the time).
        commits: dict[str, float] = {}
        for i in range(latency_rounds):
            _, made, _ = client.call("POST", f"/v1/collections/events/docs?id=l{i}", {"n": i})
            commits[f"notify:{i}"] = _at(made["createdAt"])
            deadline = time.monotonic() + 30
            while docs.count("seen") < i + 1:
                if time.monotonic() > deadline:
                    raise SystemExit("an onCommit event was not delivered within 30 s")
                time.sleep(0.002)
        delays = []
        for row in docs.scan("seen"):
            seq = json.loads(row.data)["seq"]
            change = docs.changes(seq - 1, "", ["events"], 1)
            delays.append(_at(row.created_at) - _at(json.loads(change[0].after or "{}")["createdAt"]))
        p50 = statistics.median(delays) * 1000
        line(
            "p50 ≤ 50 ms",
            f"onCommit delivery after commit: p50 {p50:.1f} ms",
            f"{len(delays)} events, one at a time",
            p50 <= 50,
        )

        # Volume: `count` events at once, in batches of 1000 writes.
        before = docs.count("seen")
        start = time.monotonic()
        for first in range(0, count, 1000):
            ops = [
                {"op": "insert", "collection": "events", "id": f"v{i}", "document": {"n": i}}
                for i in range(first, min(count, first + 1000))
            ]
            status, body, _ = client.call("POST", "/v1/batch", {"operations": ops})
            if status != 200:
                raise SystemExit(f"a batch answered {status}: {body}")
        deadline = time.monotonic() + 600
        while docs.count("seen") - before < count and time.monotonic() < deadline:
            time.sleep(0.2)
        took = time.monotonic() - start
        delivered = docs.count("seen") - before
        twice = docs.count("dups")
        pending = docs.outbox_counts().get(("notify", "pending"), 0)
        line(
            "0 lost, 0 twice",
            f"{count} events: {count - delivered} lost, {twice} delivered twice",
            f"{took:.1f} s ({delivered / took:.0f}/s), {pending} pending",
            delivered == count and twice == 0,
        )
    finally:
        docs.close()


def bench_before_hook(client: Client, writes: int) -> None:
    """p50 of an insert with one before-hook beside the same insert into a collection without hooks."""
    samples: dict[str, list[float]] = {"plain": [], "hooked": []}
    for i in range(writes + 20):  # the first 20 of each warm up (connection, instance, caches)
        for collection in ("plain", "hooked"):
            started = time.perf_counter()
            status, body, _ = client.call("POST", f"/v1/collections/{collection}/docs", {"customer": f"c{i}", "n": i})
            elapsed = time.perf_counter() - started
            if status != 201:
                raise SystemExit(f"an insert into {collection} answered {status}: {body}")
            if i >= 20:
                samples[collection].append(elapsed)
    hooked, plain = median_ms(samples["hooked"]), median_ms(samples["plain"])
    line(
        "p50 ≤ baseline + 2 ms",
        f"insert, one before-hook: p50 {hooked:.3f} ms (+{hooked - plain:.3f} ms)",
        f"insert, no hooks: p50 {plain:.3f} ms",
        hooked - plain <= 2.0,
    )


def _timeout(signum: int, frame: FrameType | None) -> None:
    raise SystemExit("bench_hooks: timed out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", choices=("all", "views", "events", "hooks"), default="all")
    parser.add_argument("--writes", type=int, default=500, help="inserts timed with and without a before-hook")
    parser.add_argument("--samples", type=int, default=2000, help="view hits (and /healthz) timed")
    parser.add_argument("--events", type=int, default=10_000, help="onCommit events delivered at once")
    parser.add_argument("--latency-rounds", type=int, default=200, help="onCommit events timed one at a time")
    parser.add_argument("--timeout", type=int, default=900, help="give up after this many seconds")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(args.timeout)

    work = Path(tempfile.mkdtemp(prefix="bench-hooks-"))
    root, name, port = work / "project", f"bh-{secrets.token_hex(4)}", free_port()
    (root / "manifests").mkdir(parents=True)
    (root / "functions" / "hooks").mkdir(parents=True)
    (root / "functions" / "hooks" / "main.py").write_text(HANDLERS)
    (root / "manifests" / "hooks.yaml").write_text(MANIFESTS)
    (root / "fnctl.toml").write_text(
        f'[project]\nname = "{name}"\nmanifests = ["manifests"]\n\n[gateway]\naddress = "127.0.0.1:{port}"\n'
    )
    state = root / "state" / "state.db"
    env = {**os.environ, "FNCTL_STATE": str(state)}

    gateway = None
    try:
        fnctl_ok(root, env, "apply")
        key = fnctl_ok(root, env, "keys", "create", "bench", "--role", "bench").strip()
        gateway = serve(root, env, port, "--no-access-log")
        client = Client(port, key)
        if args.only in ("all", "views"):
            bench_views(client, args.samples)
        if args.only in ("all", "events"):
            bench_events(client, state.with_name("state.data.db"), args.events, args.latency_rounds)
        if args.only in ("all", "hooks"):
            bench_before_hook(client, args.writes)
    finally:
        if gateway is not None:
            stop_processes([gateway])
        remove_project(name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
