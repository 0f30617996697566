"""`fnctl invoke` through a running gateway, so that its metrics, authentication, routing and audit apply.

The gateway is used when the project's gateway address answers /healthz as this project and this state
store; otherwise the CLI goes straight to an instance as before. Standard library only: the CLI stays quick
to start.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from fnctl.errors import BadInput, FnctlError, UnknownName
from fnctl.invocation.outcome import Failure, Outcome

PROBE_TIMEOUT = 0.5  # a gateway on loopback answers in a millisecond; nothing listening fails at once
INVOKE_TIMEOUT = 960.0  # the gateway enforces the function's own deadline; this only bounds a hung socket


@dataclass(frozen=True)
class GatewayCall:
    outcome: Outcome
    revision: int | None
    cold_start: bool
    request_id: str


def _connect_host(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    # a gateway listening on every interface is reached on loopback
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return host, int(port)


def find(address: str, project: str, store_id: str) -> bool:
    """True when the gateway at `address` runs for `project` on the store with `store_id`."""
    try:
        host, port = _connect_host(address)
        connection = http.client.HTTPConnection(host, port, timeout=PROBE_TIMEOUT)
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            body = json.loads(response.read(65536) or b"{}")
        finally:
            connection.close()
    except (OSError, ValueError, http.client.HTTPException):
        return False
    return (
        response.status == 200
        and isinstance(body, dict)
        and body.get("project") == project
        and body.get("store") == store_id
    )


def invoke(address: str, name: str, event: Any, *, key: str | None, revision: int | None, logs: bool) -> GatewayCall:
    """POST /invoke/NAME; a function's failure comes back as a failed Outcome, a refusal as FnctlError."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if revision is not None:
        headers["X-Fnctl-Revision"] = str(revision)
    if logs:
        headers["X-Fnctl-Log"] = "tail"
    status, body, answer = _request(address, "POST", f"/invoke/{name}", json.dumps(event).encode("utf-8"), headers)
    return _call(status, body, answer, address, name)


def _request(
    address: str, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes, dict[str, str]]:
    """One request to the gateway: its status, body and headers (names in lower case); FnctlError when the
    gateway does not answer."""
    host, port = _connect_host(address)
    connection = http.client.HTTPConnection(host, port, timeout=INVOKE_TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        status, raw = response.status, response.read()
        answer = {k.lower(): v for k, v in response.getheaders()}
    except (OSError, http.client.HTTPException) as exc:
        raise FnctlError(f"the gateway at {address} did not answer: {exc}") from None
    finally:
        connection.close()
    return status, raw, answer


def run_trigger(address: str, name: str, event: Any, *, key: str | None) -> GatewayCall:
    """POST /v1/triggers/NAME/run (no event: the trigger's `manual.event`); as `invoke` answers."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = b"" if event is None else json.dumps(event).encode("utf-8")
    status, raw, answer = _request(address, "POST", f"/v1/triggers/{name}/run", body, headers)
    return _call(status, raw, answer, address, name)


def _call(status: int, body: bytes, headers: dict[str, str], address: str, name: str) -> GatewayCall:
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    duration = float(headers.get("x-fnctl-duration-ms", 0) or 0)
    logs = _logs(headers.get("x-fnctl-log-result"))
    revision = int(headers["x-fnctl-revision"]) if headers.get("x-fnctl-revision", "").isdigit() else None
    request_id = headers.get("x-request-id", "")
    cold = headers.get("x-fnctl-cold-start") == "1"
    if status == 200:
        return GatewayCall(Outcome(True, data, None, "", "", logs, duration), revision, cold, request_id)
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("kind") in {f.value for f in Failure}:
        outcome = Outcome(
            False,
            None,
            Failure(error["kind"]),
            str(error.get("message", "")),
            str(error.get("traceback", "")),
            logs,
            duration,
        )
        return GatewayCall(outcome, revision, cold, request_id)
    reason = error if isinstance(error, str) else http.client.responses.get(status, "error")
    if status == 404 and isinstance(error, str):
        # The gateway's own answer (a function's failure is an object, handled above): the name, or the
        # revision pinned, does not exist there. Bare "Not Found" is its word for an unknown function.
        request = f"the gateway at {address} answered 404"
        if reason == "Not Found":
            raise UnknownName("function", name, "is not deployed", f"{request}; see `fnctl get functions`")
        raise BadInput(f"{request} {reason}")
    hint = {
        401: " (give an API key with --key or FNCTL_KEY)",
        403: " (the key's roles may not invoke it)",
        429: f" (retry after {headers.get('retry-after', '1')} s)",
    }.get(status, "")
    raise FnctlError(
        f"the gateway at {address} answered {status} {reason}{hint}",
        detail=f"request id {request_id}" if request_id else None,
    )


def _logs(encoded: str | None) -> str:
    if not encoded:
        return ""
    try:
        return base64.b64decode(encoded).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""


@dataclass(frozen=True)
class ViewAnswer:
    status: int
    body: Any  # the result (200), or the problem / error document
    revision: int | None
    cache: str  # hit | miss | "" (refused before the cache)


def view(address: str, name: str, params: list[tuple[str, str]], *, key: str | None) -> ViewAnswer:
    """GET /v1/views/NAME?params: the view's answer, whatever its status (the caller renders it)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    query = f"?{urlencode(params)}" if params else ""
    status, raw, answer = _request(address, "GET", f"/v1/views/{quote(name, safe='')}{query}", None, headers)
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    revision = answer.get("x-fnctl-revision", "")
    return ViewAnswer(status, body, int(revision) if revision.isdigit() else None, answer.get("x-fnctl-view-cache", ""))
