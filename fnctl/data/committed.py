"""What a commit changed, as the data plane's listeners receive it (`DataPlane.listeners`: views'
invalidation, the onCommit dispatcher's wake-up). A pure value: decisions built on it (the view cache) import
no I/O."""

from __future__ import annotations

import json
from typing import Any

Envelope = dict[str, Any] | str | None  # decoded, or the JSON text the change log holds (decoded when first read)


class Committed:
    """One change as its transaction committed it: the envelopes before / after (None: absent). The change
    log's text is decoded only when a listener looks at it: most changes concern no cached view, and decoding
    every write's documents again cost its commit a sixth of its time."""

    __slots__ = ("seq", "collection", "tenant", "id", "op", "_before", "_after")

    def __init__(
        self, seq: int, collection: str, tenant: str, id: str, op: str, before: Envelope, after: Envelope
    ) -> None:
        self.seq = seq  # in the change log
        self.collection = collection
        self.tenant = tenant
        self.id = id
        self.op = op  # insert | replace | delete
        self._before, self._after = before, after

    @property
    def before(self) -> dict[str, Any] | None:
        value = self._before
        if isinstance(value, str):
            value = self._before = json.loads(value)  # decoding twice (two threads at once) is harmless
        return value

    @property
    def after(self) -> dict[str, Any] | None:
        value = self._after
        if isinstance(value, str):
            value = self._after = json.loads(value)
        return value

    def __repr__(self) -> str:
        return f"Committed({self.seq}, {self.collection!r}, {self.tenant!r}, {self.id!r}, {self.op!r})"
