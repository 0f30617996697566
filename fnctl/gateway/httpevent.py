"""HTTP Trigger requests as API-gateway proxy events, and handler results back as HTTP responses (pure).

The event follows the API Gateway REST "proxy" format users of AWS SAM know (httpMethod, path,
pathParameters, queryStringParameters, headers, body, isBase64Encoded, requestContext), plus `caller`: the
authenticated identity. Header names are lower-cased; credentials (Authorization, X-Api-Key) are removed
before the event reaches the function: the handler gets the caller's identity, never its secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring as _quote  # a str as a JSON string, non-ASCII kept (C)
from typing import Any, NamedTuple

from fnctl.invocation.outcome import Failure, Outcome
from fnctl.invocation.protocol import EncodedJson, json_text

log = logging.getLogger("fnctl.gateway")
# Never handed to user code: the gateway already turned them into `caller`.
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "proxy-authorization"})
# Set by the server for the response it writes; a handler's value would corrupt the framing.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer", "proxy-connection"}
)
# A gateway's own marks on a refusal that ran nothing (a forwarder may then try another peer: docs/swarm.md
# "Forwarding"): never taken from a handler's response, whose 429 or 503 is an answer after it ran.
NO_INSTANCE_HEADER = "X-Fnctl-No-Instance"  # on a 503: no instance of the revision on this node
NOT_RUN_HEADER = "X-Fnctl-Not-Run"  # on a 429: refused at admission (overloaded)
_GATEWAY_ONLY = frozenset({NO_INSTANCE_HEADER.lower(), NOT_RUN_HEADER.lower()})
# A failed invocation as an HTTP status: the caller's fault is 4xx, the instance's is 5xx.
FAILURE_STATUS = {
    Failure.HANDLER_ERROR: 500,
    Failure.TIMEOUT: 504,
    Failure.OUT_OF_MEMORY: 502,
    Failure.PAYLOAD_TOO_LARGE: 413,
    Failure.OUTPUT_TOO_LARGE: 502,
    Failure.NOT_SERIALISABLE: 502,
    Failure.PROCESS_LIMIT: 502,
    Failure.DISK_FULL: 500,
    Failure.CRASHED: 502,
}
_PUBLIC_REASONS = {413: "Payload Too Large", 502: "Internal server error", 504: "Gateway Timeout"}
LOG_TAIL_BYTES = 4096
_TEXT_TYPES = (
    "text/",
    "application/json",
    "application/x-www-form-urlencoded",
    "application/xml",
    "application/javascript",
    "+json",
    "+xml",
)


class HttpRequest(NamedTuple):  # a tuple: made once per trigger request, a frozen dataclass costs 3x as much
    method: str
    path: str  # decoded
    resource: str  # the Trigger's path template
    path_params: Mapping[str, str]
    query: Collection[tuple[str, str]]
    headers: Collection[tuple[str, str]]  # read twice when a name repeats
    body: bytes
    content_type: str
    request_id: str
    trigger: str
    source: str | None
    time_ms: int


@dataclass(slots=True)  # made per request: a frozen one's __init__ costs ~5x (a setattr per field)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class BadResult(ValueError):
    """The handler returned something shaped like a proxy response that is not one (→ 502)."""


def _multi(pairs: Iterable[tuple[str, str]], lower: bool) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for key, value in pairs:
        if not (key.isascii() and value.isascii()):
            key, value = _text(key), _text(value)
        name = key.lower() if lower else key
        if lower and name in CREDENTIAL_HEADERS:
            continue
        result.setdefault(name, []).append(value)
    return result


def _headers_json(pairs: Collection[tuple[str, str]]) -> tuple[str, str]:
    """The members of `headers` (values joined by commas) and of `multiValueHeaders`: names lower-cased,
    credentials left out, each name and value quoted once for both. One pass while no name repeats (the usual
    request: ~0.4 us less than grouping first); a repeated name takes the grouping way from the start."""
    single: list[str] = []
    multi: list[str] = []
    seen: set[str] = set()
    for key, value in pairs:
        if not (key.isascii() and value.isascii()):
            key, value = _text(key), _text(value)
        name = key.lower()
        if name in CREDENTIAL_HEADERS:
            continue
        if name in seen:
            return _grouped_json(_multi(pairs, lower=True))
        seen.add(name)
        key, value = _quote(name) + ":", _quote(value)
        single.append(key + value)
        multi.append(key + "[" + value + "]")
    return ",".join(single), ",".join(multi)


def _grouped_json(headers: dict[str, list[str]]) -> tuple[str, str]:
    """`_headers_json` of headers grouped by name (some name repeats)."""
    single: list[str] = []
    multi: list[str] = []
    for name, values in headers.items():
        key = _quote(name) + ":"
        single.append(key + _quote(",".join(values)))
        multi.append(key + "[" + ",".join(map(_quote, values)) + "]")
    return ",".join(single), ",".join(multi)


def _text(value: str) -> str:
    """A header or query value as Unicode text for the event: bytes that are no UTF-8 (aiohttp keeps them as
    surrogate escapes, which no JSON encoder takes) become U+FFFD."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that did not come from surrogateescape
        return value.encode("utf-8", "replace").decode("utf-8")


def _is_text(content_type: str) -> bool:
    lowered = content_type.lower()
    return not lowered or any(marker in lowered for marker in _TEXT_TYPES)


def encode_body(body: bytes, content_type: str) -> tuple[str | None, bool]:
    """The body as the event carries it: text when it is text, base64 otherwise (isBase64Encoded)."""
    if not body:
        return None, False
    if _is_text(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def event_json(request: HttpRequest, caller: Mapping[str, Any] | str | None) -> EncodedJson:
    """The proxy event of `request` as JSON text, written in one pass (no dict built to be encoded after: the
    hot path of every trigger request). Its keys in `to_event`'s order. `caller`: as a mapping, or as the JSON
    text of one (`Principal.caller_json`, encoded once per principal)."""
    if caller is not None and not isinstance(caller, str):
        caller = json_text(dict(caller))
    # its fields at once: a NamedTuple's attribute is a descriptor call each, and there are 16 reads here
    method, path, resource, params, query_pairs, header_pairs, raw, content_type, rid, trigger, source, ms = request
    single, multi = _headers_json(header_pairs)
    query = _multi(query_pairs, lower=False) if query_pairs else None  # most requests have none: no call
    body, encoded = encode_body(raw, content_type) if raw else (None, False)
    method, path, resource = _quote(method), _quote(path), _quote(resource)
    if query:
        last = "{" + ",".join([f"{_quote(k)}:{_quote(v[-1])}" for k, v in query.items()]) + "}"
        every = json_text(query)
    else:
        last = every = "null"
    return EncodedJson(
        f'{{"resource":{resource},"path":{path},"httpMethod":{method},"headers":{{{single}}},'
        f'"multiValueHeaders":{{{multi}}},"queryStringParameters":{last},"multiValueQueryStringParameters":{every},'
        f'"pathParameters":{json_text(dict(params)) if params else "null"},'
        f'"body":{"null" if body is None else _quote(body)},"isBase64Encoded":{"true" if encoded else "false"},'
        f'"requestContext":{{"requestId":{_quote(rid)},"trigger":{_quote(trigger)},'
        f'"resourcePath":{resource},"httpMethod":{method},"path":{path},"requestTimeEpoch":{int(ms)},'
        f'"identity":{{"sourceIp":{"null" if source is None else _quote(source)}}}}},'
        f'"caller":{"null" if caller is None else caller}}}'
    )


def to_event(request: HttpRequest, caller: Mapping[str, Any] | None) -> dict[str, Any]:
    """The proxy event as the handler receives it (decoded)."""
    event: dict[str, Any] = json.loads(event_json(request, caller).text)
    return event


def from_result(result: Any) -> HttpResponse:
    """A handler's result as a response: a proxy response ({statusCode, headers, multiValueHeaders, body,
    isBase64Encoded}) as it says, anything else as a 200 with the result as JSON."""
    if not (isinstance(result, dict) and "statusCode" in result):
        return HttpResponse(200, [("Content-Type", "application/json")], json_body(result))
    status = result["statusCode"]
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise BadResult(f"statusCode must be an integer from 100 to 599, not {status!r}")
    headers = _headers(result.get("headers"), result.get("multiValueHeaders"))
    body, default_type = _body(result.get("body"), bool(result.get("isBase64Encoded")))
    if body and not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", default_type))
    return HttpResponse(status, headers, body)


def _headers(single: Any, multi: Any) -> list[tuple[str, str]]:
    if single is not None and not isinstance(single, dict) or multi is not None and not isinstance(multi, dict):
        raise BadResult("headers and multiValueHeaders must be objects")
    pairs: list[tuple[str, str]] = []
    for name, values in (multi or {}).items():
        for value in values if isinstance(values, list) else [values]:
            pairs.append((str(name), _scalar(value)))
    seen = {name.lower() for name, _ in pairs}
    pairs += [(str(name), _scalar(value)) for name, value in (single or {}).items() if str(name).lower() not in seen]
    for name, value in pairs:
        if (
            not name
            or any(c in name for c in "\r\n: ")
            or "\r" in value
            or "\n" in value
            or not (name.isascii() and _encodable(value))
        ):
            raise BadResult(f"invalid response header {name!r}")
    return [(name, value) for name, value in pairs if name.lower() not in HOP_BY_HOP | _GATEWAY_ONLY]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _body(body: Any, is_base64: bool) -> tuple[bytes, str]:
    if body is None:
        return b"", "application/json"
    if isinstance(body, str):
        if is_base64:
            try:
                return base64.b64decode(body, validate=True), "application/octet-stream"
            except (binascii.Error, ValueError):
                raise BadResult("body is not valid base64 although isBase64Encoded is true") from None
        if not _encodable(body):
            raise BadResult("body holds a lone surrogate: not Unicode text")
        return body.encode("utf-8"), "text/plain; charset=utf-8"
    return json_body(body), "application/json"  # lenient: an object body is sent as JSON


_ASCII = json.JSONEncoder(separators=(",", ":"))


def json_body(value: Any) -> bytes:
    """A result (decoded JSON: no cycles) as JSON, by the C encoder made once (JSONEncoder.encode makes a new
    one per call: half the cost of a small result). The runtime encodes results as ASCII JSON, so a lone
    surrogate escape (`"\\ud800"`) decodes here into a str that UTF-8 refuses: sent as ASCII escapes instead
    (valid JSON text, the handler's value as it gave it), never a 500."""
    try:
        return json_text(value).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from the handler: as an ASCII escape, not a crash
        return _ASCII.encode(value).encode("ascii")


def _encodable(text: str) -> bool:
    """Can `text` go on the wire as UTF-8 (no lone surrogates)?"""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---- invocation outcomes as responses ----------------------------------------------------------


def audit_outcome(outcome: Outcome) -> str:
    """The audit's word for an invocation's outcome."""
    if outcome.ok:
        return "ok"
    return {Failure.TIMEOUT: "timeout", Failure.CRASHED: "crashed"}.get(
        outcome.failure or Failure.HANDLER_ERROR, "error"
    )


def invoke_response(outcome: Outcome, with_logs: bool) -> HttpResponse:
    """`POST /invoke`: the result as JSON, or the typed error (kind, message, the handler's traceback)."""
    headers = [("Content-Type", "application/json"), ("X-Fnctl-Duration-Ms", f"{outcome.duration_ms:.3f}")]
    if with_logs and outcome.logs:
        tail = outcome.logs.encode("utf-8")[-LOG_TAIL_BYTES:]
        headers.append(("X-Fnctl-Log-Result", base64.b64encode(tail).decode("ascii")))
    if outcome.ok:
        return HttpResponse(200, headers, json_body(outcome.result))
    failure = outcome.failure or Failure.HANDLER_ERROR
    error = {"kind": failure.value, "message": outcome.message, "traceback": outcome.traceback}
    return HttpResponse(
        FAILURE_STATUS.get(failure, 500),
        headers,
        json_body({"error": error, "durationMs": round(outcome.duration_ms, 3)}),
    )


def trigger_response(outcome: Outcome) -> HttpResponse:
    """An HTTP Trigger: the handler's proxy response; a failure as its class only (a public route must not
    show the handler's message or traceback), 502 for a failed function as API gateways answer."""
    if outcome.ok:
        try:
            return from_result(outcome.result)
        except BadResult as exc:
            log.warning("an HTTP trigger's handler returned a bad response: %s", exc)
    status = FAILURE_STATUS.get(outcome.failure or Failure.HANDLER_ERROR, 500) if not outcome.ok else 502
    status = 502 if status == 500 else status
    return HttpResponse(
        status,
        [("Content-Type", "application/json")],
        json_body({"message": _PUBLIC_REASONS.get(status, _PUBLIC_REASONS[502])}),
    )
