"""What the benchmarks share: removing every container and image a benchmark project left on the engine, a
Function manifest and an HTTP Trigger, a free port, the wrk load runner, waiting for and stopping a gateway, the
CPU time of a process tree, the load average, and an echoing child process for the baselines."""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TICKS = os.sysconf("SC_CLK_TCK")  # /proc's unit of CPU time


def remove_project(project: str) -> None:
    """Every container and image labelled with `project`, and the instances' socket directories (only where
    fnctl creates them)."""
    import docker

    from fnctl.engine.instances import runtime_root

    client = docker.from_env(timeout=120)
    for container in client.api.containers(all=True, filters={"label": f"io.fnctl.project={project}"}):
        client.api.remove_container(container["Id"], force=True)
        socket_dir = (container.get("Labels") or {}).get("io.fnctl.socket-dir", "")
        if socket_dir and Path(socket_dir).parent == runtime_root():
            shutil.rmtree(socket_dir, ignore_errors=True)
    for image in client.api.images(filters={"label": f"io.fnctl.project={project}"}):
        try:
            client.api.remove_image(image["Id"], force=True)
        except docker.errors.APIError:
            pass  # a parent of another image still there, or already gone


def post_lua(body: object = None, key: str | None = None) -> str:
    """A wrk script that POSTs `body` as JSON (`{}` by default), with `key` as the bearer token if given."""
    text = json.dumps({} if body is None else body).replace('"', '\\"')
    script = f'wrk.method = "POST"\nwrk.body = "{text}"\nwrk.headers["Content-Type"] = "application/json"\n'
    return script + (f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else "")


def function_manifest(name: str, **spec: Any) -> str:
    """One Function document (with its `---`): python3.11, `main.handler` of functions/<name>, a 5 s / 64 Mi
    limit, and `spec`'s fields over those."""
    fields = {
        "runtime": "python3.11",
        "source": f"../functions/{name}",
        "handler": "main.handler",
        "limits": {"timeout": "5s", "memory": "64Mi"},
        **spec,
    }
    document = {"apiVersion": "fnctl/v1", "kind": "Function", "metadata": {"name": name}, "spec": fields}
    return "---\n" + yaml.safe_dump(document, sort_keys=False)


def http_trigger(function: str, path: str, *methods: str) -> str:
    """One HTTP Trigger document (with its `---`) named `<function>-http`: `path` to `function`."""
    spec = {"function": function, "http": {"path": path, "methods": list(methods)}}
    document = {"apiVersion": "fnctl/v1", "kind": "Trigger", "metadata": {"name": f"{function}-http"}, "spec": spec}
    return "---\n" + yaml.safe_dump(document, sort_keys=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Wrk:
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int
    requests: int

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx


def wrk(port: int, path: str, script: Path, *, seconds: int, threads: int = 1, connections: int = 8) -> Wrk:
    """One `wrk --latency` run against 127.0.0.1:port/path with `script`; no figures is the benchmark's end."""
    done = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "5s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    out = done.stdout
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))  # wrk may pad "3.56s "
    if set(latency) != {"50", "99"} or "Requests/sec:" not in out:
        raise SystemExit(f"wrk gave no figures for {path} (exit {done.returncode}):\n{out}{done.stderr}")
    return Wrk(
        float(_first(r"Requests/sec:\s+([\d.]+)", out)),
        _ms(latency["50"]),
        _ms(latency["99"]),
        sum(int(g) for g in socket_errors.groups()) if socket_errors else 0,
        int(non_2xx.group(1)) if non_2xx else 0,
        int(_first(r"(\d+) requests in", out)),
    )


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def _first(pattern: str, text: str) -> str:
    """The first group of `pattern` in wrk's output, which has it (checked above)."""
    found = re.search(pattern, text)
    if found is None:
        raise SystemExit(f"wrk's output lacks {pattern!r}:\n{text}")
    return found.group(1)


def fnctl_ok(root: Path, env: dict[str, str], *args: str, timeout: float = 600) -> str:
    """`python -m fnctl ARGS` in `root`: its standard output; a failure ends the benchmark with what it said."""
    done = subprocess.run(
        [sys.executable, "-m", "fnctl", *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise SystemExit(f"fnctl {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


def serve(
    root: Path, env: dict[str, str], port: int, *flags: str, timeout: float = 120, path: str = "/readyz"
) -> subprocess.Popen[bytes]:
    """`fnctl serve FLAGS` of the project in `root`, once it answers `path` on `port` (the address its
    fnctl.toml or FLAGS name); stopped again if it never does."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fnctl", "serve", *flags],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await_ready(port, process, timeout, path)
    except BaseException:
        stop_processes([process])
        raise
    return process


def await_ready(port: int, process: subprocess.Popen[Any], timeout: float, path: str = "/readyz") -> None:
    """Until the gateway on `port` answers `path` with 200; its exit or `timeout` seconds end the benchmark."""
    deadline = time.monotonic() + timeout
    while not _answers(port, path):
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit(f"fnctl serve on port {port} did not answer {path} within {timeout:g} s")
        time.sleep(0.05)


def _answers(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def stop_processes(processes: Iterable[subprocess.Popen[Any]], timeout: float = 60) -> None:
    """SIGTERM each process (a gateway drains on it), then wait for it; one still running after `timeout` is
    killed."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()


def processes_cpu(root: int) -> dict[int, tuple[float, float]]:
    """CPU seconds in user and in system mode of `root` and each process below it, now, by pid."""
    parents: dict[int, int] = {}
    times: dict[int, tuple[float, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) / TICKS, int(fields[12]) / TICKS)
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return {pid: times[pid] for pid in tree if pid in times}


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process, all its threads, so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of `root` and every process below it, now."""
    return sum(user + system for user, system in processes_cpu(root).values())


def instance_cgroups(project: str) -> list[Path]:
    """The cpuacct cgroups of the project's containers (cgroup v1 with the cgroupfs driver, or v2)."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--no-trunc", "--filter", f"label=io.fnctl.project={project}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found = []
    for container in ids:
        for candidate in (
            Path("/sys/fs/cgroup/cpuacct/docker") / container / "cpuacct.usage",
            Path("/sys/fs/cgroup/docker") / container / "cpu.stat",
            Path(f"/sys/fs/cgroup/system.slice/docker-{container}.scope/cpu.stat"),
        ):
            if candidate.exists():
                found.append(candidate)
                break
    return found


def cgroups_cpu(paths: list[Path]) -> float:
    total = 0.0
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.name == "cpuacct.usage":
            total += int(text) / 1e9
        else:
            total += int(text.split("usage_usec ")[1].split()[0]) / 1e6
    return total


def machine_cpu() -> float:
    """CPU seconds every core of the machine spent busy (not idle, not waiting for I/O), since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICKS


def children_cpu() -> float:
    """CPU seconds of this process's ended children (a wrk run counts once it has returned)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loadavg() -> str:
    """The machine's 1, 5 and 15 minute load averages, as /proc/loadavg has them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@contextmanager
def echo_child() -> Iterator[socket.socket]:
    """One end of a socket pair whose other end a forked child echoes back until it is closed: a hop between
    two processes on this machine, for the baselines. The child is reaped on the way out."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo side
        ours.close()
        while data := theirs.recv(65536):
            theirs.sendall(data)
        os._exit(0)
    theirs.close()
    try:
        yield ours
    finally:
        ours.close()
        os.waitpid(pid, 0)
