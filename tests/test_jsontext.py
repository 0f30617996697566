"""compact_encoder: the text of json.JSONEncoder(separators=(",", ":"), ensure_ascii=False) from an encoder made
once (the stored documents' text and the hash chains' serialisation depend on it being the same)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from fnctl.jsontext import compact_encoder

VALUES: list[Any] = [
    {"customer": 'Zoë \u2028 "q"\n', "items": [{"sku": "ä", "n": 1.5, "ok": True, "none": None}], "big": 10**30},
    [12, "a" * 32, None, '{"id":"x","data":{"k":"\\u00e9"}}', -0.0, 1e300, False],
    "\ud83d\ude00 \x00\x1f",
    {"nested": {"deeper": {"k": [[], {}, ""]}}, "\u00e9": 3},
    {1: "an int key", 2.5: "a float key", None: "null", False: "f"},
]


@pytest.mark.parametrize("allow_nan", [False, True])
def test_the_text_is_what_the_standard_encoder_writes(allow_nan: bool) -> None:
    encode = compact_encoder(allow_nan=allow_nan)
    standard = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan).encode
    for value in VALUES:
        assert encode(value) == standard(value)


def test_nan_is_written_only_when_allowed_and_what_json_cannot_hold_is_a_type_error() -> None:
    assert compact_encoder(allow_nan=True)([math.nan, math.inf]) == "[NaN,Infinity]"
    with pytest.raises(ValueError):
        compact_encoder(allow_nan=False)({"total": math.inf})
    with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
        compact_encoder(allow_nan=False)({"tags": {"a"}})
    itself: list[Any] = []
    itself.append(itself)
    with pytest.raises(RecursionError):
        compact_encoder(allow_nan=False)(itself)
