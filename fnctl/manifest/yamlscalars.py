"""YAML's plain scalars as fnctl reads them: the core tags allowed, a plain scalar's implicit tag and its value
(both remembered for short texts, which recur across manifests), and the constructors of the core types."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import yaml

_resolve: Callable[[Any, str, tuple[bool, bool]], str] = yaml.resolver.Resolver().resolve
STR = "tag:yaml.org,2002:str"
TIMESTAMP = "tag:yaml.org,2002:timestamp"  # kept as the text written: a date is just a string to fnctl
ALLOWED_SCALARS = frozenset(
    {
        STR,
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:null",
        TIMESTAMP,
    }
)
_constructor = yaml.SafeLoader("")  # only its scalar constructors are used, never its object cache
SCALAR_CONSTRUCTORS = {
    "tag:yaml.org,2002:int": _constructor.construct_yaml_int,
    "tag:yaml.org,2002:float": _constructor.construct_yaml_float,
    "tag:yaml.org,2002:bool": _constructor.construct_yaml_bool,
    "tag:yaml.org,2002:null": _constructor.construct_yaml_null,
}
TAGS: dict[str, str] = {}  # the implicit tags of (short) plain scalars seen so far
# The resolver picks its candidate patterns by first character: a plain scalar starting with any other one
# is a string (most names, paths and words), which needs no pattern at all.
_IMPLICIT = yaml.resolver.Resolver.yaml_implicit_resolvers
_RESOLVABLE = frozenset(k for k in _IMPLICIT if k) if None not in _IMPLICIT else None


def resolve_tag(text: str) -> str:
    """The implicit tag of a plain scalar: it depends on the text alone (no path resolvers are used)."""
    if text and _RESOLVABLE is not None and text[0] not in _RESOLVABLE:
        tag = STR
    else:
        tag = _resolve(yaml.ScalarNode, text, (True, False))
    if len(text) <= 64 and len(TAGS) < 50_000:
        TAGS[text] = tag
    return tag


VALUES: dict[str, Any] = {}  # the values of (short) plain scalars seen so far: all immutable, so shared


def plain_value(text: str) -> Any:
    """The value of an untagged plain scalar. Raises ValueError where `Builder` refuses it (with a message)."""
    tag = TAGS.get(text) or resolve_tag(text)
    if tag == STR or tag == TIMESTAMP:
        value: Any = text
    else:
        construct = SCALAR_CONSTRUCTORS.get(tag)
        if construct is None:
            raise ValueError(tag)  # `<<` or `=` as a value
        try:
            value = construct(yaml.ScalarNode(tag, text))
        except (yaml.YAMLError, KeyError) as exc:
            raise ValueError(text) from exc
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(text)
    if len(text) <= 64 and len(VALUES) < 50_000:
        VALUES[text] = value
    return value
