"""The Docker engine's HTTP API on its Unix socket, with the standard library alone: the transport of
`engine.dockerio`'s calls in an instance's life (inspect, create, start, update, remove, list).

Why not the docker SDK for these: importing it costs ~0.2 s of CPU on these machines and a client makes two
round trips before its first call (the API version, a ping), which `fnctl invoke --local` paid on every run
for five small JSON calls. The SDK stays for what needs more (builds, log streams, events). Only dockerio
imports this module; it speaks HTTP and JSON, and knows nothing of containers.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_SOCKET = "/var/run/docker.sock"
TIMEOUT = 60.0  # as the SDK's client is made (`from_env(timeout=60)`)
MAX_BODY = 64 * 2**20  # no answer of these calls comes near; a bigger one is a broken peer


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # the decoded JSON, or None for an empty body

    @property
    def message(self) -> str:
        """The engine's explanation of an error (its JSON `message`)."""
        if isinstance(self.body, dict) and "message" in self.body:
            return str(self.body["message"])
        return f"HTTP {self.status}"


class Unreachable(OSError):
    """No engine answered on the socket, or the connection broke mid-call."""


def socket_path() -> str | None:
    """The engine's Unix socket, from DOCKER_HOST as the SDK reads it; None when the engine is reached some
    other way (tcp://, ssh://): the SDK then carries every call."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :] or DEFAULT_SOCKET
    return None


def path(template: str, *names: str) -> str:
    """An API path with each name (an ID, an image reference) quoted into it."""
    return template.format(*(quote(name, safe="") for name in names))


def request(
    method: str,
    where: str,
    *,
    query: dict[str, Any] | None = None,
    body: Any = None,
    timeout: float = TIMEOUT,
    engine: str | None = None,
) -> Reply:
    """One call on a connection of its own (a Unix-socket connect costs microseconds), to the engine on the
    socket `engine` (default: DOCKER_HOST's). Unversioned paths: the engine answers in its own current API
    version."""
    target = engine or socket_path()
    if target is None:
        raise Unreachable("the engine is not on a Unix socket")
    payload = b"" if body is None else json.dumps(body).encode()
    line = where + ("?" + urlencode(query) if query else "")
    head = f"{method} {line} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Length: {len(payload)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(target)
            conn.sendall(head.encode("latin-1") + b"\r\n" + payload)
            status, raw = _read_response(conn)
    except OSError as exc:
        raise Unreachable(f"{target}: {exc.strerror or exc}") from None
    try:
        decoded = json.loads(raw) if raw.strip() else None
    except ValueError:
        decoded = {"message": raw.decode("utf-8", "replace").strip()}
    return Reply(status, decoded)


def _read_response(conn: socket.socket) -> tuple[int, bytes]:
    reader = conn.makefile("rb")
    status_line = reader.readline(65536).decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise Unreachable(f"not an HTTP answer: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    while True:
        header = reader.readline(65536).decode("latin-1")
        if header in ("\r\n", "\n", ""):
            break
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            size = int(reader.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            body += reader.read(size)
            reader.readline(16)  # the chunk's CRLF
            if len(body) > MAX_BODY:
                raise Unreachable("the engine's answer is too large")
        return int(parts[1]), bytes(body)
    length = headers.get("content-length")
    data = reader.read(int(length)) if length is not None else reader.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise Unreachable("the engine's answer is too large")
    return int(parts[1]), data
