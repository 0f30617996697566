"""Strict JSON for everything a caller sends (a gateway body, `fnctl invoke --data`): RFC 8259 and nothing
more, with a nesting limit, and one-line reasons for whatever is refused.

Python's `json` accepts `NaN`/`Infinity` (not JSON), decodes `"\\ud800"` to a lone surrogate that no UTF-8
encoder will take back (so it breaks later, far from the input), and recurses once per nesting level until a
RecursionError. Here: constants are refused, surrogates are checked, and the depth is measured before
decoding, without recursion, so that no input can reach a RecursionError.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64  # nested arrays/objects; far beyond real events, far below the interpreter's recursion limit

_OTHER_BYTES = bytes(b for b in range(256) if b not in b"[]{}")
_SIGNS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as signed bytes: +1 opens, -1 closes
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class NotJson(ValueError):
    """The input is not strict JSON; the message is one line, fit to show the caller."""


def _no_constant(name: str) -> Any:
    raise NotJson(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def depth(data: bytes) -> int:
    """How deep arrays/objects nest in `data` (brackets left open count too: a decoder descends into them
    before it fails). No recursion and no Python loop per byte: escapes and strings are cut out, the rest
    reduced to its brackets as signed bytes (+1, -1), and the deepest running sum taken."""
    if b"\\" in data:  # escaped backslashes first (left to right, as a lexer pairs them), then escaped quotes
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(data.split(b'"')[::2])  # even pieces lie outside strings once escapes are gone
    brackets = outside.translate(_SIGNS, _OTHER_BYTES)
    return max(accumulate(memoryview(brackets).cast("b")), default=0)


def depth_exceeds(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """True when `data` nests deeper than `limit`; the usual body has too few brackets to need a look."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    return depth(data) > limit


def loads(data: bytes | str, *, limit: int = MAX_DEPTH) -> Any:
    """The value of `data` (UTF-8 when bytes); raises NotJson with a one-line reason."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NotJson(f"not UTF-8 (byte {exc.start + 1})") from None
        raw = data
    else:
        text = data
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:  # a str from outside (a file read with surrogateescape, say)
            raise NotJson("not Unicode text (a lone surrogate)") from None
    if depth_exceeds(raw, limit):
        raise NotJson(f"nested deeper than {limit} levels")
    try:
        value = _DECODER.decode(text)
    except NotJson:
        raise
    except json.JSONDecodeError as exc:
        raise NotJson(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # cannot happen after the depth check; kept so that it never becomes a 500
        raise NotJson(f"nested deeper than {limit} levels") from None
    except ValueError:  # an integer longer than the interpreter converts (sys.get_int_max_str_digits)
        raise NotJson("a number has too many digits") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):  # only then can a lone surrogate be in there
        try:
            _ENCODER.encode(value).encode("utf-8")
        except UnicodeEncodeError:
            raise NotJson("a string holds a lone surrogate (\\ud800-\\udfff): not Unicode text") from None
    return value
