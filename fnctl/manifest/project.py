"""The project: its root (where `fnctl.toml` lives), its settings, and the rule that paths stay inside it."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fnctl.errors import BadInput
from fnctl.manifest.model import Limits
from fnctl.manifest.schemas import schema_errors
from fnctl.manifest.units import parse_duration, parse_size

CONFIG_FILE = "fnctl.toml"
DEFAULT_BASE_IMAGE = "python:3.11-slim"
DEFAULT_GATEWAY = "127.0.0.1:8080"
DEFAULT_ENGINE_SOCKET = "/var/run/docker.sock"
DEFAULT_INSTANCE_ROOT = "/run/fnctl/swarm"


@dataclass(frozen=True)
class SwarmSettings:
    """`[swarm]` of fnctl.toml, for `engine = "swarm"` (docs/swarm.md): engine sockets as paths."""

    manager: str = DEFAULT_ENGINE_SOCKET
    node: str = DEFAULT_ENGINE_SOCKET
    instance_root: str = DEFAULT_INSTANCE_ROOT
    max_per_node: int = 0
    # http://host:port where the other nodes' gateways reach this one (None: from its listening address)
    advertise: str | None = None


@dataclass(frozen=True)
class Project:
    root: Path
    name: str
    manifest_paths: tuple[Path, ...]
    state_path: Path | None  # None: the default location (see `state.location.default_path`)
    gateway: str = DEFAULT_GATEWAY
    base_image: str = DEFAULT_BASE_IMAGE
    default_limits: Limits = field(default_factory=Limits)
    has_config: bool = True
    engine: str = "local"  # local | swarm
    swarm: SwarmSettings = field(default_factory=SwarmSettings)
    state_url: str | None = None  # fnctl.toml's state.url: a postgresql:// database instead of a file


def find_root(start: Path) -> Path | None:
    """The nearest directory at or above `start` holding fnctl.toml."""
    here = start.resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    return None


def load_project(start: Path | None = None) -> Project:
    """The project around `start` (default: the working directory); without fnctl.toml, that directory."""
    start = start or Path.cwd()
    root = find_root(start)
    if root is None:
        base = start.resolve()
        return Project(
            base, slug(base.name), (base / "manifests",), None, base_image=_env_base_image(), has_config=False
        )
    return _from_config(root, read_config(root / CONFIG_FILE))


def project_at(root: Path, default_name: str) -> Project:
    """The project whose root is `root` (a checkout: fnctl.toml is never searched for above it), named
    `default_name` when it has no fnctl.toml or the file names none."""
    path = root / CONFIG_FILE
    data = read_config(path) if path.is_file() else {}
    data.setdefault("project", {}).setdefault("name", slug(default_name))
    return _from_config(root, data)


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: invalid TOML: {exc}") from None
    problems = [f"{path}: {'.'.join(map(str, p)) or '(top)'}: {m}" for p, m in schema_errors("project", data)]
    if problems:
        raise BadInput("\n".join(problems))
    return data


def write_config(path: Path, name: str) -> None:
    config = {
        "project": {"name": name, "manifests": ["manifests"]},
        "gateway": {"address": DEFAULT_GATEWAY},
        "defaults": {"limits": {"timeout": "10s", "memory": "128Mi", "cpu": 0.5}},
    }
    path.write_text(tomli_w.dumps(config), encoding="utf-8")


def _from_config(root: Path, data: dict[str, Any]) -> Project:
    project = data.get("project", {})
    state = data.get("state", {}).get("path")
    state_url = data.get("state", {}).get("url")
    if state_url is not None and not str(state_url).startswith(("postgresql://", "postgres://")):
        raise BadInput(f"{root / CONFIG_FILE}: state.url must be a postgresql:// URL, not {str(state_url)[:40]!r}")
    limits = data.get("defaults", {}).get("limits", {})
    base = Limits()
    try:
        defaults = Limits(
            timeout=parse_duration(limits.get("timeout", base.timeout)),
            memory=parse_size(limits.get("memory", base.memory)),
            cpu=float(limits.get("cpu", base.cpu)),
            pids=int(limits.get("pids", base.pids)),
            tmp=parse_size(limits.get("tmp", base.tmp)),
            payload=parse_size(limits.get("payload", base.payload)),
            output=parse_size(limits.get("output", base.output)),
        )
    except ValueError as exc:
        raise BadInput(f"{root / CONFIG_FILE}: defaults.limits: {exc}") from None
    return Project(
        root=root,
        name=project.get("name", slug(root.name)),
        manifest_paths=tuple(root / p for p in project.get("manifests", ["manifests"])),
        state_path=(root / state) if state else None,
        gateway=data.get("gateway", {}).get("address", DEFAULT_GATEWAY),
        base_image=data.get("build", {}).get("baseImage") or _env_base_image(),
        default_limits=defaults,
        engine=data.get("engine", "local"),
        swarm=_swarm_settings(data.get("swarm", {})),
        state_url=str(state_url) if state_url else None,
    )


def _swarm_settings(table: dict[str, Any]) -> SwarmSettings:
    host = os.environ.get("DOCKER_HOST", "")
    default = host[len("unix://") :] if host.startswith("unix://") else DEFAULT_ENGINE_SOCKET
    manager = str(table.get("manager", "")).removeprefix("unix://") or default
    # The environment names this machine's own engine and address: one fnctl.toml serves every node.
    node = os.environ.get("FNCTL_SWARM_NODE") or str(table.get("node", ""))
    advertise = os.environ.get("FNCTL_SWARM_ADVERTISE") or table.get("advertise")
    return SwarmSettings(
        manager=manager,
        node=node.removeprefix("unix://") or manager,
        instance_root=str(table.get("instanceRoot", DEFAULT_INSTANCE_ROOT)),
        max_per_node=int(table.get("maxPerNode", 0)),
        advertise=str(advertise).rstrip("/") if advertise else None,
    )


def cache_dir() -> Path:
    """fnctl's cache for the user ($XDG_CACHE_HOME/fnctl): wheels, node tools and npm dependencies, base image
    probes, `invoke --local`'s data files and salt. Here, low in the layers, for all of them."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fnctl"


def _env_base_image() -> str:
    return os.environ.get("FNCTL_BASE_IMAGE") or DEFAULT_BASE_IMAGE


def slug(name: str) -> str:
    """`name` as a DNS label (what the project schema requires): ASCII letters and digits, '-' elsewhere."""
    cleaned = re.sub(r"-+", "-", "".join(c if c.isascii() and c.isalnum() else "-" for c in name.lower())).strip("-")
    return cleaned[:63].rstrip("-") or "project"


def inside(root: Path, path: Path) -> bool:
    """True when `path`, with every symlink resolved, lies within `root`."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
