"""Speed of data hooks, each figure beside a baseline measured in the same run (medians; these machines are noisy):

- a REST insert into a collection with one before-hook (a warm instance that accepts the document), p50 —
  target ≤ 2 ms more than the baseline: the same insert into a collection without hooks, same schema, same
  gateway, alternating with it (sequential keep-alive client)

Needs a Docker engine (FNCTL_BASE_IMAGE, default fnctl-base:bookworm). Every container and image of the
benchmark project is removed afterwards.

    .venv/bin/python benchmarks/bench_hooks.py [--writes 500]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

HOOK = """\
def handler(event, context):
    return None  # accept the document as proposed
"""
MANIFESTS = """\
apiVersion: fnctl/v1
kind: Function
metadata: {name: accept}
spec:
  runtime: python3.11
  source: ../functions/accept
  handler: main.handler
  limits: {timeout: 5s, memory: 64Mi}
  scaling: {minInstances: 1, maxInstances: 1, concurrency: 8}
  access: {roles: [clerk]}
---
apiVersion: fnctl/v1
kind: Trigger
metadata: {name: hooked-check}
spec:
  function: accept
  on: {collection: hooked, event: beforeCreate}
---
apiVersion: fnctl/v1
kind: Policy
metadata: {name: bench}
spec:
  roles:
    clerk: {read: ["*"], write: ["*"]}
""" + "".join(
    f"""---
apiVersion: fnctl/v1
kind: Collection
metadata: {{name: {name}}}
spec:
  schema: {{type: object, required: [customer, total], properties: {{customer: {{type: string}}, total: {{type: number}}}}}}
"""
    for name in ("plain", "hooked")
)


def line(target: str, figure: str, baseline: str, ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("  [meets target]" if ok else "  [MISSES target]")
    print(f"{figure}  |  baseline: {baseline}  |  target: {target}{verdict}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(root: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    gateway = subprocess.Popen(
        [sys.executable, "-m", "fnctl", "serve"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return gateway
        except OSError:
            pass
        if time.monotonic() > deadline or gateway.poll() is not None:
            raise SystemExit("fnctl serve was not ready within 120 s")
        time.sleep(0.2)


def bench_before_hook(work: Path, writes: int) -> None:
    """p50 of an insert with one before-hook beside the same insert without hooks."""
    from benchcommon import remove_project

    root = work / "hooks"
    name, port = f"bh-{secrets.token_hex(4)}", free_port()
    (root / "manifests").mkdir(parents=True)
    (root / "functions" / "accept").mkdir(parents=True)
    (root / "functions" / "accept" / "main.py").write_text(HOOK)
    (root / "fnctl.toml").write_text(
        f'[project]\nname = "{name}"\nmanifests = ["manifests"]\n\n[gateway]\naddress = "127.0.0.1:{port}"\n'
    )
    (root / "manifests" / "bench.yaml").write_text(MANIFESTS)
    env = {
        **os.environ,
        "FNCTL_STATE": str(root / "state" / "state.db"),
        "FNCTL_BASE_IMAGE": os.environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm"),
    }

    def fnctl(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "fnctl", *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise SystemExit(f"fnctl {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    gateway = None
    try:
        fnctl("apply")
        key = fnctl("keys", "create", "bench", "--role", "clerk").strip()
        gateway = _start(root, env, port)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        samples: dict[str, list[float]] = {"plain": [], "hooked": []}
        for i in range(writes + 20):  # the first 20 of each warm up (connection, instance, caches)
            for collection in ("plain", "hooked"):
                body = json.dumps({"customer": f"c{i % 100}", "total": i}).encode()
                started = time.perf_counter()
                connection.request("POST", f"/v1/collections/{collection}/docs", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                elapsed = (time.perf_counter() - started) * 1000
                if response.status != 201:
                    raise SystemExit(f"an insert into {collection} answered {response.status}")
                if i >= 20:
                    samples[collection].append(elapsed)
        connection.close()
        hooked, plain = statistics.median(samples["hooked"]), statistics.median(samples["plain"])
        line(
            "p50 ≤ baseline + 2 ms",
            f"REST insert with one before-hook (warm instance): p50 {hooked:.3f} ms (+{hooked - plain:.3f} ms, "
            f"x{hooked / plain:.2f})",
            f"the same insert without hooks p50 {plain:.3f} ms",
            hooked - plain <= 2.0,
        )
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(timeout=60)
        remove_project(name)


def _timeout(signum: int, frame: FrameType | None) -> None:
    raise SystemExit("bench_hooks: timed out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--writes", type=int, default=500, help="inserts timed into each collection")
    parser.add_argument("--timeout", type=int, default=600, help="give up after this many seconds")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(args.timeout)
    work = Path(tempfile.mkdtemp(prefix="bench-hooks-"))
    try:
        bench_before_hook(work, args.writes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
