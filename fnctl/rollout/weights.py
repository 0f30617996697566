"""Routing weights (revision → percent of a function's traffic) and what they say about a function.

One meaning, written once: the diff, live state, `fnctl status`, `fnctl rollback` and the gateway's router all
ask "which revision is the function's stable one" and must agree, or a rollback would leave a revision the
router still calls live.
"""

from __future__ import annotations

from collections.abc import Mapping


def stable_revision(weights: Mapping[int, int]) -> int | None:
    """The revision taking most traffic, the newest (highest number) on a tie; None when there is none.

    Outside a rollout it is the only routed revision; during one, the revision traffic came from until the
    canary overtakes it. Callers that count only routed revisions pass only those."""
    return max(weights, key=lambda r: (weights[r], r)) if weights else None
