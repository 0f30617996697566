"""`fnctl serve --workers N`: the decisions shared by the gateway's worker processes, as pure functions.

Worker 0 owns the instances (starts, scales, pauses and stops them); workers 1..N-1 follow the store's
instance table and reach the same instances over their sockets. An instance's `concurrency` units are split
between the workers, so that `concurrency` × `maxInstances` holds across all of them without a shared counter:
unit j of instance X belongs to worker (crc32(X) + j) mod N. The split is fixed for an instance's life (its
id does not change), so no unit ever has two owners, even while instances come and go.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable


def units(concurrency: int, workers: int, worker: int, instance_id: str) -> int:
    """How many of an instance's `concurrency` requests at once `worker` (0-based, of `workers`) may send it."""
    if workers <= 1:
        return concurrency
    first = zlib.crc32(instance_id.encode()) % workers  # the worker that holds unit 0
    return concurrency // workers + (1 if (worker - first) % workers < concurrency % workers else 0)


def demand(loads: Iterable[int]) -> int:
    """The requests (in flight and queued) the owner scales for, from each worker's own: the busiest worker's
    load as if every worker had it. Each worker has about 1/N of every instance, so the busiest one needs
    N × its load of instance capacity in all; scaling for the sum would leave it queueing behind idle units."""
    loads = list(loads)
    return len(loads) * max(loads, default=0)


_SAMPLE = re.compile(rb"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ", re.MULTILINE)


def labelled(text: bytes, worker: int) -> bytes:
    """A worker's Prometheus text with a `worker` label on every sample (`sum without (worker)` adds them up)."""

    def label(match: re.Match[bytes]) -> bytes:
        name, labels = match.group(1), match.group(2)
        inner = b"" if not labels or labels == b"{}" else labels[1:-1] + b","
        return name + b"{" + inner + b'worker="%d"} ' % worker

    return _SAMPLE.sub(label, text)


def merged(texts: Iterable[bytes]) -> bytes:
    """Several workers' labelled texts as one exposition: each family's HELP and TYPE once, then its samples."""
    order: list[bytes] = []
    heads: dict[bytes, list[bytes]] = {}
    samples: dict[bytes, list[bytes]] = {}
    family = b""
    for text in texts:
        for line in text.splitlines():
            if line.startswith(b"# HELP ") or line.startswith(b"# TYPE "):
                family = line.split(b" ", 3)[2]
                if family not in heads:
                    order.append(family)
                    heads[family], samples[family] = [], []
                if len(heads[family]) < 2 and line not in heads[family]:
                    heads[family].append(line)
            elif line and not line.startswith(b"#"):
                samples.setdefault(family, []).append(line)
                if family not in heads:
                    order.append(family)
                    heads[family] = []
    return b"".join(b"\n".join(heads[f] + samples.get(f, [])) + b"\n" for f in order)
