"""npm's version ranges (`>=18 <23`, `^22.3`, `22.x`, `20 - 22`, `||`), enough of them to tell whether a
package's `engines.node` admits the runtime's Node version. Pure."""

from __future__ import annotations

import re

Version = tuple[int, int, int]
_PARTIAL = re.compile(r"^v?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?(?:[-+][0-9A-Za-z.+-]*)?$")
_COMPARATOR = re.compile(r"^(<=|>=|<|>|=|\^|~>?)?\s*(\S+)$")
_BIG = 1 << 30


def parse_version(text: str) -> Version | None:
    found = _PARTIAL.match(text.strip())
    if not found or any(p is None or not p.isdigit() for p in found.groups()):
        return None
    major, minor, patch = (int(p) for p in found.groups())
    return major, minor, patch


def satisfies(version: Version, range_text: str) -> bool | None:
    """Whether `version` lies in `range_text`; None when the range cannot be read."""
    results = [_satisfies_set(version, part.strip()) for part in range_text.split("||")]
    if any(r is None for r in results):
        return None
    return any(results)


def _satisfies_set(version: Version, text: str) -> bool | None:
    if text in ("", "*", "x", "X", "latest"):
        return True
    hyphen = re.fullmatch(r"(\S+)\s+-\s+(\S+)", text)
    if hyphen:
        low, high = _parts(hyphen.group(1)), _parts(hyphen.group(2))
        if low is None or high is None:
            return None
        return _range("=", low)[0] <= version < _range("=", high)[1]
    for token in re.sub(r"(<=|>=|<|>|=|\^|~>?)\s+", r"\1", text).split():
        found = _COMPARATOR.match(token)
        parts = _parts(found.group(2)) if found else None
        if found is None or parts is None:
            return None
        low, high = _range(found.group(1) or "=", parts)
        if not low <= version < high:
            return False
    return True


Parts = tuple[int | None, int | None, int | None]  # None: x, *, or left out


def _parts(partial: str) -> Parts | None:
    found = _PARTIAL.match(partial)
    if not found:
        return None
    major, minor, patch = (int(p) if p and p.isdigit() else None for p in found.groups())
    if major is None:
        minor = None
    if minor is None:
        patch = None
    return major, minor, patch


def _range(op: str, parts: Parts) -> tuple[Version, Version]:
    """The versions a comparator admits, as [low, high)."""
    major, minor, patch = parts
    if major is None:
        return (0, 0, 0), (_BIG, 0, 0)
    low = (major, minor or 0, patch or 0)
    if minor is None:  # `22`: all of 22.x
        covered = (major + 1, 0, 0)
    elif patch is None:
        covered = (major, minor + 1, 0)
    else:
        covered = (major, minor, patch + 1)
    if op == "^":  # up to the next change of the first non-zero part given
        if major or minor is None:
            return low, (major + 1, 0, 0)
        if minor or patch is None:
            return low, (0, minor + 1, 0)
        return low, covered
    if op in ("~", "~>"):  # patch-level changes, or minor ones when only the major is given
        return low, (major + 1, 0, 0) if minor is None else (major, minor + 1, 0)
    return {
        "=": (low, covered),
        ">=": (low, (_BIG, 0, 0)),
        ">": (covered, (_BIG, 0, 0)),
        "<": ((0, 0, 0), low),
        "<=": ((0, 0, 0), covered),
    }[op]
