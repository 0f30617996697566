"""The sandbox profile (docs/security.md, "Which layer stops what"), as pure functions: a function's limits → a ContainerSpec, and a
container's `docker inspect` → pass/fail for each hardening property (`fnctl sandbox check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fnctl.manifest.model import Function, Isolation, Network

SANDBOX_USER = "65534:65534"  # nobody:nogroup; the image needs no user database for a numeric id
SOCKET_TARGET = "/run/fnctl"
NOFILE = 1024
LOG_MAX_SIZE = "1m"
# CPUs an instance may use while it starts (interpreter, imports, the handler's module), until it is ready:
# at the function's 0.5 the quota alone cost ~35 ms of a cold start. Memory and pids limits apply as ever,
# and the function's own quota is set before the instance takes its first request.
STARTUP_CPUS = 2.0
GVISOR_RUNTIME = "runsc"
LABEL = "io.fnctl"  # prefix of every label fnctl sets


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one instance container; built by `sandbox.container_spec`."""

    name: str
    image: str
    user: str
    environment: dict[str, str]
    labels: dict[str, str]
    socket_dir: str  # host directory bind-mounted (read-only) at `socket_target`
    socket_target: str
    memory: int
    nano_cpus: int  # the CPU quota while it serves (billionths of a CPU)
    pids: int
    tmp_size: int
    nofile: int
    fsize: int
    network: str  # "none" | "bridge"
    runtime: str | None  # None = the engine's default (runc)
    log_max_size: str
    read_only: bool = True
    # No writable host path at all: the runtime connects out to the host's listeners in this directory,
    # which needs no write access to it.
    socket_read_only: bool = True
    start_nano_cpus: int = 0  # the CPU quota until it is ready (0: `nano_cpus` from the start)
    cap_drop: tuple[str, ...] = ("ALL",)
    security_opt: tuple[str, ...] = ("no-new-privileges:true",)


def labels(project: str, function: str, **extra: str) -> dict[str, str]:
    base = {f"{LABEL}.project": project, f"{LABEL}.function": function}
    return base | {f"{LABEL}.{k.replace('_', '-')}": v for k, v in extra.items()}


def container_spec(
    function: Function, *, image: str, name: str, socket_dir: str, revision: str, container_labels: dict[str, str]
) -> ContainerSpec:
    """The one way an instance container is configured: non-root, no capabilities, read-only root,
    bounded memory/CPU/pids/files, no network unless asked, capped logs, only its own socket directory, read-only."""
    limits = function.limits
    environment = dict(function.env) | {
        "FNCTL_HANDLER": function.handler,
        "FNCTL_FUNCTION": function.name,
        "FNCTL_REVISION": revision,
        "FNCTL_CONCURRENCY": str(function.scaling.concurrency),
        "FNCTL_PAYLOAD_LIMIT": str(limits.payload),
        "FNCTL_OUTPUT_LIMIT": str(limits.output),
        "FNCTL_SOCKET_DIR": SOCKET_TARGET,
    }
    return ContainerSpec(
        name=name,
        image=image,
        user=SANDBOX_USER,
        environment=environment,
        labels=container_labels
        | {f"{LABEL}.network": function.network.value, f"{LABEL}.isolation": function.isolation.value},
        socket_dir=socket_dir,
        socket_target=SOCKET_TARGET,
        memory=limits.memory,
        nano_cpus=cpu_quota(function),
        pids=limits.pids,
        tmp_size=limits.tmp,
        nofile=NOFILE,
        fsize=max(limits.tmp, limits.output),
        network="bridge" if function.network is Network.EGRESS else "none",
        runtime=GVISOR_RUNTIME if function.isolation is Isolation.GVISOR else None,
        log_max_size=LOG_MAX_SIZE,
        start_nano_cpus=int(max(limits.cpu, STARTUP_CPUS) * 1e9) if boosted(function) else 0,
    )


def boosted(function: Function) -> bool:
    """Whether an instance of `function` starts with more CPU than its quota. Not under gVisor: its cgroup
    is not updated the same way under runsc."""
    return function.isolation is not Isolation.GVISOR and function.limits.cpu < STARTUP_CPUS


def cpu_quota(function: Function) -> int:
    """The function's CPU quota in billionths of a CPU."""
    return int(function.limits.cpu * 1e9)


@dataclass(frozen=True)
class HardeningCheck:
    name: str
    ok: bool
    detail: str


def check_container(inspect: dict[str, Any]) -> list[HardeningCheck]:
    """Each hardening property of the sandbox profile (docs/security.md), read from what the engine reports."""
    config, host = inspect.get("Config") or {}, inspect.get("HostConfig") or {}
    labels_ = config.get("Labels") or {}
    security = [str(s) for s in host.get("SecurityOpt") or []]
    ulimits = {u.get("Name"): u for u in host.get("Ulimits") or []}
    tmpfs = (host.get("Tmpfs") or {}).get("/tmp", "")
    mounts = inspect.get("Mounts") or []
    memory, swap = int(host.get("Memory") or 0), int(host.get("MemorySwap") or 0)
    want_network = "bridge" if labels_.get(f"{LABEL}.network") == Network.EGRESS.value else "none"
    want_runtime = GVISOR_RUNTIME if labels_.get(f"{LABEL}.isolation") == Isolation.GVISOR.value else "runc"
    socket_dir = str(labels_.get(f"{LABEL}.socket-dir", ""))  # set by `instances.start`
    return [
        *user_checks(config, host),
        HardeningCheck(
            "no-new-privileges",
            any(s.startswith("no-new-privileges") and not s.endswith("false") for s in security),
            ", ".join(security) or "(none)",
        ),
        *confinement_checks(host, want_runtime),
        HardeningCheck("/tmp size-limited tmpfs", "size=" in tmpfs, tmpfs or "(no tmpfs)"),
        HardeningCheck("memory limit, no swap", memory > 0 and swap == memory, f"memory={memory} swap={swap}"),
        HardeningCheck(
            "cpu quota",
            int(host.get("NanoCpus") or 0) > 0 or int(host.get("CpuQuota") or 0) > 0,
            f"NanoCpus={host.get('NanoCpus')} CpuQuota={host.get('CpuQuota')}/{host.get('CpuPeriod')}",
        ),
        HardeningCheck("pids limit", int(host.get("PidsLimit") or 0) > 0, f"PidsLimit={host.get('PidsLimit')}"),
        HardeningCheck(
            "nofile/fsize ulimits", "nofile" in ulimits and "fsize" in ulimits, ", ".join(sorted(ulimits)) or "(none)"
        ),
        HardeningCheck(
            f"network {want_network}", host.get("NetworkMode") == want_network, str(host.get("NetworkMode"))
        ),
        logs_check(host),
        HardeningCheck(
            "only its socket directory mounted",
            _only_socket_mount(mounts, socket_dir),
            ", ".join(f"{m.get('Source')}:{m.get('Destination')}" for m in mounts) or "(none)",
        ),
        # The sandbox can create, replace or fill nothing on the host: every mount is read-only.
        HardeningCheck(
            "no writable host path",
            all(m.get("RW", True) is False for m in mounts),
            ", ".join(f"{m.get('Destination')}:{'rw' if m.get('RW', True) is not False else 'ro'}" for m in mounts)
            or "(none)",
        ),
        HardeningCheck(
            f"runtime {want_runtime}", (host.get("Runtime") or "runc") == want_runtime, str(host.get("Runtime"))
        ),
    ]


def user_checks(config: dict[str, Any], host: dict[str, Any]) -> list[HardeningCheck]:
    """Who the process runs as (a non-root user, every capability dropped), from an engine report's Config and
    HostConfig: a container's (check_container) or a Swarm task's (swarmspec.check_task) alike."""
    user = str(config.get("User") or "")
    return [
        HardeningCheck(
            "non-root user", bool(user) and user.split(":")[0] not in ("0", "root"), user or "(image default: root)"
        ),
        HardeningCheck(
            "capabilities dropped",
            "ALL" in (host.get("CapDrop") or []) and not host.get("CapAdd"),
            f"drop={host.get('CapDrop')} add={host.get('CapAdd')}",
        ),
    ]


def confinement_checks(host: dict[str, Any], runtime: str) -> list[HardeningCheck]:
    """Not privileged, under a seccomp profile (`runtime`'s: the default one for runc, gVisor's own), on a
    read-only root."""
    security = [str(s) for s in host.get("SecurityOpt") or []]
    return [
        HardeningCheck("not privileged", not host.get("Privileged"), f"privileged={bool(host.get('Privileged'))}"),
        HardeningCheck(
            "seccomp profile",
            not any(s.replace("=", ":") == "seccomp:unconfined" for s in security),
            "default" if runtime == "runc" else "gVisor",
        ),
        HardeningCheck(
            "read-only root", bool(host.get("ReadonlyRootfs")), f"ReadonlyRootfs={host.get('ReadonlyRootfs')}"
        ),
    ]


def logs_check(host: dict[str, Any]) -> HardeningCheck:
    return HardeningCheck(
        "capped logs",
        (host.get("LogConfig") or {}).get("Config", {}).get("max-size") is not None,
        str((host.get("LogConfig") or {}).get("Config")),
    )


def _only_socket_mount(mounts: list[dict[str, Any]], socket_dir: str) -> bool:
    """One bind mount: the instance's own socket directory (the one its label names) at SOCKET_TARGET."""
    if len(mounts) != 1:
        return False
    mount = mounts[0]
    return (
        mount.get("Destination") == SOCKET_TARGET
        and mount.get("Type") == "bind"
        and bool(socket_dir)
        and mount.get("Source") == socket_dir
        and "docker.sock" not in str(mount.get("Source"))
    )
