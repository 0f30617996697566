"""Handlers that probe the sandbox from inside: what the process is allowed, and what happens at each limit.

Run only inside fnctl's test containers (tests/engine/test_sandbox.py, tests/commands/test_invoke_local.py).
"""

import asyncio
import errno
import os
import socket
import time

MIB = 1 << 20


def echo(event):
    """The one-argument signature."""
    return {"echo": event}


def echo_context(event, context):
    """The two-argument signature."""
    return {"echo": event, "function": context.function_name, "revision": context.revision}


def calls(event, context):
    """Calls back into the host from the worker process a synchronous handler runs in, and says where it ran."""
    import threading

    replies = [context.call("echo", {"n": n}) for n in range(3)]
    return {"replies": replies, "main_thread": threading.get_ident() == threading.main_thread().ident}


async def echo_async(event, context):
    await asyncio.sleep(0)
    return {"echo": event, "async": True, "function": context.function_name}


def chatty(event, context):
    print("to stdout:", event.get("say", ""))
    context.logger.info("to the logger")
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"said": event.get("say", "")}


def _status(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    return None


def _errno_of(action):
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return None


def _write_root():
    with open("/probe-write", "w") as handle:
        handle.write("x")


def _connect_out():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed; only the error matters


def _routes(path, skip_header):
    try:
        with open(path) as table:
            lines = table.read().splitlines()[1 if skip_header else 0 :]
    except OSError:
        return []
    return [line for line in lines if line.strip()]


def identity(event):
    """Who the handler runs as, and what it can reach."""
    with open("/proc/net/dev") as dev:
        interfaces = sorted(line.split(":", 1)[0].strip() for line in dev.read().splitlines()[2:] if ":" in line)
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "cap_eff": _status("CapEff"),
        "cap_prm": _status("CapPrm"),
        "no_new_privs": _status("NoNewPrivs"),
        "batch": os.sched_getscheduler(0) == os.SCHED_BATCH,
        "root_write": _errno_of(_write_root),
        "interfaces": interfaces,
        "routes": _routes("/proc/net/route", True),
        "routes6": [r for r in _routes("/proc/net/ipv6_route", False) if not r.rstrip().endswith(" lo")],
        "connect_out": _errno_of(_connect_out),
    }


def fill_tmp(event):
    """Writes 1 MiB files into /tmp until the filesystem refuses; logs how much fitted, then fails."""
    chunk = b"\0" * MIB
    written = 0
    try:
        while written < event.get("max", 1 << 30):
            with open(f"/tmp/fill-{written // MIB}", "wb") as handle:
                handle.write(chunk)
            written += MIB
    except OSError:
        print(f"written={written}")
        raise
    return {"written": written}


def fork_bomb(event):
    """Forks until the kernel says no; every child just holds its pid."""
    children = 0
    while True:
        try:
            pid = os.fork()
        except OSError:
            print(f"children={children}")
            raise
        if pid == 0:
            try:
                time.sleep(600)
            finally:
                os._exit(0)
        children += 1


def memory_bomb(event):
    """Touches memory 8 MiB at a time until the engine's OOM killer ends it."""
    hoard = []
    while True:
        hoard.append(b"x" * (8 * MIB))


def spin(event):
    """An endless loop when asked to; answers otherwise (so a fresh instance can prove it works)."""
    if event.get("spin"):
        while True:
            pass
    return {"spun": False}


def big_result(event):
    return "x" * int(event["size"])


def crash(event):
    os._exit(7)  # the runtime is PID 1: signals from inside are ignored, exiting is not


def secret(event):
    return {"token": os.environ.get("API_TOKEN")}


def _cpus():
    """The container's CPU quota in CPUs, as its cgroup says (v2: cpu.max; v1: cfs quota / period)."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as limit:
            quota, period = limit.read().split()
    except FileNotFoundError:
        try:
            with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as q, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as p:
                quota, period = q.read().strip(), p.read().strip()
        except OSError:  # no cgroup files to read (gVisor): this module is imported by every probe
            return None
    return None if quota in ("max", "-1") else int(quota) / int(period)


_CPUS_AT_IMPORT = _cpus()  # while the instance starts: before it is ready


def cpu_quota(event):
    return {"at_import": _CPUS_AT_IMPORT, "now": _cpus()}
