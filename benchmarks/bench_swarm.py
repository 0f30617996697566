"""Scale-out figures of issue 19 on Docker Swarm, each beside a baseline measured in the same run (the
PostgreSQL figures are benchmarks/bench_scale.py's).

Swarm (`--only swarm`; root, a Docker engine, FNCTL_BASE_IMAGE): 3 nodes on this machine
(scripts/swarm-nodes.sh), a no-op function.
  - invoke round trip over a Swarm task's socket vs over a single-host instance's (interleaved rounds);
  - a revision's 3 instances answering: a 3-replica service (one per node) vs 3 single-host instances;
  - a blue-green switch across the 3 nodes under load (a request loop per node): requests and failures;
  - a node's daemon killed: time until every slot answers again on the other nodes (target 30 s);
  - POST /invoke through a node's gateway with no task (forwarded to the gateway of the node that has it) vs
    through that node's own gateway (interleaved rounds; two `fnctl serve` on 127.0.0.1).

  sudo -E PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_swarm.py --only swarm
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket as stdsocket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_sandbox import find_function, write_project  # noqa: E402
from benchcommon import remove_project  # noqa: E402

from fnctl.engine import images, instances  # noqa: E402
from fnctl.engine.sandbox import labels  # noqa: E402
from fnctl.engine.swarm import LocalInstance, NodeAgent, SwarmEngine, service_name  # noqa: E402
from fnctl.engine.swarmspec import Placement  # noqa: E402
from fnctl.manifest.model import Function  # noqa: E402
from fnctl.manifest.project import Project  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "swarm-nodes.sh"
NAME = "fnsb"  # the benchmark's own swarm, apart from the tests'
NODES = 3


def nodes_script(*args: str) -> None:
    subprocess.run(["bash", str(SCRIPT), *args], check=True, timeout=180, env=os.environ | {"FNCTL_SWARM_NAME": NAME})


def socket(k: int) -> str:
    return f"/run/{NAME}/n{k}/docker.sock"


INSTANCE_ROOT = f"/run/{NAME}/i"


@contextmanager
def swarm(image: str) -> Iterator[None]:
    try:
        nodes_script("up", str(NODES))
        nodes_script("load", image)
        yield
    finally:
        nodes_script("down")


def call(instance: instances.Instance, n: int) -> bool:
    return instance.transport.invoke({"n": n}, invocation_id=f"b{n}", deadline=time.time() + 10).ok


def p50_us(instance: instances.Instance, count: int) -> float:
    samples = []
    for n in range(count):
        started = time.perf_counter()
        if not call(instance, n):
            raise SystemExit("the no-op failed")
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def agents() -> list[NodeAgent]:
    return [NodeAgent(socket(k), INSTANCE_ROOT) for k in range(1, NODES + 1)]


def up(
    engine: SwarmEngine, function: Function, project: Project, image: str, revision: str, max_per_node: int = 1
) -> str:
    service = service_name(project.name, function.name, revision)
    for agent in agents():
        agent.prepare(service, NODES)
    placement = Placement(NODES, max_per_node)
    engine.deploy(function, project=project.name, revision=revision, image=image, placement=placement)
    return service


def answering(agent: NodeAgent, function: Function, project: str, service: str) -> list[LocalInstance]:
    found = []
    for local in agent.local_instances(project, service):
        try:
            instance = agent.connect(function, local, {}, timeout=2)
        except Exception:  # not up yet
            return []
        instance.transport.close()
        found.append(local)
    return found


def wait(condition: Callable[[], bool], what: str, timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"timed out after {timeout:g}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def bench_swarm(args: argparse.Namespace) -> None:
    base_image = os.environ.get("FNCTL_BASE_IMAGE", "fnctl-base:bookworm")
    with tempfile.TemporaryDirectory(prefix="fnctl-bench-scale-") as tmp:
        project = write_project(Path(tmp), base_image)
        function = find_function(project, "noop")
        image = images.ensure_image(project.name, "noop", project.root / "functions" / "noop", base_image).tag
        try:
            with swarm(image):
                run_swarm(args, project, function, image)
        finally:
            remove_project(project.name)


def run_swarm(args: argparse.Namespace, project: Project, function: Function, image: str) -> None:
    engine = SwarmEngine(socket(1), INSTANCE_ROOT)
    node_agents = agents()
    rows: list[tuple[str, str, str, str]] = [forwarding(args, project, engine)]

    # A revision's 3 instances answering: Swarm service vs single-host instances, interleaved.
    swarm_s, local_s = [], []
    for round_ in range(args.rounds):
        started = time.monotonic()
        service = up(engine, function, project, image, f"s{round_}")
        wait(lambda: all(answering(a, function, project.name, service) for a in node_agents), "3 tasks", 60)
        swarm_s.append(time.monotonic() - started)
        engine.remove(service)
        started = time.monotonic()
        started_here = [
            instances.start(function, image=image, revision="b", labels=labels(project.name, "noop"), secret_values={})
            for _ in range(NODES)
        ]
        local_s.append(time.monotonic() - started)
        for instance in started_here:
            instances.remove(instance)
    rows.append(("3 instances answering", f"{statistics.median(swarm_s):.2f} s", f"{statistics.median(local_s):.2f} s",
                 f"x{statistics.median(swarm_s) / statistics.median(local_s):.2f}"))  # fmt: skip

    # Round trip over a task's socket vs a single-host instance's, interleaved.
    service = up(engine, function, project, image, "rt")
    wait(lambda: all(answering(a, function, project.name, service) for a in node_agents), "3 tasks", 60)
    local_task = node_agents[1].local_instances(project.name, service)[0]
    task = node_agents[1].connect(function, local_task, {})
    here = instances.start(function, image=image, revision="b", labels=labels(project.name, "noop"), secret_values={})
    over_swarm, over_local = [], []
    for _ in range(args.rounds):
        over_swarm.append(p50_us(task, args.count))
        over_local.append(p50_us(here, args.count))
    task.transport.close()
    instances.remove(here)
    sw, lo = statistics.median(over_swarm), statistics.median(over_local)
    rows.append(("invoke round trip p50", f"{sw:.0f} µs", f"{lo:.0f} µs", f"x{sw / lo:.2f}"))

    # Blue-green across the 3 nodes under load.
    active = [service]
    served, failed = [0] * NODES, [0] * NODES
    stop = threading.Event()

    def load(k: int) -> None:
        connections: dict[str, instances.Instance] = {}
        while not stop.is_set():
            current = active[0]
            try:
                if current not in connections:
                    local = node_agents[k].local_instances(project.name, current)[0]
                    connections[current] = node_agents[k].connect(function, local, {})
                if call(connections[current], served[k]):
                    served[k] += 1
                else:
                    failed[k] += 1
            except Exception:
                failed[k] += 1
        for connection in connections.values():
            connection.transport.close()

    threads = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(NODES)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # blue under load for a second (a measurement window, not a wait for a condition)
    # Two per node at most: one each while 3 nodes stand (Swarm spreads), room for node 3's when it goes.
    green = up(engine, function, project, image, "green", max_per_node=2)
    wait(lambda: all(answering(a, function, project.name, green) for a in node_agents), "green", 60)
    active[0] = green
    engine.remove(service)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    rows.append(("blue-green across 3 nodes under load", f"{sum(failed)} failed of {sum(served) + sum(failed)}",
                 "0 failed (target)", "meets" if sum(failed) == 0 else "MISSES"))  # fmt: skip

    # Node 3 lost: every slot answering again on nodes 1-2.
    nodes_script("kill", str(NODES))
    recovered = wait(
        lambda: sum(len(answering(a, function, project.name, green)) for a in node_agents[:2]) == NODES,
        "slots back on nodes 1-2",
        60,
    )
    rows.append(("node daemon killed: traffic back", f"{recovered:.1f} s", "30 s (target)",
                 "meets" if recovered <= 30 else "MISSES"))  # fmt: skip
    engine.remove(green)

    print(f"\nswarm, {NODES} nodes on this machine; load {Path('/proc/loadavg').read_text().strip()}")
    print(f"{'figure':40} {'swarm':>22} {'baseline':>22} {'ratio':>8}")
    for figure, value, baseline, ratio in rows:
        print(f"{figure:40} {value:>22} {baseline:>22} {ratio:>8}")


def forwarding(args: argparse.Namespace, project: Project, engine: SwarmEngine) -> tuple[str, str, str, str]:
    """POST /invoke/noop p50 through the gateway of a node without the task (forwarded to the gateway of the
    node that has it) vs through that node's own gateway, interleaved: `fnctl apply` and two `fnctl serve`
    on 127.0.0.1 under engine = "swarm", one replica."""
    config = project.root / "fnctl.toml"
    config.write_text(
        f'engine = "swarm"\n{config.read_text()}\n[swarm]\nmanager = "unix://{socket(1)}"\n'
        f'instanceRoot = "{INSTANCE_ROOT}"\nmaxPerNode = 1\n'
    )
    manifest = project.root / "manifests" / "noop.yaml"
    manifest.write_text(
        manifest.read_text().replace(
            "handler: main.handler}", "handler: main.handler, scaling: {minInstances: 1}, access: {roles: [public]}}"
        )
    )
    state = str(project.root / "state.db")
    command = [sys.executable, "-m", "fnctl"]
    subprocess.run([*command, "apply", "--state", state], cwd=project.root, check=True, capture_output=True)
    service = service_name(project.name, "noop", "1")
    hostnames = engine.hostnames()
    placed = hostnames[engine.wait_running(service, 1)[0].node_id]
    here = next(k for k in range(1, NODES + 1) if NodeAgent(socket(k), INSTANCE_ROOT).hostname == placed)
    other = here % NODES + 1
    ports = {here: free_port(), other: free_port()}
    gateways = [
        subprocess.Popen(
            [*command, "serve", "--state", state, "--address", f"127.0.0.1:{port}", "--no-access-log"],
            cwd=project.root,
            env=os.environ | {"FNCTL_SWARM_NODE": f"unix://{socket(k)}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for k, port in ports.items()
    ]
    try:
        wait(lambda: post(ports[here]) == 200 and post(ports[other]) == 200, "both gateways answering", 60)
        local, forwarded = [], []
        for _ in range(args.rounds):
            local.append(gateway_p50_us(ports[here], args.count))
            forwarded.append(gateway_p50_us(ports[other], args.count))
    finally:
        for gateway in gateways:
            gateway.terminate()
            gateway.wait(timeout=60)
        engine.remove(service)
    fw, lo = statistics.median(forwarded), statistics.median(local)
    return ("POST /invoke p50: forwarded vs local", f"{fw:.0f} µs", f"{lo:.0f} µs", f"x{fw / lo:.2f}")


def post(port: int) -> int:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/invoke/noop", body=b"{}", headers={"Content-Type": "application/json"})
        status = connection.getresponse().status
        connection.close()
        return status
    except OSError:
        return 0


def gateway_p50_us(port: int, count: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    samples = []
    for n in range(count):
        started = time.perf_counter()
        connection.request("POST", "/invoke/noop", body=b'{"n":%d}' % n, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"gateway on {port} answered {response.status}")
        samples.append((time.perf_counter() - started) * 1e6)
    connection.close()
    return statistics.median(samples)


def free_port() -> int:
    with stdsocket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {"swarm": bench_swarm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="sections to run (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved A/B rounds")
    parser.add_argument("--count", type=int, default=300, help="invocations per round-trip round")
    args = parser.parse_args()
    for name in args.only or sorted(SECTIONS):
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
