"""The sandbox profile as a Docker Swarm service (docs/swarm.md), as pure functions: a revision's
ContainerSpec (`sandbox.container_spec`, the one place a sandbox is decided) → the engine's ServiceSpec, and a
task container's `docker inspect` → the hardening rows of `fnctl sandbox check` under Swarm.

What a service cannot say, and what stands in for it:
- no `SecurityOpt` (no-new-privileges): the runtime sets PR_SET_NO_NEW_PRIVS on itself before it imports the
  handler, the runtime image has no set-uid or set-gid file, and a node daemon may set it for every container
  (`"no-new-privileges": true` in daemon.json). The check reads the task's process status, whoever set it.
- no runtime per service (gVisor): a gVisor function is placed only on nodes whose daemon runs runsc by default
  and says so with the engine label `io.fnctl.default-runtime=runsc`.
- no swap limit: Swarm sets the memory limit only; the row holds where the node has no swap.
- no CPU boost at start: a task's resources cannot change without replacing it, so an instance starts at its
  function's own CPU quota.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from fnctl.engine.sandbox import (
    LABEL,
    ContainerSpec,
    HardeningCheck,
    confinement_checks,
    logs_check,
    user_checks,
)

# Swarm's own template placeholders, expanded per task in a mount's source (swarmkit: template.ExpandContainerSpec).
NODE_PLACEHOLDER = "{{.Node.Hostname}}"
SLOT_PLACEHOLDER = "{{.Task.Slot}}"
RUNTIME_LABEL = f"{LABEL}.default-runtime"  # an engine label of the node daemons (daemon.json `labels`)


@dataclass(frozen=True)
class Placement:
    """Where a revision's service may run and how many of it."""

    replicas: int
    max_per_node: int = 0  # 0: no limit (Swarm spreads tasks over the nodes anyway)
    gvisor: bool = False


def socket_dir(instance_root: str, hostname: str, service: str, slot: int) -> PurePosixPath:
    """A task's instance directory on its node: the bind mount's source with the placeholders expanded."""
    return PurePosixPath(instance_root) / hostname / service / str(slot)


def mount_source(instance_root: str, service: str) -> str:
    return str(PurePosixPath(instance_root) / NODE_PLACEHOLDER / service / SLOT_PLACEHOLDER)


def service_spec(spec: ContainerSpec, placement: Placement, *, instance_root: str) -> dict[str, Any]:
    """The engine's ServiceSpec for `spec` (API 1.41): every property of the single-host profile that a
    service can carry, and each task's own instance directory on its node, read-only."""
    constraints = [f"engine.labels.{RUNTIME_LABEL}==runsc"] if placement.gvisor else []
    container: dict[str, Any] = {
        "Image": spec.image,
        "User": spec.user,
        "Env": [f"{k}={v}" for k, v in spec.environment.items()],
        "Labels": dict(spec.labels),
        "ReadOnly": spec.read_only,
        "CapabilityDrop": list(spec.cap_drop),
        "Ulimits": [
            {"Name": "nofile", "Soft": spec.nofile, "Hard": spec.nofile},
            {"Name": "fsize", "Soft": spec.fsize, "Hard": spec.fsize},
        ],
        "Mounts": [
            {
                "Type": "bind",
                "Source": mount_source(instance_root, spec.name),
                "Target": spec.socket_target,
                "ReadOnly": spec.socket_read_only,
            },
            {"Type": "tmpfs", "Target": "/tmp", "TmpfsOptions": {"SizeBytes": spec.tmp_size, "Mode": 0o1777}},
        ],
        # SIGTERM lets the runtime finish what it accepted (docs/protocol.md), as `instances.remove(drain=True)`.
        "StopGracePeriod": 10 * 10**9,
    }
    return {
        "Name": spec.name,
        "Labels": dict(spec.labels),
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {"Limits": {"NanoCPUs": spec.nano_cpus, "MemoryBytes": spec.memory, "Pids": spec.pids}},
            "RestartPolicy": {"Condition": "any", "Delay": 10**9, "MaxAttempts": 0},
            "Placement": {"Constraints": constraints, "MaxReplicas": placement.max_per_node},
            "LogDriver": {"Name": "json-file", "Options": {"max-size": spec.log_max_size, "max-file": "1"}},
            # No "Networks": with the node daemons' `--bridge=none` a task gets a loopback interface only.
        },
        "Mode": {"Replicated": {"Replicas": placement.replicas}},
        # A changed spec rolls out one task at a time, the old one stopped first (one instance per slot and
        # per directory), and Swarm rolls back by itself when a new task fails.
        "UpdateConfig": {"Parallelism": 1, "Order": "stop-first", "Monitor": 10**9, "FailureAction": "rollback"},
        "RollbackConfig": {"Parallelism": 0, "Order": "stop-first"},
    }


def task_slot(task_name: str) -> int | None:
    """The slot of a task container's `com.docker.swarm.task.name` (`service.slot.taskid`)."""
    parts = task_name.rsplit(".", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def no_new_privs(proc_status: str) -> bool:
    """Whether a `/proc/<pid>/status` text says NoNewPrivs: 1."""
    return any(line.split() == ["NoNewPrivs:", "1"] for line in proc_status.splitlines())


def interfaces(net_dev: str) -> list[str]:
    """The network interfaces a `/proc/<pid>/net/dev` text lists."""
    return sorted(line.split(":", 1)[0].strip() for line in net_dev.splitlines()[2:] if ":" in line)


def check_task(
    inspect: dict[str, Any], *, proc_status: str, net_dev: str, node_runtime: str, node_swap: int, socket_dir: str
) -> list[HardeningCheck]:
    """Each hardening property of the sandbox profile for a Swarm task's container, read from what its node's
    engine reports, the status and network devices of the task's first process (`proc_status`, `net_dev`:
    what the kernel says, whoever set it), the node daemon's default runtime and the node's swap size."""
    config, host = inspect.get("Config") or {}, inspect.get("HostConfig") or {}
    labels = config.get("Labels") or {}
    ulimits = {u.get("Name") for u in host.get("Ulimits") or []}
    mounts = host.get("Mounts") or []
    binds = [m for m in mounts if m.get("Type") == "bind"]
    tmpfs = [m for m in mounts if m.get("Type") == "tmpfs" and m.get("Target") == "/tmp"]
    tmp_size = int(((tmpfs[0].get("TmpfsOptions") or {}).get("SizeBytes") or 0) if tmpfs else 0)
    memory = int(host.get("Memory") or 0)
    devices = interfaces(net_dev)
    want_runtime = "runsc" if labels.get(f"{LABEL}.isolation") == "gvisor" else "runc"
    runtime = str(host.get("Runtime") or node_runtime)
    return [
        *user_checks(config, host),
        HardeningCheck(
            "no-new-privileges",
            no_new_privs(proc_status),
            "NoNewPrivs of the task's process (set by fnctl's runtime, or the node daemon)",
        ),
        *confinement_checks(host, runtime),
        HardeningCheck("/tmp size-limited tmpfs", tmp_size > 0, f"SizeBytes={tmp_size}" if tmpfs else "(no tmpfs)"),
        HardeningCheck(
            "memory limit, no swap",
            memory > 0 and (int(host.get("MemorySwap") or 0) == memory or node_swap == 0),
            f"memory={memory}, node swap={node_swap} (Swarm sets no swap limit)",
        ),
        HardeningCheck("cpu quota", int(host.get("NanoCpus") or 0) > 0, f"NanoCpus={host.get('NanoCpus')}"),
        HardeningCheck("pids limit", int(host.get("PidsLimit") or 0) > 0, f"PidsLimit={host.get('PidsLimit')}"),
        HardeningCheck(
            "nofile/fsize ulimits", {"nofile", "fsize"} <= ulimits, ", ".join(sorted(map(str, ulimits))) or "(none)"
        ),
        # With `--bridge=none` on the node daemon, a service without networks gets a namespace of its own
        # holding only a loopback interface, though the engine still names the task's network "bridge".
        HardeningCheck("network none (loopback only)", devices == ["lo"], ", ".join(devices) or "(unreadable)"),
        logs_check(host),
        HardeningCheck(
            "only its socket directory mounted",
            len(binds) == 1 and binds[0].get("Source") == socket_dir and binds[0].get("Target") == "/run/fnctl",
            ", ".join(f"{m.get('Source')}:{m.get('Target')}" for m in binds) or "(none)",
        ),
        HardeningCheck(
            "no writable host path",
            all(m.get("ReadOnly") is True for m in binds),
            ", ".join(f"{m.get('Target')}:{'ro' if m.get('ReadOnly') else 'rw'}" for m in binds) or "(none)",
        ),
        HardeningCheck(f"runtime {want_runtime}", runtime == want_runtime, f"{runtime} (the node daemon's default)"),
    ]
