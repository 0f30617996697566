"""The data plane's one error family: what REST renders as application/problem+json (RFC 9457) and the broker
sends back to handlers. `violations` lists (JSON path, message) pairs, e.g. every schema violation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from fnctl.errors import FnctlError

PROBLEM_BASE = "https://fnctl.dev/problems/"


def problem_document(
    kind: str, title: str, status: int, detail: str | None = None, violations: Sequence[tuple[str, str]] = ()
) -> dict[str, Any]:
    """An RFC 9457 problem document of fnctl's problem type `kind` (PROBLEM_BASE + kind), every answer of the
    data API and the views alike: with its detail and its (JSON path, message) violations when given."""
    body: dict[str, Any] = {"type": PROBLEM_BASE + kind, "title": title, "status": status}
    if detail is not None:
        body["detail"] = detail
    if violations:
        body["violations"] = [{"path": p, "message": m} for p, m in violations]
    return body


class DataError(FnctlError):
    status: ClassVar[int] = 400
    type: ClassVar[str] = "invalid"
    title: ClassVar[str] = "Invalid request"
    # Seconds after which the same request may succeed (a refusal for want of room, not of the request): REST
    # answers it as Retry-After, and the problem document (a handler's `context.db` error too) as `retryAfter`.
    retry_after: int | None = None

    def __init__(self, detail: str, *, violations: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(detail)
        self.detail_text = detail
        self.violations = violations

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 problem document."""
        body = problem_document(self.type, self.title, self.status, self.detail_text, self.violations)
        if self.retry_after is not None:
            body["retryAfter"] = self.retry_after
        return body


class Invalid(DataError):
    """A document that is not an object, breaks the schema, or a bad id (400)."""


class BadFilter(DataError):
    type, title = "bad-filter", "Bad filter"


class NotFound(DataError):
    """No such document or collection, or one the caller may not read (never confirms it exists)."""

    status, type, title = 404, "not-found", "Not found"


class Forbidden(DataError):
    """A collection the caller may not write at all."""

    status, type, title = 403, "forbidden", "Forbidden"


class Conflict(DataError):
    """A concurrent write changed what a transaction read, or a unique index / an existing id."""

    status, type, title = 409, "conflict", "Conflict"


class PreconditionFailed(DataError):
    """A stale If-Match."""

    status, type, title = 412, "precondition-failed", "Precondition failed"


class PayloadTooLarge(DataError):
    status, type, title = 413, "too-large", "Document too large"


class PreconditionRequired(DataError):
    """PUT/PATCH/DELETE from REST without If-Match."""

    status, type, title = 428, "precondition-required", "Precondition required"


class LimitExceeded(DataError):
    """A per-invocation budget ran out (operations, documents scanned, bytes read or written)."""

    status, type, title = 429, "limit-exceeded", "Limit exceeded"


class DataUnavailable(DataError):
    """The data file cannot be read or written."""

    status, type, title = 503, "unavailable", "Data store unavailable"


ERRORS: dict[str, type[DataError]] = {
    c.type: c
    for c in (
        DataError,
        Invalid,
        BadFilter,
        NotFound,
        Forbidden,
        Conflict,
        PreconditionFailed,
        PayloadTooLarge,
        PreconditionRequired,
        LimitExceeded,
        DataUnavailable,
    )
}
ERRORS["invalid"] = Invalid
