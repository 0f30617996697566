"""Request ids: a random prefix per process and a counter, unique without coordination. The gateway gives one
to every request without a valid X-Request-Id, and `fnctl invoke --direct` to the invocation it audits."""

from __future__ import annotations

import itertools
import secrets

_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
