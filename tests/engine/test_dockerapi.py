"""dockerio's calls over the engine's HTTP API without the SDK (engine.dockerapi): the same create request as the
SDK's, answers read whole (chunked or not), the engine's errors and absence as fnctl's errors."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import docker
import docker.types
import pytest

from fnctl.engine import dockerapi, dockerio
from fnctl.engine.sandbox import ContainerSpec
from fnctl.errors import EngineUnavailable, FnctlError

SPEC = ContainerSpec(
    name="fnctl-x-1",
    image="img:1",
    user="65534:65534",
    environment={"A": "1", "B": "two=2"},
    labels={"io.fnctl.project": "p"},
    socket_dir="/tmp/sock",
    socket_target="/run/fnctl",
    memory=128 * 2**20,
    nano_cpus=500_000_000,
    pids=64,
    tmp_size=16 * 2**20,
    nofile=1024,
    fsize=2**30,
    network="none",
    runtime="runsc",
    log_max_size="1m",
)


def _sdk_config(spec: ContainerSpec) -> dict[str, object]:
    """What the docker SDK sends to create `spec`'s container (the arguments dockerio used to give it)."""
    api = docker.APIClient(base_url="unix:///nonexistent", version="1.41")
    types = docker.types
    host_config = api.create_host_config(
        mounts=[types.Mount(target=spec.socket_target, source=spec.socket_dir, type="bind", read_only=True)],
        read_only=spec.read_only,
        cap_drop=list(spec.cap_drop),
        security_opt=list(spec.security_opt),
        tmpfs={"/tmp": f"rw,nosuid,nodev,noexec,size={spec.tmp_size},mode=1777"},
        mem_limit=spec.memory,
        memswap_limit=spec.memory,
        # As fnctl's SDK call gave it: a CFS quota per 100 ms, the starting one when there is one.
        cpu_period=100_000,
        cpu_quota=(spec.start_nano_cpus or spec.nano_cpus) // 10_000,
        pids_limit=spec.pids,
        ulimits=[
            types.Ulimit(name="nofile", soft=spec.nofile, hard=spec.nofile),
            types.Ulimit(name="fsize", soft=spec.fsize, hard=spec.fsize),
        ],
        network_mode=spec.network,
        runtime=spec.runtime,
        privileged=False,
        log_config=types.LogConfig(type="json-file", config={"max-size": spec.log_max_size, "max-file": "1"}),
    )
    config = api.create_container_config(
        spec.image,
        None,
        user=spec.user,
        environment=spec.environment,
        labels=spec.labels,
        host_config=host_config,
        network_disabled=True,
    )
    return {
        k: v for k, v in config.items() if v is not None and k not in ("Tty", "OpenStdin", "StdinOnce", "AttachStdin")
    }


@pytest.mark.parametrize("spec", [SPEC, replace(SPEC, start_nano_cpus=2_000_000_000)])
def test_the_create_request_is_the_one_the_sdk_sends(spec: ContainerSpec) -> None:
    ours = dockerio.container_config(spec)
    sdk = _sdk_config(spec)
    assert {k: v for k, v in ours.items() if k != "HostConfig"} == {k: v for k, v in sdk.items() if k != "HostConfig"}
    host, sdk_host = dict(ours["HostConfig"]), dict(sdk["HostConfig"])  # type: ignore[call-overload]
    assert host.pop("Privileged") is False and "Privileged" not in sdk_host  # the SDK leaves false out
    assert host == sdk_host


def test_a_start_quota_replaces_only_the_cpu_quota() -> None:
    boosted = dockerio.container_config(replace(SPEC, start_nano_cpus=2_000_000_000))
    plain = dockerio.container_config(SPEC)
    assert (boosted["HostConfig"]["CpuQuota"], plain["HostConfig"]["CpuQuota"]) == (200_000, 50_000)
    assert "NanoCpus" not in boosted["HostConfig"]  # the engine's update could not change NanoCpus set at create
    boosted["HostConfig"]["CpuQuota"] = plain["HostConfig"]["CpuQuota"]
    assert boosted == plain


@pytest.fixture
def engine_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """A fake engine on a Unix socket: answers each connection with the next canned response."""
    path = tmp_path / "engine.sock"
    responses: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(responses.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    yield responses
    server.close()
    thread.join(timeout=5)


def _answer(status: str, body: bytes) -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_chunked_and_sized_answers_are_read_whole(engine_socket: list[bytes]) -> None:
    engine_socket.append(
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{"Id": \r\n6\r\n"abc"}\r\n0\r\n\r\n'
    )
    engine_socket.append(_answer("200 OK", b'{"Id": "d"}'))
    assert dockerio.image_id("one") == "abc"
    assert dockerio.image_id("two") == "d"


def test_the_engines_refusal_and_absence_are_fnctl_errors(engine_socket: list[bytes]) -> None:
    engine_socket.append(_answer("404 Not Found", b'{"message": "No such image: x"}'))
    engine_socket.append(_answer("409 Conflict", b'{"message": "in use!"}'))
    engine_socket.append(_answer("404 Not Found", b'{"message": "No such container: gone"}'))
    assert dockerio.image_id("x") is None
    with pytest.raises(FnctlError, match=r"starting container fnctl-x-1: the Docker engine refused: in use!"):
        dockerio.run_container(SPEC)
    dockerio.kill("gone")  # already gone is fine
    assert not engine_socket  # every call reached the engine


def test_no_engine_on_the_socket_says_how_to_start_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    with pytest.raises(EngineUnavailable, match="no Docker engine answers .*scripts/setup.sh"):
        dockerio.image_id("anything")


def test_where_the_engine_is() -> None:
    assert dockerapi.path("/images/{}/json", "fnctl/a-b:1") == "/images/fnctl%2Fa-b%3A1/json"


@pytest.mark.parametrize(
    ("host", "socket_path"),
    [("", "/var/run/docker.sock"), ("unix:///run/d.sock", "/run/d.sock"), ("tcp://127.0.0.1:2375", None)],
)
def test_the_socket_comes_from_docker_host(monkeypatch: pytest.MonkeyPatch, host: str, socket_path: str | None) -> None:
    monkeypatch.setenv("DOCKER_HOST", host)
    assert dockerapi.socket_path() == socket_path


@pytest.mark.docker
def test_a_real_engine_answers_and_a_missing_image_is_none(docker_client: docker.DockerClient, base_image: str) -> None:
    assert dockerio.image_id(base_image) == docker_client.images.get(base_image).id
    assert dockerio.image_id("fnctl/no-such-image:0") is None
    with pytest.raises(FnctlError, match="not found"):
        dockerio.inspect_container("no-such-container")


def _chunked(status: str, *pieces: bytes) -> bytes:
    """An answer sent in `pieces` (chunked transfer encoding), as the engine streams logs and events."""
    body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces)
    return f"HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + body + b"0\r\n\r\n"


def _frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_logs_are_demultiplexed_across_chunk_boundaries(engine_socket: list[bytes]) -> None:
    frames = _frame(1, b"out 1\n") + _frame(2, b"err 1\n") + _frame(1, b"out 2\n")
    engine_socket.append(_chunked("200 OK", frames[:3], frames[3:11], frames[11:]))
    engine_socket.append(_chunked("200 OK", frames[:5], frames[5:]))
    assert dockerio.logs("c1", 30) == "out 1\nerr 1\nout 2\n"
    assert list(dockerio.stream_logs("c1", since=None, follow=False)) == ["out 1", "err 1", "out 2"]


def test_a_probe_that_fails_says_its_exit_code_and_stderr_and_is_removed(engine_socket: list[bytes]) -> None:
    engine_socket.append(_answer("201 Created", b'{"Id": "p1"}'))  # create
    engine_socket.append(_answer("204 No Content", b""))  # start
    engine_socket.append(_answer("200 OK", b'{"StatusCode": 3}'))  # wait
    engine_socket.append(_chunked("200 OK", _frame(1, b"partial"), _frame(2, b"boom")))  # logs
    engine_socket.append(_answer("204 No Content", b""))  # the removal
    with pytest.raises(FnctlError, match=r"python3 in img:1 exited with 3: b'boom'"):
        dockerio.run_once("img:1", ["-c", "x"], entrypoint="python3")
    assert not engine_socket  # the container was removed too


def test_an_oom_event_is_read_from_the_engines_event_stream(engine_socket: list[bytes]) -> None:
    engine_socket.append(_chunked("200 OK", b'{"status": "oom", "id": "c1"}\n'))
    engine_socket.append(_chunked("200 OK"))
    assert dockerio._oom_event("c1") is True
    assert dockerio._oom_event("c1") is False


@pytest.mark.parametrize("host", ["ssh://me@far", "tcp://"])
def test_an_engine_fnctl_cannot_reach_says_how(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("DOCKER_HOST", host)
    with pytest.raises(EngineUnavailable, match=r"unix:// or tcp://"):
        dockerio.image_id("anything")


def test_a_tcp_engine_is_reached_over_plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    answers: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            answers.append(conn.recv(65536))
            conn.sendall(_answer("200 OK", b'{"Id": "sha256:t"}'))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{server.getsockname()[1]}")
    try:
        assert dockerio.image_id("x:1") == "sha256:t"
    finally:
        thread.join(timeout=5)
        server.close()
    assert answers[0].startswith(b"GET /images/x%3A1/json HTTP/1.1\r\n")
