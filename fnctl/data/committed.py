"""What a commit changed, as the data plane's listeners receive it (`DataPlane.listeners`: views'
invalidation, the onCommit dispatcher's wake-up). A pure value: decisions built on it (the view cache) import
no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Committed:
    """One change as its transaction committed it: the envelopes before / after (None: absent)."""

    seq: int  # in the change log
    collection: str
    tenant: str
    id: str
    op: str  # insert | replace | delete
    before: dict[str, Any] | None
    after: dict[str, Any] | None
