"""Safe loading of manifest files: YAML to plain values, with the position of every value.

Only YAML's core types are accepted (no Python tags, ever), duplicate keys are errors, aliases are
bounded so that an "billion laughs" file is refused before it is expanded, and files are capped in size
and document count. Bad input becomes a `Diagnostic`, never an exception.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fnctl.diagnostics import Diagnostic, JsonPath, Position

MAX_FILE_BYTES = 4 * 2**20
MAX_DOCUMENTS = 1000
# Aliases are legitimate (shared env blocks), but the expanded document must stay small: a billion-laughs
# file composes to a few nodes yet expands to 10^9; we measure the expansion on the node graph.
MAX_EXPANDED_NODES = 200_000
MAX_DEPTH = 200
# libyaml composes nodes recursively in C: a document nested some 20,000 levels deep overflows the C stack
# (a crash, not an exception). When a cheap bound on the nesting is above this, the nesting is measured on
# the event stream (iterative, no recursion) before composing.
_SAFE_COMPOSE_DEPTH = 2000
MANIFEST_SUFFIXES = (".yaml", ".yml")

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_ALLOWED_SCALARS = {
    _STR, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null",
    # kept as the text written: a date is just a string to fnctl
    "tag:yaml.org,2002:timestamp",
}
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_constructor = yaml.SafeLoader("")  # only its scalar constructors are used, never its object cache
_SCALAR_CONSTRUCTORS = {
    "tag:yaml.org,2002:int": _constructor.construct_yaml_int,
    "tag:yaml.org,2002:float": _constructor.construct_yaml_float,
    "tag:yaml.org,2002:bool": _constructor.construct_yaml_bool,
    "tag:yaml.org,2002:null": _constructor.construct_yaml_null,
}


@dataclass(frozen=True)
class Document:
    """One YAML document of a manifest file, as plain data, with positions of its values and keys."""

    file: Path
    index: int
    data: Any
    positions: dict[JsonPath, Position] = field(compare=False, repr=False)

    def position(self, path: Iterable[str | int]) -> Position:
        """Position of the value at `path`, or of its nearest ancestor that has one."""
        key = tuple(path)
        while key:
            if key in self.positions:
                return self.positions[key]
            key = key[:-1]
        return self.positions.get((), Position(1, 1))


class _Refused(Exception):
    """Raised inside conversion; carries a diagnostic's message and position."""

    def __init__(self, message: str, mark: Any, path: JsonPath = ()) -> None:
        super().__init__(message)
        self.message = message
        self.position = Position(mark.line + 1, mark.column + 1)
        self.path = path


def find_manifest_files(paths: Iterable[Path]) -> tuple[list[Path], list[Diagnostic]]:
    """Manifest files under `paths` (files as given, directories recursively), sorted; missing paths are errors."""
    found: set[Path] = set()
    errors: list[Diagnostic] = []
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.update(Path(root, f) for f in files if f.endswith(MANIFEST_SUFFIXES))
        elif path.is_file():
            found.add(path)
        else:
            errors.append(Diagnostic(path, Position(0, 0), (), f"no such file or directory: {path}"))
    return sorted(found), errors


def load_file(path: Path) -> tuple[list[Document], list[Diagnostic]]:
    """All documents of one manifest file, or the diagnostics that explain why it cannot be read."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return [], [_file_error(path, f"file is too large ({size} bytes; the limit is {MAX_FILE_BYTES})")]
        raw = path.read_bytes()
    except OSError as exc:
        return [], [_file_error(path, f"cannot read file: {exc.strerror or exc}")]
    if b"\x00" in raw:
        return [], [_file_error(path, "file is binary, not YAML text")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [_file_error(path, f"file is not UTF-8 text (byte {exc.start})")]
    if not text.strip() or all(_is_blank(line) for line in text.splitlines()):
        return [], [_file_error(path, "file is empty: expected at least one manifest document")]
    return _load_text(path, text)


def _load_text(path: Path, text: str) -> tuple[list[Document], list[Diagnostic]]:
    documents: list[Document] = []
    try:
        if _depth_bound(text) > _SAFE_COMPOSE_DEPTH:
            _check_depth(text)
        for index, node in enumerate(_compose_all(text)):
            if index >= MAX_DOCUMENTS:
                return documents, [_file_error(path, f"too many documents (the limit is {MAX_DOCUMENTS})")]
            if _is_empty_document(node):
                continue  # nothing between two `---` separators, or after a trailing one
            documents.append(_to_document(path, index, node))
    except _Refused as exc:
        return documents, [Diagnostic(path, exc.position, exc.path, exc.message)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = Position(mark.line + 1, mark.column + 1) if mark else Position(1, 1)
        message = " ".join(filter(None, [exc.context, exc.problem]))
        return documents, [Diagnostic(path, position, (), f"invalid YAML: {message}")]
    except yaml.YAMLError as exc:
        return documents, [_file_error(path, f"invalid YAML: {exc}")]
    if not documents:
        return [], [_file_error(path, "file is empty: expected at least one manifest document")]
    return documents, []


def _compose_all(text: str) -> Iterator[Any]:
    loader = _Loader(text)
    try:
        while loader.check_node():
            yield loader.get_node()
    finally:
        loader.dispose()


def _depth_bound(text: str) -> int:
    """An upper bound on the nesting of `text`: each flow level needs a bracket, and block levels need
    indentation (at most two levels per column: a mapping, then a sequence as its value)."""
    longest = max(map(len, text.splitlines()), default=0)
    return text.count("[") + text.count("{") + 2 * longest + 2


def _check_depth(text: str) -> None:
    loader = _Loader(text)
    try:
        depth = 0
        while (event := loader.get_event()) is not None:
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _Refused(_too_deep(), event.start_mark)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    finally:
        loader.dispose()


def _too_deep() -> str:
    return f"document is nested too deeply (over {MAX_DEPTH} levels)"


def _is_empty_document(node: Any) -> bool:
    return (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null" and node.value == ""
            and node.start_mark.index == node.end_mark.index)


def _to_document(path: Path, index: int, node: Any) -> Document:
    if _expanded_size(node, {}, 0) > MAX_EXPANDED_NODES:
        raise _Refused(
            f"document expands to more than {MAX_EXPANDED_NODES} values through aliases "
            "(an alias bomb?); write it out or use fewer aliases",
            node.start_mark,
        )
    positions: dict[JsonPath, Position] = {}
    data = _convert(node, (), positions)
    return Document(path, index, data, positions)


def _expanded_size(node: Any, memo: dict[int, int], depth: int) -> int:
    """Number of values `node` expands to, memoised per node so that shared (aliased) nodes cost nothing."""
    if depth > MAX_DEPTH:
        raise _Refused(_too_deep(), node.start_mark)
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = MAX_EXPANDED_NODES + 1  # a recursive alias expands forever
    total = 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            total += _expanded_size(value, memo, depth + 1) + 1
            if total > MAX_EXPANDED_NODES:
                break
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _expanded_size(item, memo, depth + 1)
            if total > MAX_EXPANDED_NODES:
                break
    memo[id(node)] = total
    return total


def _convert(node: Any, path: JsonPath, positions: dict[JsonPath, Position]) -> Any:
    positions[path] = Position(node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node, path)
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQ:
            raise _Refused(_tag_message(node.tag), node.start_mark, path)
        return [_convert(item, path + (i,), positions) for i, item in enumerate(node.value)]
    if node.tag != _MAP:
        raise _Refused(_tag_message(node.tag), node.start_mark, path)
    result: dict[str, Any] = {}
    explicit: set[str] = set()
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            _merge(result, explicit, value_node, path, positions)
            continue
        key = _key(key_node, path)
        if key in explicit:
            raise _Refused(f"duplicate key {key!r} (YAML would silently keep only the last one)",
                           key_node.start_mark, path + (key,))
        explicit.add(key)
        result[key] = _convert(value_node, path + (key,), positions)
    return result


def _merge(result: dict[str, Any], explicit: set[str], node: Any, path: JsonPath,
           positions: dict[JsonPath, Position]) -> None:
    """`<<: *base` merge keys: explicit keys of the mapping win, as YAML 1.1 says."""
    sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
    for source in sources:
        if not isinstance(source, yaml.MappingNode):
            raise _Refused("a merge key (<<) needs a mapping or a list of mappings", source.start_mark, path)
        merged = _convert(source, path, positions)
        for key, value in merged.items():
            if key not in explicit:
                result.setdefault(key, value)


def _key(node: Any, path: JsonPath) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag not in _ALLOWED_SCALARS:
        raise _Refused("mapping keys must be plain strings", node.start_mark, path)
    return str(node.value)


def _scalar(node: Any, path: JsonPath) -> Any:
    tag = node.tag
    if tag == _STR or tag == "tag:yaml.org,2002:timestamp":
        return node.value
    construct = _SCALAR_CONSTRUCTORS.get(tag)
    if construct is None:
        raise _Refused(_tag_message(tag), node.start_mark, path)
    try:
        value = construct(node)
    except (yaml.YAMLError, ValueError, KeyError) as exc:  # KeyError: `!!bool maybe`
        shown = tag.replace("tag:yaml.org,2002:", "!!")
        reason = "it has too many digits" if "digits" in str(exc) else f"it is not a valid {shown}"
        raise _Refused(f"invalid scalar {_shorten(node.value)}: {reason}", node.start_mark, path) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise _Refused(f"{_shorten(node.value)} is not allowed: numbers must be finite (JSON has no NaN or infinity)",
                       node.start_mark, path)
    return value


def _shorten(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _tag_message(tag: str) -> str:
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    return f"YAML tag {shown} is not allowed: manifests may only use plain mappings, lists, strings, numbers, booleans and null"


def _is_blank(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#") or stripped in ("---", "...")


def _file_error(path: Path, message: str) -> Diagnostic:
    return Diagnostic(path, Position(1, 1), (), message)
