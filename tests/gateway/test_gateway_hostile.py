"""The gateway against hostile and malformed clients (issue items 3 and 4), on a real aiohttp server bound to
127.0.0.1 with the fake pool of test_gateway: slow request bodies and slow headers from other loopback
addresses (127.0.0.2, ...) while a well-behaved client keeps calling, the per-address connection cap, and
every kind of malformed input, each answered 4xx with one line, audited exactly once, and never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from polling import eventually
from test_gateway import Harness, _spec, _switch, running

from fnctl.gateway import router
from fnctl.gateway.app import GatewayLimits

LIMITS: dict[str, Any] = {
    "timeout_margin": 0.5,
    "read_timeout": 1.0,
    "body_timeout": 1.0,
    "max_body": 10_000,
    "max_header": 2048,
    "max_concurrent": 3,
    "reload_interval": 0.02,
    "drain_timeout": 5,
}


def run(test: Callable[[Harness], Awaitable[None]], **limits: Any) -> None:
    async def main() -> None:
        async with running(GatewayLimits(**{**LIMITS, **limits})) as harness:
            await test(harness)

    asyncio.run(asyncio.wait_for(main(), timeout=90))


async def _connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the gateway on 127.0.0.1:`port` from `source`, another address of the loopback network."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


CHUNKED = (
    b"POST /invoke/pub HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n1\r\n[\r\n"
)


class Attack:
    """Connections from other loopback addresses that never finish their request: each sends `opening`, then
    `trickle` now and then; whenever the gateway cuts one, it is opened again, until `stop`."""

    def __init__(self, port: int, opening: bytes, trickle: bytes) -> None:
        self.port, self.opening, self.trickle = port, opening, trickle
        self.cuts = 0  # connections the gateway closed on the attacker (it bounded them; we never give up)
        self.open = 0  # connections that sent their opening and are not cut yet
        self.stop = asyncio.Event()

    async def connection(self, source: str) -> None:
        while not self.stop.is_set():
            try:
                reader, writer = await _connect(self.port, source)
            except OSError:
                continue
            try:
                writer.write(self.opening)
                await writer.drain()
                self.open += 1
                while not self.stop.is_set():
                    try:
                        if await asyncio.wait_for(reader.read(65536), 0.2) == b"":
                            self.cuts, self.open = self.cuts + 1, self.open - 1
                            break
                    except TimeoutError:
                        writer.write(self.trickle)  # the never-ending body (or headers), a little at a time
                        await writer.drain()
            except OSError:
                self.cuts, self.open = self.cuts + 1, self.open - 1
            finally:
                writer.close()


async def _under_attack(
    h: Harness, opening: bytes, trickle: bytes, sources: tuple[str, ...], per_source: int
) -> tuple[list[int], Attack]:
    """The statuses a well-behaved client from 127.0.0.1 gets, one request at a time on keep-alive, while
    `per_source` attacker connections from each of `sources` are open; it keeps calling until it made 200
    requests AND the gateway cut every attacker connection once (so it called through whole attack cycles)."""
    attack = Attack(h.port, opening, trickle)
    tasks = [asyncio.create_task(attack.connection(source)) for source in sources for _ in range(per_source)]
    statuses: list[int] = []
    try:
        await eventually(lambda: attack.open >= len(tasks), "every attacker connection to be open", timeout=20)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while len(statuses) < 200 or attack.cuts < len(tasks):
                assert len(statuses) < 20_000, f"the gateway cut only {attack.cuts} attacker connections"
                try:
                    async with session.post(h.url + "/invoke/pub", json={"echo": len(statuses)}) as r:
                        ok = r.status == 200 and await r.json() == len(statuses)
                        statuses.append(-1 if r.status == 200 and not ok else r.status)
                except (aiohttp.ClientError, TimeoutError):
                    statuses.append(0)
    finally:
        attack.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return statuses, attack


def _open_from(h: Harness, sources: tuple[str, ...]) -> int:
    """Connections the gateway holds open from `sources` (its own count, by client address)."""
    counts = _server(h).per_client
    assert counts is not None
    return sum(counts.open.get(s, 0) for s in sources)


def _server(h: Harness) -> Any:
    from fnctl.gateway.server import _Server

    server = h.runner.server
    assert isinstance(server, _Server)
    return server


def test_never_ending_chunked_bodies_do_not_starve_a_function() -> None:
    """Issue item 3: 300 connections sending a chunked body that never ends held the function's concurrency
    (here 3) until the read timeout; a good client got 5.9 % through. The body is read before the request
    takes a concurrency unit, under its own deadline: the good client keeps >= 99 %."""

    async def check(h: Harness) -> None:
        statuses, _ = await _under_attack(h, CHUNKED, b"1\r\n1\r\n", ("127.0.0.2", "127.0.0.3"), 100)
        assert sum(1 for s in statuses if s == 200) / len(statuses) >= 0.99, sorted(set(statuses))
        assert all("echo" in call["event"] for call in h.pool.calls)
        # the bodies were cut by bodyTimeout (408), not left to hang any(r["status"] == 408 and r["source"] in ("127.0.0.2", "127.0.0.3") for r in h.audit.rows)

    run(check, max_connections_per_client=1000)  # the cap is not what saves the good client here


def test_slowloris_headers_are_cut_and_do_not_starve_a_function() -> None:
    async def check(h: Harness) -> None:
        opening = b"POST /invoke/pub HTTP/1.1\r\nHost: x\r\n"
        statuses, attack = await _under_attack(h, opening, b"X-A: b\r\n", ("127.0.0.4",), 100)
        assert sum(1 for s in statuses if s == 200) / len(statuses) >= 0.99, sorted(set(statuses))
        assert attack.cuts >= 100  # headers that never end are cut after readTimeout, however they trickle
        assert all("echo" in call["event"] for call in h.pool.calls)  # only the good client's requests ran

    run(check)


def test_connections_per_client_address_are_capped() -> None:
    async def check(h: Harness) -> None:
        held = [await _connect(h.port, "127.0.0.5") for _ in range(5)]
        await eventually(lambda: _open_from(h, ("127.0.0.5",)) == 5, "five connections from 127.0.0.5")
        reader, writer = await _connect(h.port, "127.0.0.5")  # the sixth: answered at once, then closed
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 429 ") and b"too many connections from your address" in answer
        async with h.session.post(h.url + "/invoke/pub", json={"echo": 1}) as r:  # other addresses: unaffected
            assert r.status == 200
        held.pop()[1].close()
        await eventually(lambda: _open_from(h, ("127.0.0.5",)) == 4, "the gateway to see one closed")
        reader, writer = await _connect(h.port, "127.0.0.5")
        writer.write(
            b'POST /invoke/pub HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n{"echo":2}'
        )
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200 ")  # a free place again
        writer.close()
        for _, other in held:
            other.close()
        await eventually(lambda: _open_from(h, ("127.0.0.5",)) == 0, "every connection from 127.0.0.5 released")

    run(check, max_connections_per_client=5)


def test_cap_and_body_timeout_settings(tmp_path: Any) -> None:
    from fnctl.errors import BadInput
    from fnctl.gateway.serve import options_for
    from fnctl.manifest.project import load_project

    (tmp_path / "fnctl.toml").write_text(
        '[project]\nname = "p"\n\n[gateway]\nbodyTimeout = "2s"\nmaxConnectionsPerClient = 16\n'
    )
    project = load_project(tmp_path)
    limits = options_for(project).limits
    assert (limits.body_timeout, limits.max_connections_per_client) == (2.0, 16)
    limits = options_for(project, body_timeout=0.5, max_connections_per_client=3).limits
    assert (limits.body_timeout, limits.max_connections_per_client) == (0.5, 3)
    for bad in ({"body_timeout": 0.0}, {"max_connections_per_client": 0}, {"read_timeout": float("nan")}):
        with pytest.raises(BadInput):
            options_for(project, **bad)
    (tmp_path / "fnctl.toml").write_text('[project]\nname = "p"\n\n[gateway]\nmaxConnectionsPerClient = 0\n')
    with pytest.raises(BadInput):
        load_project(tmp_path) and options_for(load_project(tmp_path))


# ---- malformed input: 4xx, one line, one audit row, no traceback (issue item 4) ----------------------------


def _no_tracebacks(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err + caplog.text
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


BAD_BODIES = {
    "lone surrogate": (b'{"name": "\\ud800"}', "lone surrogate"),
    "nested 990 deep": (b"[" * 990 + b"]" * 990, "nested deeper than 64"),
    "nested, never closed": (b'{"a":' * 5000, "nested deeper than 64"),
    "NaN": (b'{"x": NaN}', "NaN is not a JSON value"),
    "Infinity": (b"[Infinity]", "Infinity is not a JSON value"),
    "-Infinity": (b"-Infinity", "-Infinity is not a JSON value"),
    "not UTF-8": (b'{"x": "\xff"}', "not UTF-8"),
    "latin-1": ('{"x": "café"}'.encode("latin-1"), "not UTF-8"),
    "a 5000-digit number": (b"[1" + b"0" * 5000 + b"]", "too many digits"),
    "not JSON": (b"{not json", "Expecting property name"),
    "trailing data": (b"{} {}", "Extra data"),
}


def test_malformed_bodies_are_400_with_one_line_and_one_audit_row(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)

    async def check(h: Harness) -> None:
        await _switch(
            h, router.build_table({"pub": {1: 100}}, {("pub", 1): _spec(["public"], payload=100_000)}, {}, {})
        )
        for name, (body, reason) in BAD_BODIES.items():
            before = len(h.audit.rows)
            async with h.session.post(
                h.url + "/invoke/pub", data=body, headers={"Content-Type": "application/json"}
            ) as r:
                text = await r.text()
                assert r.status == 400, (name, r.status, text)
                error = json.loads(text)["error"]
            assert error.startswith("Bad Request: the body is not JSON: ") and reason in error, (name, error)
            assert "\n" not in error and len(error) < 200, name
            rows = h.audit.rows[before:]
            assert [(row["status"], row["outcome"], row["function"]) for row in rows] == [(400, "rejected", "pub")], (
                name
            )
        assert not h.pool.calls
        async with h.session.post(h.url + "/invoke/pub", data=b'{"echo": "\\ud83d\\ude00 ok"}') as r:
            assert r.status == 200 and await r.json() == "\U0001f600 ok"  # a surrogate PAIR is a character

    run(check, max_body=100_000)
    _no_tracebacks(caplog, capfd)


def test_unknown_routes_and_wrong_methods_are_audited_once(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)

    async def check(h: Harness) -> None:
        cases = [
            ("GET", "/nothing/here", 404, None, "not_found"),
            ("DELETE", "/hello/x", 405, "GET, POST", "not_allowed"),
            ("GET", "/invoke/pub", 405, "POST", "not_allowed"),
            ("POST", "/healthz", 405, "GET, HEAD", "not_allowed"),
            ("PUT", "/metrics", 405, "GET, HEAD", "not_allowed"),
            ("POST", "/invoke/nope", 404, None, "not_found"),
            ("GET", "/%ED%A0%80", 404, None, "not_found"),
            ("POST", "/invoke/%ED%A0%80", 404, None, "not_found"),
        ]
        for method, path, status, allow, outcome in cases:
            before = len(h.audit.rows)
            async with h.session.request(method, h.url + path, data=b"{}") as r:
                assert r.status == status, (method, path, r.status)
                assert r.headers.get("Allow") == allow, (method, path)
                assert "\n" not in (await r.text()).strip()
            rows = h.audit.rows[before:]
            assert [(row["status"], row["outcome"]) for row in rows] == [(status, outcome)], (method, path, rows)
            assert rows[0]["access"] == {"method": method, "path": rows[0]["access"]["path"]}
        for row in h.audit.rows:  # whatever a client sent, the audit row can be stored (no lone surrogate)
            json.dumps(row).encode("utf-8")
            str(row["function"]).encode("utf-8")

    run(check)
    _no_tracebacks(caplog, capfd)


MALFORMED_HTTP = {
    "garbage": b"GARBAGE\r\n\r\n",
    "bad method": b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad header": b"POST /invoke/pub HTTP/1.1\r\nHost: x\r\nX-A\x01: b\r\nContent-Length: 2\r\n\r\n{}",
    "bad chunk size": b"POST /invoke/pub HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "two lengths": b"POST /invoke/pub HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "bad version": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    "bad pin": "POST /invoke/pub HTTP/1.1\r\nHost: x\r\nX-Fnctl-Revision: ²\r\nContent-Length: 2\r\n\r\n{}".encode(),
}


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):  # the gateway answers and closes
            received += chunk
        return received


def _rows_since(h: Harness, start: int) -> Callable[[], list[dict[str, Any]]]:
    return lambda: h.audit.rows[start:]


def test_malformed_http_is_answered_with_one_line_and_audited(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)

    async def check(h: Harness) -> None:
        for name, data in MALFORMED_HTTP.items():
            before = len(h.audit.rows)
            answer = await asyncio.to_thread(_raw, h.port, data)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] == b"400", (name, answer)
            assert body.count(b"\n") <= 1 and b"\x01" not in body and b"GARBAGE" not in body, (name, body)
            rows = await eventually(_rows_since(h, before), f"the audit row of {name}")
            assert [row["status"] for row in rows] == [400], (name, rows)
        assert not h.pool.calls

    run(check)
    _no_tracebacks(caplog, capfd)


def test_results_and_headers_no_encoder_takes_never_end_in_a_500(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """A handler may return a lone surrogate (the runtime escapes it as \\ud800), and a client may send header
    bytes that are no UTF-8: neither reaches a 500 or a traceback."""
    caplog.set_level(logging.DEBUG)

    async def check(h: Harness) -> None:
        async with h.session.post(h.url + "/invoke/pub", json={"frame": '{"s": "\\ud800"}'}) as r:
            assert r.status == 200 and json.loads(await r.read()) == {"s": "\ud800"}  # as the handler gave it
        async with h.session.post(h.url + "/hello/x", json={"frame": '["\\udfff"]'}) as r:
            assert r.status == 200 and json.loads(await r.read()) == ["\udfff"]
        for frame in (
            '{"statusCode": 200, "body": "\\ud800"}',
            '{"statusCode": 200, "headers": {"X-A": "\\ud800"}, "body": "ok"}',
        ):
            async with h.session.post(h.url + "/hello/x", json={"frame": frame}) as r:
                assert r.status == 502, frame  # not Unicode text: a bad proxy response, as any other
        raw = b"GET /hello/x HTTP/1.1\r\nHost: x\r\nX-Bytes: caf\xe9 \xff\r\nConnection: close\r\n\r\n"
        answer = await asyncio.to_thread(_raw, h.port, raw)
        assert answer.split(b" ")[1] == b"200", answer
        event = json.loads(answer.partition(b"\r\n\r\n")[2])["event"]
        assert event["headers"]["x-bytes"] == "caf\ufffd \ufffd"
        assert all(row["status"] < 500 or row["status"] == 502 for row in h.audit.rows)

    run(check)
    _no_tracebacks(caplog, capfd)


@pytest.mark.parametrize(
    "data",
    [
        '{"name": "\\ud800"}',
        "[" * 990 + "]" * 990,
        '{"x": NaN}',
        "[Infinity]",
        "-Infinity",
        '{"a":' * 3000,
        "[1" + "0" * 5000 + "]",
        "{not json",
    ],
)
def test_cli_data_is_strict_json_exit_2_with_one_line(data: str, tmp_path: Any) -> None:
    """`fnctl invoke -d` refuses what the gateway refuses, before anything runs: exit 2, one line."""
    import subprocess
    import sys

    (tmp_path / "event.json").write_text(data, encoding="utf-8")
    for given in (data, f"@{tmp_path / 'event.json'}"):
        result = subprocess.run(
            [sys.executable, "-m", "fnctl", "invoke", "nothing-deployed", "-d", given],
            check=False,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, (result.returncode, result.stderr)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        assert len(lines) == 1 and "is not valid JSON" in lines[0], lines
        assert "Traceback" not in result.stderr
