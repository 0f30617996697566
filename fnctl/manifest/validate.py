"""`fnctl validate`: manifest files → diagnostics and, when there are none, the desired state.

The stages run in the order of the flow: load (safe YAML) → envelope (mapping, apiVersion, kind) →
schema → typed values → semantic checks. Every problem of every file is collected, then sorted.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

from fnctl.manifest.checks import check_state
from fnctl.manifest.diagnostics import Diagnostic, Position, sorted_diagnostics
from fnctl.manifest.files import Document, find_manifest_files
from fnctl.manifest.kinds import build
from fnctl.manifest.loader import load_file
from fnctl.manifest.model import (
    Collection,
    DesiredState,
    Function,
    Item,
    Kind,
    Limits,
    ParseError,
    Policy,
    Trigger,
    View,
)
from fnctl.manifest.project import Project
from fnctl.manifest.reachability import unreachable_http_triggers
from fnctl.manifest.schemas import API_VERSION, KINDS, schema_errors
from fnctl.manifest.triggerchecks import cold_hooks

_NOWHERE = Position(0, 0)  # a problem with no place in a file


@dataclass(frozen=True)
class ValidationResult:
    """The desired state, and every problem found on the way to it (none: the manifests are valid)."""

    state: DesiredState
    diagnostics: list[Diagnostic]
    files: list[Path] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)  # valid, but will not work as written

    @property
    def ok(self) -> bool:
        return not self.diagnostics


def validate_paths(project: Project, paths: Iterable[Path] | None = None) -> ValidationResult:
    """Validate every manifest under `paths` (default: the project's manifest folders)."""
    with _gc_paused():
        return _validate_paths(project, paths)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Loading builds a large heap that holds no cycles worth collecting: left running, the cyclic garbage
    collector rescans it over and over, which takes as long as the loading itself. Afterwards what was built
    joins the oldest generation (freeze, then unfreeze), so the next young collection does not scan it all."""
    enabled, frozen = gc.isenabled(), gc.get_freeze_count()
    gc.disable()
    try:
        yield
    finally:
        if not frozen:  # leave alone a caller's own use of gc.freeze
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()


def _validate_paths(project: Project, paths: Iterable[Path] | None) -> ValidationResult:
    files, diagnostics = find_manifest_files(list(paths) if paths else list(project.manifest_paths))
    if not paths and not project.has_config:  # outside any project: say so, not only that manifests/ is missing
        hint = f" (no fnctl.toml in {project.root} or above: run `fnctl init`, or name the manifest files)"
        diagnostics = [replace(d, message=d.message + hint) for d in diagnostics]
    if not files and not diagnostics:
        where = ", ".join(str(p) for p in (paths or project.manifest_paths))
        diagnostics.append(Diagnostic(Path(where), _NOWHERE, (), "no manifest files (*.yaml, *.yml) found"))
    documents: list[Document] = []
    for path in files:
        loaded, problems = load_file(path)
        documents += loaded
        diagnostics += problems
    state, problems = build_state(documents, project.root, project.default_limits)
    warnings = [
        Diagnostic(item.document.file, item.document.position(path), path, message)
        for item, path, message in chain(unreachable_http_triggers(state), cold_hooks(state))
        if item.document is not None
    ]
    return ValidationResult(state, sorted_diagnostics(diagnostics + problems), files, sorted_diagnostics(warnings))


def build_state(documents: list[Document], root: Path, defaults: Limits) -> tuple[DesiredState, list[Diagnostic]]:
    diagnostics: list[Diagnostic] = []
    values: list[Item] = []
    invalid: set[tuple[Kind, str]] = set()
    for doc in documents:
        problems = envelope_problems(doc.data)
        if not problems:
            problems = [(tuple(p), m) for p, m in schema_errors(doc.data["kind"], doc.data)]
        if not problems:
            try:
                values.append(build(doc, defaults))
            except ParseError as exc:
                problems = [(exc.path, str(exc))]
        diagnostics += [Diagnostic(doc.file, doc.position(p), p, m) for p, m in problems]
        if problems and not envelope_problems(doc.data) and isinstance(doc.data.get("metadata"), dict):
            invalid.add((Kind(doc.data["kind"]), str(doc.data["metadata"].get("name"))))
    state = DesiredState(
        functions=tuple(v for v in values if isinstance(v, Function)),
        triggers=tuple(v for v in values if isinstance(v, Trigger)),
        views=tuple(v for v in values if isinstance(v, View)),
        policies=tuple(v for v in values if isinstance(v, Policy)),
        collections=tuple(v for v in values if isinstance(v, Collection)),
    )
    for item, path, message in check_state(state, root, frozenset(invalid)):
        assert item.document is not None
        diagnostics.append(Diagnostic(item.document.file, item.document.position(path), path, message))
    return state, diagnostics


def envelope_problems(data: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """What makes `data` not an fnctl document at all, each with its own message."""
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", type(None): "null"}.get(type(data), type(data).__name__)
        return [((), f"a manifest document must be a mapping with apiVersion, kind, metadata and spec; got {kind}")]
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if "apiVersion" not in data:
        problems.append(((), f"missing apiVersion (expected {API_VERSION})"))
    elif data["apiVersion"] != API_VERSION:
        problems.append(((("apiVersion",)), f"unsupported apiVersion {data['apiVersion']!r} (expected {API_VERSION})"))
    if "kind" not in data:
        problems.append(((), f"missing kind (expected one of {', '.join(KINDS)})"))
    elif data["kind"] not in KINDS:
        problems.append((("kind",), f"unknown kind {data['kind']!r} (expected one of {', '.join(KINDS)})"))
    return problems
