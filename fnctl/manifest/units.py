"""Parsing of the manifest's durations (`30s`, `5m`, `200ms`) and sizes (`128Mi`, `6M`): pure functions."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|K|M|G|T)?$")
_SIZE_SCALE = {
    None: 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_duration(text: str | int | float) -> float:
    """Seconds in `text` (`1m30s`, `200ms`, `5`); a bare number means seconds. Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"invalid duration {text!r}: must not be negative")
        return float(text)
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    if not _DURATION.fullmatch(value):
        raise ValueError(f"invalid duration {text!r} (expected e.g. 200ms, 30s, 5m, 1h30m)")
    return sum(float(n) * _DURATION_SCALE[u] for n, u in _DURATION_PART.findall(value))


def parse_size(text: str | int | float) -> int:
    """Bytes in `text` (`128Mi`, `6M`, `1024`). Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(f"invalid size {text!r}")
    if isinstance(text, (int, float)):  # a float only when whole: JSON Schema's integer takes 2.0
        if text < 0 or text != int(text):
            raise ValueError(f"invalid size {text!r}: must be a whole number of bytes, not negative")
        return int(text)
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid size {text!r} (expected e.g. 512Ki, 128Mi, 1Gi)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_SCALE[unit])


def format_duration(seconds: float) -> str:
    """A short human form that `parse_duration` reads back: `250ms`, `30s`, `5m`, `1h30m`, `1h0m1s` is `1h1s`."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, rest = divmod(rest, 60)
    return (
        (f"{int(hours)}h" if hours else "") + (f"{int(minutes)}m" if minutes else "") + (f"{rest:g}s" if rest else "")
    )
