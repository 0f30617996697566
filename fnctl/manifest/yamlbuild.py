"""YAML parser events to plain values with the position of every value: the full builder.

It handles everything the safe subset of YAML allows (anchors, aliases, merge keys, explicit core tags) and
refuses the rest with a message and a position: Python tags, duplicate keys, alias bombs, deep nesting. No
node graph is built and nothing recurses, so a deeply nested file cannot overflow the stack.
`fnctl.manifest.loader` reads plain files faster without positions, and comes here for the others and for positions.
Plain scalars' tags and values are `fnctl.manifest.yamlscalars`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import yaml

from fnctl.manifest.diagnostics import JsonPath, Position
from fnctl.manifest.yamlscalars import ALLOWED_SCALARS, SCALAR_CONSTRUCTORS, STR, TAGS, TIMESTAMP, resolve_tag

# Aliases are legitimate (shared env blocks), but what they expand to must stay small: a billion-laughs file
# is a few lines yet expands to 10^9 values. Aliased values are shared, not copied; the budget counts the
# values reachable through aliases over the whole file (the positions of those values are recorded).
MAX_EXPANDED_NODES = 200_000
MAX_DEPTH = 200

# libyaml's parser when available (the pure-Python one otherwise); only its event stream is used
Parser: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


class Refused(Exception):
    """Raised inside conversion; carries a diagnostic's message and position."""

    def __init__(self, message: str, mark: Any, path: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.position = Position(mark.line + 1, mark.column + 1)
        self.path: JsonPath = tuple("<<" if isinstance(part, _Merge) else part for part in path)


class TooManyDocuments(Exception):
    pass


class _Merge:
    """Stands in a path for a merge key (`<<`) until its values are merged into the mapping."""

    __slots__ = ("sequence",)

    def __init__(self) -> None:
        self.sequence = False  # the merge value is a list of mappings


_NO_KEY: Any = object()  # a mapping waiting for its next key
_Path = tuple[Any, ...]  # a JsonPath, or one with a _Merge in it


class _Frame:
    """An open mapping or sequence."""

    __slots__ = ("value", "mapping", "path", "key", "count", "start", "anchor", "merges")

    def __init__(self, value: dict[str, Any] | list[Any], path: _Path, start: int, anchor: str | None) -> None:
        self.value, self.path, self.start, self.anchor = value, path, start, anchor
        self.mapping = isinstance(value, dict)
        self.key: Any = _NO_KEY
        self.count = 0
        self.merges: list[tuple[_Merge, Any, Any]] = []


class Built(NamedTuple):
    """One document: its index in the file, its value, and the parser's mark (0-based) of each value in it."""

    number: int
    data: Any
    marks: dict[JsonPath, Any]


@dataclass(frozen=True)
class _Anchor:
    """An anchored value, where it is, and the positions recorded inside it."""

    value: Any
    path: _Path
    start: int  # its positions in `Builder.order`: [start, end)
    end: int


class Builder:
    """Plain values and their positions, from parser events; aliased values are shared, not copied.

    `run` handles the common events (plain scalars, collections) inline, as this is the loop every value
    of every manifest goes through; anchors, aliases, merge keys and explicit tags go to methods.
    """

    def __init__(self, max_documents: int) -> None:
        self.max_documents = max_documents
        self.documents: list[Built] = []
        self.index = -1
        self.expanded = 0  # values reached through aliases, over the whole file
        self._document_start()

    def run(self, parser: Any) -> None:
        get_event, tags, frame_of, no_key, merge, text_tag = parser.get_event, TAGS, _Frame, _NO_KEY, _Merge, STR
        scalar_event, alias_event = yaml.ScalarEvent, yaml.AliasEvent
        mapping_start, sequence_start = yaml.MappingStartEvent, yaml.SequenceStartEvent
        mapping_end, sequence_end = yaml.MappingEndEvent, yaml.SequenceEndEvent
        order, stack = self.order, self.stack
        while (event := get_event()) is not None:
            kind = type(event)
            if kind is scalar_event or kind is mapping_start or kind is sequence_start:
                if not stack or event.anchor is not None:
                    self._value(event)
                    continue
                frame = stack[-1]
                if frame.mapping:
                    key = frame.key
                    if key is no_key:
                        if kind is scalar_event and event.tag is None and event.implicit[0]:
                            text = event.value
                            if (tags.get(text) or resolve_tag(text)) in ALLOWED_SCALARS and text not in frame.value:
                                frame.key = text  # a plain key: the common case
                                continue
                        self._key(frame, event)
                        continue
                    if type(key) is merge:
                        self._value(event)
                        continue
                    frame.key = no_key
                else:
                    key = frame.count
                    frame.count = key + 1
                path = frame.path + (key,)
                order.append((path, event.start_mark))
                if kind is scalar_event:
                    text, tag = event.value, event.tag
                    if tag is None or tag == "!":  # `!` too, as PyYAML does
                        tag = (tags.get(text) or resolve_tag(text)) if event.implicit[0] else text_tag
                    value: Any = text if tag == text_tag else self._scalar(event, path, tag)
                else:
                    if len(stack) >= MAX_DEPTH:
                        raise Refused(_too_deep(), event.start_mark)
                    if event.tag not in (None, "!", _MAP if kind is mapping_start else _SEQ):
                        raise Refused(_tag_message(event.tag), event.start_mark, path)
                    value = {} if kind is mapping_start else []
                    stack.append(frame_of(value, path, len(order) - 1, None))
                if frame.mapping:
                    frame.value[key] = value
                else:
                    frame.value.append(value)  # type: ignore[union-attr]
            elif kind is mapping_end or kind is sequence_end:
                self._end()
            elif kind is alias_event:
                self._value(event)
            elif kind is yaml.DocumentStartEvent:
                self.index += 1
                if self.index >= self.max_documents:
                    raise TooManyDocuments
                self._document_start()
                order, stack = self.order, self.stack
            elif kind is yaml.DocumentEndEvent:
                self._document_end()

    def _value(self, event: Any) -> None:
        """A value off the fast path of `run`: the root, anchored, an alias, or the value of a merge key."""
        path = self._place(event)
        if path is None:
            return
        if type(event) is yaml.AliasEvent:
            self._alias(event, path)
        elif type(event) is yaml.ScalarEvent:
            tag = self._tag(event)
            start: Any = event.start_mark
            end: Any = event.end_mark
            if not self.stack and tag == "tag:yaml.org,2002:null" and event.value == "" and start.index == end.index:
                self.empty = True  # an empty document: nothing between two `---`, or after a trailing one
                return
            value = event.value if tag == STR else self._scalar(event, path, tag)
            if event.anchor is not None:
                self._anchor(event, value, path, len(self.order) - 1)
            self._attach(path, value, event.start_mark)
        else:
            self._start(event, path)

    def _document_start(self) -> None:
        self.order: list[tuple[_Path, Any]] = []  # (path, mark) of each value, in document order
        self.anchors: dict[str, _Anchor] = {}
        self.open: set[str] = set()
        self.stack: list[_Frame] = []
        self.root: Any = None
        self.empty = self.merged = False

    def _document_end(self) -> None:
        if self.empty:
            return
        order = self.order
        if self.merged:
            order = [(p, pos) for p, pos in order if not any(type(part) is _Merge for part in p)]
        self.documents.append(Built(self.index, self.root, dict(order)))

    def _place(self, event: Any) -> _Path | None:
        """The path of the value `event` starts, recording its position; None when it is a mapping key."""
        if not self.stack:
            path: _Path = ()
        else:
            frame = self.stack[-1]
            if frame.mapping:
                if frame.key is _NO_KEY:
                    self._key(frame, event)
                    return None
                path, frame.key = frame.path + (frame.key,), _NO_KEY
            else:
                path = frame.path + (frame.count,)
                frame.count += 1
        self.order.append((path, event.start_mark))
        return path

    def _attach(self, path: _Path, value: Any, mark: Any) -> None:
        if not self.stack:
            self.root = value
            return
        container, key = self.stack[-1].value, path[-1]
        if isinstance(container, list):
            container.append(value)
        elif type(key) is _Merge:
            self.stack[-1].merges.append((key, value, mark))
        else:
            container[key] = value

    def _key(self, frame: _Frame, event: Any) -> None:
        if type(event) is not yaml.ScalarEvent:
            raise Refused("mapping keys must be plain strings", event.start_mark, frame.path)
        tag = self._tag(event)
        if tag == _MERGE:
            frame.key = _Merge()
        elif tag not in ALLOWED_SCALARS:
            raise Refused("mapping keys must be plain strings", event.start_mark, frame.path)
        elif event.value in frame.value:
            raise Refused(
                f"duplicate key {event.value!r} (YAML would silently keep only the last one)",
                event.start_mark,
                frame.path + (event.value,),
            )
        else:
            frame.key = event.value
        if event.anchor is not None:
            self._anchor(event, event.value, frame.path, len(self.order))

    def _tag(self, event: Any) -> str:
        tag = event.tag
        if tag is not None and tag != "!":
            return str(tag)
        if not event.implicit[0]:
            return STR  # quoted
        return TAGS.get(event.value) or resolve_tag(event.value)

    def _scalar(self, event: Any, path: _Path, tag: str) -> Any:
        """The value of a scalar whose tag is not str: a date stays text, other tags must be core ones."""
        return event.value if tag == TIMESTAMP else _scalar(tag, event, path)

    def _start(self, event: Any, path: _Path) -> None:
        mapping = type(event) is yaml.MappingStartEvent
        if len(self.stack) >= MAX_DEPTH:
            raise Refused(_too_deep(), event.start_mark)
        if event.tag not in (None, "!", _MAP if mapping else _SEQ):
            raise Refused(_tag_message(event.tag), event.start_mark, path)
        value: dict[str, Any] | list[Any] = {} if mapping else []
        if event.anchor is not None:
            if event.anchor in self.anchors or event.anchor in self.open:
                raise Refused(f"duplicate anchor {event.anchor!r}", event.start_mark, path)
            self.open.add(event.anchor)
        self._attach(path, value, event.start_mark)
        self.stack.append(_Frame(value, path, len(self.order) - 1, event.anchor))

    def _end(self) -> None:
        frame = self.stack.pop()
        if frame.merges:
            self._merge(frame)
        if frame.anchor is not None:
            self.open.discard(frame.anchor)
            self.anchors[frame.anchor] = _Anchor(frame.value, frame.path, frame.start, len(self.order))

    def _anchor(self, event: Any, value: Any, path: _Path, start: int) -> None:
        if event.anchor in self.anchors or event.anchor in self.open:
            raise Refused(f"duplicate anchor {event.anchor!r}", event.start_mark, path)
        self.anchors[event.anchor] = _Anchor(value, path, start, len(self.order))

    def _alias(self, event: Any, path: _Path) -> None:
        name = event.anchor
        if name in self.open:
            raise Refused(f"alias *{name} refers to a value that contains it", event.start_mark, path)
        anchor = self.anchors.get(name)
        if anchor is None:
            raise yaml.composer.ComposerError(None, None, f"found undefined alias {name!r}", event.start_mark)
        self.expanded += max(anchor.end - anchor.start, 1)
        if self.expanded > MAX_EXPANDED_NODES:
            raise Refused(
                f"aliases expand to more than {MAX_EXPANDED_NODES} values (an alias bomb?); "
                "write the values out or use fewer aliases",
                event.start_mark,
                path,
            )
        cut = len(anchor.path)
        self.order.pop()  # the alias's own position is replaced by those of the values it stands for
        self.order += [(path + p[cut:], pos) for p, pos in self.order[anchor.start : anchor.end]]
        self._attach(path, anchor.value, event.start_mark)

    def _merge(self, frame: _Frame) -> None:
        """`<<: *base` merge keys: the mapping's own keys win, then earlier sources over later ones (YAML 1.1)."""
        mapping = frame.value
        assert isinstance(mapping, dict)
        chosen: set[tuple[_Merge, int, str]] = set()
        for merge, value, mark in frame.merges:
            merge.sequence = isinstance(value, list)
            for i, source in enumerate(value if merge.sequence else [value]):
                if not isinstance(source, dict):
                    raise Refused("a merge key (<<) needs a mapping or a list of mappings", mark, frame.path)
                for key, item in source.items():
                    if key not in mapping:
                        mapping[key] = item
                        chosen.add((merge, i, key))
        depth, moved = len(frame.path), list[tuple[_Path, Any]]()
        for p, pos in self.order[frame.start :]:
            if len(p) > depth and type(p[depth]) is _Merge:
                merge = p[depth]
                rest = p[depth + 2 :] if merge.sequence else p[depth + 1 :]
                i = p[depth + 1] if merge.sequence and len(p) > depth + 1 else 0
                if rest and (merge, i, rest[0]) in chosen:
                    moved.append((frame.path + rest, pos))
        self.order += moved
        self.merged = True


def _too_deep() -> str:
    return f"document is nested too deeply (over {MAX_DEPTH} levels)"


def _scalar(tag: str, event: Any, path: _Path) -> Any:
    construct = SCALAR_CONSTRUCTORS.get(tag)
    if construct is None:
        raise Refused(_tag_message(tag), event.start_mark, path)
    try:
        value = construct(yaml.ScalarNode(tag, event.value))
    except (yaml.YAMLError, ValueError, KeyError) as exc:  # KeyError: `!!bool maybe`
        shown = tag.replace("tag:yaml.org,2002:", "!!")
        reason = "it has too many digits" if "digits" in str(exc) else f"it is not a valid {shown}"
        raise Refused(f"invalid scalar {_shorten(event.value)}: {reason}", event.start_mark, path) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise Refused(
            f"{_shorten(event.value)} is not allowed: numbers must be finite (JSON has no NaN or infinity)",
            event.start_mark,
            path,
        )
    return value


def _shorten(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _tag_message(tag: str) -> str:
    shown = tag.replace("tag:yaml.org,2002:", "!!")
    return f"YAML tag {shown} is not allowed: manifests may only use plain mappings, lists, strings, numbers, booleans and null"
