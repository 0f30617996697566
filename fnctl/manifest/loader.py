"""Safe loading of manifest files: YAML to plain values, with the position of every value.

Only YAML's core types are accepted (no Python tags, ever), duplicate keys are errors, aliases are
bounded so that a "billion laughs" file is refused before it is expanded, and files are capped in size,
document count and nesting. Bad input becomes a `Diagnostic`, never an exception.

Most files are plain (no anchors, aliases, merge keys or tags) and valid, and their positions are never
asked for: they are read on a fast path that builds values only. Any other file, and the positions of any
file once one is asked for, come from the full builder in `fnctl.manifest.yamlbuild`, from the same text.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from fnctl.manifest.diagnostics import Diagnostic, JsonPath, Position
from fnctl.manifest.files import MAX_FILE_BYTES, Document
from fnctl.manifest.yamlbuild import MAX_DEPTH, Builder, Parser, Refused, TooManyDocuments
from fnctl.manifest.yamlscalars import ALLOWED_SCALARS, TAGS, VALUES, plain_value, resolve_tag

MAX_DOCUMENTS = 1000


class _Source:
    """The text of a file read on the fast path, to find its positions in when the first one is asked for."""

    def __init__(self, text: str, max_documents: int) -> None:
        self.text, self.max_documents = text, max_documents
        self.marks: dict[int, dict[JsonPath, Any]] | None = None

    def of(self, index: int) -> dict[JsonPath, Any]:
        if self.marks is None:
            builder = Builder(self.max_documents)
            parser = Parser(self.text)
            try:
                builder.run(parser)
            except (yaml.YAMLError, Refused, TooManyDocuments):
                pass  # cannot happen: the fast path read the same text without a problem
            finally:
                parser.dispose()
            self.marks = {built.number: built.marks for built in builder.documents}
            self.text = ""
        return self.marks.get(index, {})


class _LazyMarks(Mapping[JsonPath, Any]):
    """The marks of one document of a `_Source`, found on first use."""

    __slots__ = ("_source", "_index")

    def __init__(self, source: _Source, index: int) -> None:
        self._source, self._index = source, index

    def __getitem__(self, path: JsonPath) -> Any:
        return self._source.of(self._index)[path]

    def __iter__(self) -> Iterator[JsonPath]:
        return iter(self._source.of(self._index))

    def __len__(self) -> int:
        return len(self._source.of(self._index))


def load_file(path: Path) -> tuple[list[Document], list[Diagnostic]]:
    """All documents of one manifest file, or the diagnostics that explain why it cannot be read."""
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):  # a FIFO or a device would block, or never end
            return [], [_file_error(path, "not a regular file")]
        if status.st_size > MAX_FILE_BYTES:
            return [], [_file_error(path, f"file is too large ({status.st_size} bytes; the limit is {MAX_FILE_BYTES})")]
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)  # bounded, should it have grown since
    except OSError as exc:
        return [], [_file_error(path, f"cannot read file: {exc.strerror or exc}")]
    if len(raw) > MAX_FILE_BYTES:
        return [], [_file_error(path, f"file is too large (more than {MAX_FILE_BYTES} bytes)")]
    if b"\x00" in raw:
        return [], [_file_error(path, "file is binary, not YAML text")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [_file_error(path, f"file is not UTF-8 text (byte {exc.start})")]
    plain = _read_plain(text, MAX_DOCUMENTS)
    if plain:  # documents with something in them: the file is not empty, no need to look at every line
        source = _Source(text, MAX_DOCUMENTS)
        return [Document(path, index, data, _LazyMarks(source, index)) for index, data in plain], []
    if not text.strip() or all(_is_blank(line) for line in text.splitlines()):
        return [], [_file_error(path, "file is empty: expected at least one manifest document")]
    return _load_text(path, text)


def _read_plain(text: str, max_documents: int) -> list[tuple[int, Any]] | None:
    """(index, value) of each document of a plain file; None for any other (or bad) file."""
    parser = Parser(text)
    try:
        return _plain_documents(parser, max_documents)
    except (_NotPlain, ValueError, yaml.YAMLError):  # ValueError: a scalar the full builder refuses
        return None
    finally:
        parser.dispose()


def _refused_by_pure_parser(text: str) -> Refused | None:
    """What fnctl's own limits say of a file libyaml rejected, read again with PyYAML's pure-Python parser.

    libyaml scans a flow collection ahead before it emits its first event, and newer releases stop at their
    own nesting limit (1000) before fnctl's 200-level check sees an event: the same file would get a
    different message and position depending on the installed parser. Only bad files take this path.
    """
    if Parser is yaml.SafeLoader:
        return None
    builder, parser = Builder(MAX_DOCUMENTS), yaml.SafeLoader(text)
    try:
        builder.run(parser)
    except Refused as exc:
        return exc
    except (yaml.YAMLError, TooManyDocuments):
        pass
    finally:
        parser.dispose()
    return None


def _load_text(path: Path, text: str) -> tuple[list[Document], list[Diagnostic]]:
    builder = Builder(MAX_DOCUMENTS)
    parser = Parser(text)
    try:
        builder.run(parser)
    except TooManyDocuments:
        return _documents(path, builder), [_file_error(path, f"too many documents (the limit is {MAX_DOCUMENTS})")]
    except Refused as exc:
        return _documents(path, builder), [Diagnostic(path, exc.position, exc.path, exc.message)]
    except yaml.MarkedYAMLError as exc:
        refused = _refused_by_pure_parser(text)
        if refused is not None:
            return _documents(path, builder), [Diagnostic(path, refused.position, refused.path, refused.message)]
        mark = exc.problem_mark or exc.context_mark
        position = Position(mark.line + 1, mark.column + 1) if mark else Position(1, 1)
        message = " ".join(filter(None, [exc.context, exc.problem]))
        return _documents(path, builder), [Diagnostic(path, position, (), f"invalid YAML: {message}")]
    except yaml.YAMLError as exc:
        return _documents(path, builder), [_file_error(path, f"invalid YAML: {exc}")]
    finally:
        parser.dispose()
    if not builder.documents:
        return [], [_file_error(path, "file is empty: expected at least one manifest document")]
    return _documents(path, builder), []


def _documents(path: Path, builder: Builder) -> list[Document]:
    return [Document(path, built.number, built.data, built.marks) for built in builder.documents]


class _NotPlain(Exception):
    """The file uses more of YAML than the fast path reads (or it is bad): the full builder takes it."""


_NO_KEY: Any = object()  # a mapping waiting for its next key
_MISSING: Any = object()
_EMPTY: Any = object()  # a document with nothing in it: between two `---`, or after a trailing one


_PLAIN_KEYS: set[str] = set()  # (short) keys seen written plain that are keys and not a merge (`<<`)


def _plain_key(event: Any) -> bool:
    """Whether a key scalar is a plain key: quoted, or written plain with a core scalar tag."""
    if not event.implicit[0]:
        return True
    text = event.value
    if (TAGS.get(text) or resolve_tag(text)) not in ALLOWED_SCALARS:
        return False
    if len(text) <= 64 and len(_PLAIN_KEYS) < 50_000:
        _PLAIN_KEYS.add(text)
    return True


def _empty_document(event: Any) -> Any:
    """The root of a document that is one untagged scalar: only an empty one is plain."""
    if event.value == "" and event.implicit[0] and event.start_mark.index == event.end_mark.index:
        return _EMPTY
    raise _NotPlain  # a scalar document gets the full builder's messages


def _plain_documents(parser: Any, max_documents: int) -> list[tuple[int, Any]]:
    """The values of each document, with as little work per event as can be: every value of every manifest
    goes through this loop. Raises _NotPlain at anything but untagged scalars and collections, no anchors."""
    get_event, plain_keys, values, no_key, missing = parser.get_event, _PLAIN_KEYS, VALUES, _NO_KEY, _MISSING
    scalar, mapping_start, sequence_start = yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent
    mapping_end, sequence_end = yaml.MappingEndEvent, yaml.SequenceEndEvent
    documents: list[tuple[int, Any]] = []
    stack: list[tuple[Any, bool]] = []  # the collections that enclose `top`
    top: Any = None  # the innermost open collection; None at the root of a document
    in_map, key, root, index = False, no_key, None, -1
    while (event := get_event()) is not None:
        kind = type(event)
        if kind is scalar:
            if event.tag is not None or event.anchor is not None:
                raise _NotPlain
            if top is None:
                root = _empty_document(event)
                continue
            text = event.value
            if key is no_key and in_map:
                if text in top or text not in plain_keys and not _plain_key(event):
                    raise _NotPlain  # a duplicate key, or `<<`
                key = text
                continue
            if not event.implicit[0]:
                value = text  # quoted
            elif (value := values.get(text, missing)) is missing:
                value = plain_value(text)
        elif kind is mapping_start or kind is sequence_start:
            if (
                event.tag is not None
                or event.anchor is not None
                or len(stack) >= MAX_DEPTH
                or (key is no_key and in_map)
            ):
                raise _NotPlain
            value = {} if kind is mapping_start else []
        elif kind is mapping_end or kind is sequence_end:
            top, in_map = stack.pop()
            continue
        elif kind is yaml.DocumentStartEvent:
            index += 1
            if index >= max_documents:
                raise _NotPlain
            root = None
            continue
        elif kind is yaml.DocumentEndEvent:
            if root is not _EMPTY:
                documents.append((index, root))
            continue
        elif kind is yaml.AliasEvent:
            raise _NotPlain
        else:
            continue
        if in_map:
            top[key] = value
            key = no_key
        elif top is None:
            root = value
        else:
            top.append(value)
        if kind is not scalar:
            stack.append((top, in_map))
            top, in_map = value, kind is mapping_start
    return documents


def _is_blank(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#") or stripped in ("---", "...")


def _file_error(path: Path, message: str) -> Diagnostic:
    return Diagnostic(path, Position(1, 1), (), message)
