"""Compact JSON text (`,` and `:` without spaces, UTF-8 kept as it is) from json's C encoder, made once.

`json.JSONEncoder.encode` makes a new C encoder on every call, which for a small document costs more than the
encoding itself (a document's stored text: ~6 -> ~2 us here). The text is the same as that method's with
`separators=(",", ":"), ensure_ascii=False`, but for a value holding itself: no circular-reference check, so a
cycle (never in decoded JSON) ends in RecursionError rather than ValueError.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["compact_encoder"]


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def compact_encoder(*, allow_nan: bool) -> Callable[[Any], str]:
    """A function giving the compact JSON text of a value (`allow_nan`: NaN and infinities written as
    JavaScript names, else ValueError); TypeError for what JSON cannot hold."""
    plain = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the plain encoder
        return plain
    chunks = make(None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, allow_nan)
    return lambda value: "".join(chunks(value, 0))
