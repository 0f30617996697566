"""Reading an invocation's event from `--data JSON`, `--data @file.json` or standard input."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fnctl.errors import BadInput
from fnctl.invocation import strictjson

MAX_EVENT_BYTES = 64 * 2**20  # far above any payload limit: the function's own limit is checked later


def read_event(data: str | None) -> tuple[Any, int]:
    """The event and its size in bytes; no data and an interactive stdin mean `{}`."""
    if data is None:
        if sys.stdin is None or sys.stdin.isatty():
            return {}, 2
        text, origin = sys.stdin.read(MAX_EVENT_BYTES + 1), "standard input"
    elif data.startswith("@"):
        path = Path(data[1:])
        try:
            with path.open(encoding="utf-8") as handle:
                text = handle.read(MAX_EVENT_BYTES + 1)
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"cannot read the event file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        origin = str(path)
    else:
        text, origin = data, "--data"
    if not text.strip():
        return {}, 2
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # an argument that is no UTF-8 (the OS hands it over as surrogate escapes)
        raise BadInput(f"the event from {origin} is not valid JSON: not UTF-8") from None
    if size > MAX_EVENT_BYTES:
        raise BadInput(f"the event from {origin} is larger than {MAX_EVENT_BYTES // 2**20} MiB")
    try:
        return strictjson.loads(text), size  # the same strict JSON as the gateway takes
    except strictjson.NotJson as exc:
        raise BadInput(f"the event from {origin} is not valid JSON: {exc}") from None
