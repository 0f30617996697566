"""The Docker engine's HTTP API, with the standard library alone: the transport of every `engine.dockerio`
call, over the engine's Unix socket or a local TCP port. Answers are read whole
(`request`) or as they come (`Stream`: a build's progress, a followed log).

Why not the docker SDK: importing it costs ~0.2 s of CPU on these machines and a client makes two round trips
before its first call (the API version, a ping), which `fnctl invoke --local` paid on every run for five small
JSON calls. Only dockerio imports this module; it speaks HTTP, and knows nothing of containers.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_SOCKET = "/var/run/docker.sock"
TIMEOUT = 60.0  # as the SDK's client is made (`from_env(timeout=60)`)
MAX_BODY = 64 * 2**20  # no answer of these calls comes near; a bigger one is a broken peer


@dataclass(frozen=True)
class EngineReply:
    status: int
    body: Any  # the decoded JSON, or None for an empty body or one that is not JSON
    content: bytes = b""  # the body as it came (log lines, a stream of JSON objects)

    @property
    def message(self) -> str:
        """The engine's explanation of an error (its JSON `message`)."""
        if isinstance(self.body, dict) and "message" in self.body:
            return str(self.body["message"])
        return self.content.decode("utf-8", "replace").strip() or f"HTTP {self.status}"


class Unreachable(OSError):
    """No engine answered on the socket, or the connection broke mid-call."""


def socket_path() -> str | None:
    """The engine's Unix socket, from DOCKER_HOST as the SDK reads it; None when the engine is reached over
    TCP (tcp://host:port)."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :] or DEFAULT_SOCKET
    return None


def _connect(timeout: float | None, engine: str | None = None) -> socket.socket:
    """A connection to the engine: the Unix socket `engine` (a Swarm node's, engine.swarmio), else its Unix
    socket or TCP as DOCKER_HOST says."""
    target = engine or socket_path()
    if target is not None:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.settimeout(timeout)
            conn.connect(target)
        except OSError as exc:
            conn.close()
            raise Unreachable(f"{target}: {exc.strerror or exc}") from None
        return conn
    host = os.environ.get("DOCKER_HOST", "")
    parsed = urlsplit(host)
    # The engine must run on this machine (it bind-mounts the instances' socket directories), so plain
    # HTTP to a local port is the one other way in; TLS or ssh:// would be for a remote engine.
    if parsed.scheme != "tcp" or not parsed.hostname or os.environ.get("DOCKER_TLS_VERIFY"):
        raise Unreachable(
            f"DOCKER_HOST={host!r}: fnctl reaches the engine of this machine over unix:// or tcp:// (plain HTTP)"
        )
    try:
        return socket.create_connection((parsed.hostname, parsed.port or 2375), timeout=timeout)
    except OSError as exc:
        raise Unreachable(f"{host}: {exc.strerror or exc}") from None


def path(template: str, *names: str) -> str:
    """An API path with each name (an ID, an image reference) quoted into it."""
    return template.format(*(quote(name, safe="") for name in names))


def request(
    method: str,
    where: str,
    *,
    query: dict[str, Any] | None = None,
    body: Any = None,
    timeout: float | None = TIMEOUT,
    engine: str | None = None,
) -> EngineReply:
    """One call on a connection of its own (a Unix-socket connect costs microseconds), to the engine on the
    socket `engine` (default: DOCKER_HOST's), its answer read whole. Unversioned paths: the engine answers in
    its own current API version."""
    with Stream(method, where, query=query, body=body, timeout=timeout, engine=engine) as answer:
        pieces, size = [], 0
        for piece in answer.chunks():
            size += len(piece)
            if size > MAX_BODY:
                raise Unreachable("the engine's answer is too large")
            pieces.append(piece)
        raw = b"".join(pieces)
    try:
        decoded = json.loads(raw) if raw.strip() else None
    except ValueError:
        decoded = None
    return EngineReply(answer.status, decoded, raw)


class Stream:
    """One call whose answer is read as it comes (a build's output, a followed log): `status`, then
    `chunks()`. A body is JSON (any value) or, as `upload`, a file sent as it is (a build context)."""

    def __init__(
        self,
        method: str,
        where: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        upload: tuple[BinaryIO, str] | None = None,
        timeout: float | None = TIMEOUT,
        engine: str | None = None,
    ):
        line = where + ("?" + urlencode(query) if query else "")
        head = f"{method} {line} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
        payload = b"" if body is None else json.dumps(body).encode()
        if upload is not None:
            source, content_type = upload
            size = os.fstat(source.fileno()).st_size
            head += f"Content-Type: {content_type}\r\nContent-Length: {size}\r\n"
        else:
            head += f"Content-Length: {len(payload)}\r\n"
            if body is not None:
                head += "Content-Type: application/json\r\n"
        self._conn = _connect(timeout, engine)
        try:
            self._conn.sendall(head.encode("latin-1") + b"\r\n" + payload)
            if upload is not None:
                self._conn.sendfile(upload[0])
            self._reader = self._conn.makefile("rb")
            self.status, self._headers = _read_head(self._reader)
        except OSError as exc:
            self._conn.close()
            raise Unreachable(f"the engine: {exc.strerror or exc}") from None

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()
        self._conn.close()

    def chunks(self) -> Iterator[bytes]:
        """The body, piece by piece as the engine sends it (chunked or not): a followed log has no end, so
        only `request`, which keeps it all, limits its size."""
        try:
            yield from self._pieces()
        except Unreachable:
            raise
        except OSError as exc:
            raise Unreachable(f"the engine: {exc.strerror or exc}") from None

    def _pieces(self) -> Iterator[bytes]:
        reader = self._reader
        if "chunked" in self._headers.get("transfer-encoding", "").lower():
            while True:
                size = int(reader.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                yield reader.read(size)
                reader.readline(16)  # the chunk's CRLF
        length = self._headers.get("content-length")
        left = int(length) if length is not None else -1  # -1: until the engine closes
        while left != 0:
            piece = reader.read1(min(left, 65536) if left > 0 else 65536)
            if not piece:
                return
            left = max(left - len(piece), 0) if left > 0 else left
            yield piece


def _read_head(reader: BinaryIO) -> tuple[int, dict[str, str]]:
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
    return int(parts[1]), headers
