"""`fnctl data import|export`: a collection's documents as NDJSON, in and out, as the operator.

An import is checked whole before anything is written (every bad line reported with its number, nothing
written), then written in batches, each batch one transaction (all or nothing).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fnctl.commands.data import OperatorSession, known, parse_json, reported, writable
from fnctl.data.errors import DataError, Invalid
from fnctl.data.txn import Txn
from fnctl.errors import BadInput, FnctlError
from fnctl.invocation import strictjson

ENVELOPE_FIELDS = frozenset({"id", "version", "createdAt", "createdBy", "updatedAt", "updatedBy", "tenant", "data"})
DEFAULT_BATCH = 1000
KEEP_BYTES = 32 * 2**20  # documents of the check pass kept staged for the write pass (import_ndjson)
MAX_LINE_ERRORS = 20  # bad lines listed one by one; the rest are counted

OnProgress = Callable[[int, int], None]  # (done, total): bytes of an import, documents of an export


@dataclass
class ImportReport:
    imported: int = 0
    batches: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line number, message)


def _lines(source: Path | None) -> Iterator[tuple[int, bytes, int]]:
    """(line number, line, bytes consumed so far) of a file, or standard input when `source` is None."""
    handle: IO[bytes]
    try:
        handle = sys.stdin.buffer if source is None else source.open("rb")
    except OSError as exc:
        raise BadInput(f"cannot read {source}: {exc.strerror or exc}") from None
    done = 0
    try:
        for number, line in enumerate(handle, 1):
            done += len(line)
            yield number, line, done
    finally:
        if source is not None:
            handle.close()


def _record(line: bytes, bare: bool) -> tuple[str | None, Any]:
    """(id or None, document) of one NDJSON line: an envelope as `export` writes it (`{"id", "data", ...}`,
    only envelope fields), else the whole line is the document (always with `bare`)."""
    try:
        value = strictjson.loads(line)
    except strictjson.NotJson as exc:
        raise Invalid(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Invalid("not a JSON object")
    if not bare and isinstance(value.get("data"), dict) and value.keys() <= ENVELOPE_FIELDS:
        id = value.get("id")
        if id is not None and not isinstance(id, str):
            raise Invalid("the id is not a string")
        return id, value["data"]
    return None, value


def import_ndjson(
    s: OperatorSession,
    collection: str,
    source: Path | None,
    *,
    batch: int = DEFAULT_BATCH,
    bare: bool = False,
    check_first: bool = True,
    on_progress: OnProgress = lambda done, total: None,
) -> ImportReport:
    """Check every line (JSON object, id, schema, size, ids not already taken nor repeated), and only when all
    are good write them, `batch` lines per transaction. Bad lines: BadInput listing them, nothing written.
    Without `check_first` (one pass, nothing kept): each batch is checked, then committed or not at
    all; at the first bad batch the import stops (BadInput listing its bad lines and what was committed)."""
    writable(s, collection)
    if batch < 1:
        raise BadInput("--batch must be at least 1")
    lines: list[tuple[int, bytes, int]] | None = None
    if source is None:  # standard input is read once: keep it for the second pass
        lines = list(_lines(None))
    total = source.stat().st_size if source is not None and source.is_file() else 0
    report = ImportReport()
    seen: set[str] = set()
    # The check pass's transactions, staged and checked, kept for the write pass while their documents take at
    # most KEEP_BYTES (the later batches are staged and checked again then): each line parsed and checked once.
    kept: list[Txn] = []
    kept_bytes = 0

    def check_batch(items: list[tuple[int, bytes]]) -> None:
        nonlocal kept_bytes
        errors = len(report.errors)
        txn = s.plane.transaction(s.caller)
        records = _preloaded(txn, collection, items, bare)
        for number, record in records:
            try:
                if isinstance(record, DataError):
                    raise record
                id, data = record
                if id is not None and id in seen:
                    raise Invalid(f"id {id!r} appears twice in the file")
                txn.insert(collection, data, id=id)
                if id is not None:
                    seen.add(id)
            except DataError as exc:
                where = "; ".join(f"{p}: {m}" for p, m in exc.violations)
                report.errors.append((number, exc.detail_text + (f" ({where})" if where else "")))
        size = txn.staged_bytes()
        if len(report.errors) == errors and len(kept) == report.batches and kept_bytes + size <= KEEP_BYTES:
            kept.append(txn)
            kept_bytes += size
        else:
            txn.rollback()
        report.batches += 1

    if check_first:
        for items, _ in _batches(lines if lines is not None else _lines(source), batch):
            check_batch(items)
        report.batches = 0
    if report.errors:
        for txn in kept:
            txn.rollback()
        shown = [f"  line {n}: {m}" for n, m in report.errors[:MAX_LINE_ERRORS]]
        more = len(report.errors) - MAX_LINE_ERRORS
        raise BadInput(
            f"{len(report.errors)} bad line{'s' if len(report.errors) != 1 else ''} in "
            f"{source or 'standard input'}; nothing was imported",
            detail="\n".join(shown + ([f"  ... and {more} more"] if more > 0 else [])),
        )
    for index, (items, done) in enumerate(_batches(lines if lines is not None else _lines(source), batch)):
        staged = index < len(kept)
        txn = kept[index] if staged else s.plane.transaction(s.caller)
        if not check_first:
            _stage_batch(txn, collection, items, bare, report)
        try:
            with reported():
                if check_first and not staged:
                    for _, record in _preloaded(txn, collection, items, bare):
                        if isinstance(record, DataError):
                            raise record
                        txn.insert(collection, record[1], id=record[0])
                txn.commit()
        except FnctlError as exc:
            first, last = items[0][0], items[-1][0]
            raise FnctlError(
                f"lines {first}-{last} were not imported ({exc.message}); the {report.imported} "
                f"documents of the lines before them were",
                detail=exc.detail,
            ) from None
        report.imported += len(items)
        report.batches += 1
        on_progress(done, total)
    return report


def _stage_batch(txn: Txn, collection: str, items: list[tuple[int, bytes]], bare: bool, report: ImportReport) -> None:
    """One pass: stage a batch's lines, and refuse the whole batch (BadInput) when any is bad."""
    errors = []
    for number, record in _preloaded(txn, collection, items, bare):
        try:
            if isinstance(record, DataError):
                raise record
            txn.insert(collection, record[1], id=record[0])
        except DataError as exc:
            where = "; ".join(f"{p}: {m}" for p, m in exc.violations)
            errors.append(f"  line {number}: {exc.detail_text}" + (f" ({where})" if where else ""))
    if errors:
        txn.rollback()
        raise BadInput(
            f"{len(errors)} bad line{'s' if len(errors) != 1 else ''} in lines {items[0][0]}-"
            f"{items[-1][0]}: that batch and the rest were not imported; the {report.imported} "
            "documents of the lines before it were",
            detail="\n".join(errors[:MAX_LINE_ERRORS]),
        )


def _preloaded(
    txn: Txn, collection: str, items: list[tuple[int, bytes]], bare: bool
) -> list[tuple[int, tuple[str | None, Any] | DataError]]:
    """A batch's lines parsed (a DataError for a line that is not a document), with the documents their ids
    name read in one query (`Txn.preload`) rather than one each."""
    records: list[tuple[int, tuple[str | None, Any] | DataError]] = []
    for number, line in items:
        try:
            records.append((number, _record(line, bare)))
        except DataError as exc:
            records.append((number, exc))
    txn.preload(collection, [r[0] for _, r in records if not isinstance(r, DataError) and isinstance(r[0], str)])
    return records


def _batches(
    lines: Iterator[tuple[int, bytes, int]] | list[tuple[int, bytes, int]], size: int
) -> Iterator[tuple[list[tuple[int, bytes]], int]]:
    """Non-blank lines in groups of `size`, with the bytes consumed once the group was read."""
    items: list[tuple[int, bytes]] = []
    done = 0
    for number, line, done in lines:
        if line.strip():
            items.append((number, line))
            if len(items) == size:
                yield items, done
                items = []
    if items:
        yield items, done


def export_ndjson(
    s: OperatorSession,
    collection: str,
    out: IO[str],
    *,
    filter_text: str | None = None,
    on_progress: OnProgress = lambda done, total: None,
) -> int:
    """Every document of the tenant (that matches the filter) as one envelope per line, by id."""
    known(s, collection)
    query = parse_json(filter_text, "the filter") if filter_text else None
    total = s.plane.store.count(collection)
    cursor: str | None = None
    written = 0
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    with reported():
        while True:
            page = s.plane.find(s.caller, collection, query, order=["id"], limit=1000, cursor=cursor)
            for doc in page.documents:
                out.write(encode(doc.as_json()) + "\n")
            written += len(page.documents)
            on_progress(written, max(total, written))
            if page.cursor is None:
                return written
            cursor = page.cursor
