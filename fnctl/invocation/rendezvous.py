"""Who may connect to a host process, and where: its own listening socket in an instance's directory
(`Rendezvous`) and the peer check that admits only the expected container's process (SO_PEERCRED, cgroup).

The instance's directory is made by the host and mounted read-only into the sandbox, so a sandbox can create,
replace or fill nothing there. Each host process that wants to talk to an instance puts up its OWN listening
socket in that directory (a fresh name `h-<pid>-<random>.sock`, never shared, unlinked once the runtime has
connected or the process gives up; the asyncio transport keeps it while connected, for the runtime's worker
processes: docs/protocol.md, "Worker connections"); the runtime watches the directory and connects out to each
listener once (connecting to a Unix socket needs no write access to its directory). The host accepts a
connection only from the process it expects (`peer`: for a container, a process in that container's cgroup,
which under gVisor is the sandbox's gofer), and closes any other, still listening: every connection to a
listener, the first and each worker's, passes `admit`.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import struct
import time
from collections.abc import Callable

from fnctl.invocation.protocol import ConnectionLost, TransportError

# Whether the process with this pid (the connecting peer, from SO_PEERCRED) is the runtime we mean to talk to.
PeerCheck = Callable[[int], bool]

LISTENER_PREFIX, LISTENER_SUFFIX = "h-", ".sock"  # the only names the runtime connects to
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
_LISTENER_NAME = re.compile(r"^(?:h-|\.)(\d+)-[0-9a-f]+(?:\.sock|\.bind)$")
_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")


def cgroup_names_container(cgroup: str, container_id: str) -> bool:
    """Whether a `/proc/<pid>/cgroup` text puts the process inside the container `container_id` (its full
    64-hex ID): a path component is the ID itself (cgroupfs driver: `/docker/<id>`) or its systemd scope
    (`docker-<id>.scope`). Pure."""
    if not _CONTAINER_ID.match(container_id):
        return False  # an abbreviated or empty ID could match more than one container
    scope = f"-{container_id}.scope"
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        if any(part == container_id or part.endswith(scope) for part in path.split("/")):
            return True
    return False


def container_peer(container_id: str) -> PeerCheck:
    """A peer check that accepts only processes of the container `container_id` (runc: the runtime itself;
    gVisor: the sandbox's gofer, which makes the host-side connection for the sandbox)."""

    def check(pid: int) -> bool:
        if pid <= 0:  # 0: the peer is in a PID namespace this process cannot see
            return False
        try:
            with open(f"/proc/{pid}/cgroup", encoding="utf-8") as fh:
                return cgroup_names_container(fh.read(), container_id)
        except OSError:
            return False  # gone already, or not ours to read

    return check


def peer_pid(conn: socket.socket) -> int:
    """The pid of the process that connected `conn` (SO_PEERCRED: fixed by the kernel at connect time)."""
    pid, _uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(pid)


class Rendezvous:
    """This process's own listening socket in an instance's directory, where the runtime connects to it.

    The name is fresh (`h-<pid>-<random>.sock`): no two host processes ever share or replace one, and the host
    only ever binds and unlinks names it made itself, in a directory the sandbox cannot write. The socket is
    bound under a staging name, given its mode, listening, and only then renamed into place, so that the
    runtime (which tries each name once) never meets a half-made listener.
    """

    def __init__(self, socket_dir: str) -> None:
        token = f"{os.getpid()}-{secrets.token_hex(8)}"
        self.socket_dir = socket_dir
        self.path = os.path.join(socket_dir, f"{LISTENER_PREFIX}{token}{LISTENER_SUFFIX}")
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise TransportError(f"the instance directory {socket_dir} is too long for a Unix socket path")
        _remove_stale_listeners(socket_dir)
        staging = os.path.join(socket_dir, f".{token}.bind")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(staging)
            try:
                # The sandbox's uid must be able to connect; the instance directory's private parent keeps every
                # other local user out, and the peer check refuses any other process that gets in anyway.
                os.chmod(staging, 0o666)
                sock.listen(16)
                os.rename(staging, self.path)
            except BaseException:
                _unlink(staging)
                raise
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot listen in the instance directory {socket_dir}: {exc}") from None
        self.sock: socket.socket | None = sock
        self.refused = 0  # connections closed by the peer check

    def accept(self, deadline: float, peer: PeerCheck) -> socket.socket:
        """The first connection whose peer passes `peer`, others closed; TimeoutError at `deadline`."""
        while True:
            sock = self.sock
            if sock is None:
                raise ConnectionLost("the listener was closed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            conn, _ = sock.accept()
            if self.admit(conn, peer):
                conn.settimeout(None)
                return conn

    def admit(self, conn: socket.socket, peer: PeerCheck) -> bool:
        """Keep `conn` when its peer passes `peer`; close it otherwise (nothing is read from it or sent)."""
        try:
            allowed = peer(peer_pid(conn))
        except OSError:
            allowed = False
        if not allowed:
            self.refused += 1
            conn.close()
        return allowed

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
            _unlink(self.path)


def _remove_stale_listeners(socket_dir: str) -> None:
    """Unlink the listeners (and staging names) of host processes that died without doing it (`kill -9`):
    each name carries its creator's pid, and a pid that no longer runs listens on nothing."""
    try:
        entries = os.listdir(socket_dir)
    except OSError:
        return  # the bind reports a missing directory
    for name in entries:
        match = _LISTENER_NAME.match(name)
        if match is not None and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            _unlink(os.path.join(socket_dir, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by another user
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
