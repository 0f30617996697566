"""`fnctl validate` with each runtime's own checks of the code: the manifests' diagnostics (manifest.validate,
pure), then, for every function whose source the manifest checks accepted, its runtime's handler check and
the problems of its code (TypeScript's type errors, syntax errors, a missing export, package files), all
sorted together. Python's handlers are parsed by the manifest checks; other languages need their tools,
which is why this sits above the pure manifest package.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from fnctl.manifest import validate
from fnctl.manifest.diagnostics import Diagnostic, Position, sorted_diagnostics
from fnctl.manifest.model import Function
from fnctl.manifest.project import Project
from fnctl.manifest.validate import ValidationResult
from fnctl.runtimes import OnLine, runtime_for

_SOURCE = ("spec", "source")
_HANDLER = ("spec", "handler")


def validate_project(
    project: Project, paths: Iterable[Path] | None = None, on_line: OnLine = lambda _: None
) -> ValidationResult:
    """Validate the manifests under `paths` (default: the project's), and the code of their functions."""
    result = validate.validate_paths(project, paths)  # through the module: what tests count is this call
    diagnostics = list(result.diagnostics)
    for function in result.state.functions:
        diagnostics += code_diagnostics(function, result.diagnostics, on_line)
    return replace(result, diagnostics=sorted_diagnostics(diagnostics))  # its warnings (and the rest) kept


def code_diagnostics(function: Function, found: list[Diagnostic], on_line: OnLine) -> list[Diagnostic]:
    """The runtime's problems with `function`'s code; none when the manifest checks refused its source or
    handler already (a source outside the project is never read)."""
    document = function.document
    if document is None or function.runtime.startswith("python"):  # as manifest.sourcechecks: Python's are done
        return []
    at = {(d.file, d.position, d.path) for d in found}
    if any((document.file, document.position(p), p) in at for p in (_SOURCE, _HANDLER)):
        return []
    runtime = runtime_for(function.runtime)
    source = Path(os.path.normpath(os.path.abspath(document.file.parent / function.source)))
    if not source.is_dir():
        return []
    problem = runtime.handler_problem(source, function.handler)
    if problem:
        return [Diagnostic(document.file, document.position(_HANDLER), _HANDLER, problem)]
    return [
        Diagnostic(p.file, Position(p.line, p.column), (), p.message, in_code=True)
        for p in runtime.code_problems(source, function.handler, on_line)
    ]
