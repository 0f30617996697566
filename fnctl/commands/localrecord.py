"""What `fnctl invoke --local` validates, and the record of its last passing validation: while the manifests,
the project settings and the functions' source trees are exactly what that validation read, `invoke --local`
rebuilds the function from the record instead of validating again.

Validation itself (`fnctl.runtimes.validation.validate_project`: the YAML parser, the schemas, the checks) is
handed in by the caller, a `Validator`: while the record stands, a warm `invoke --local` never loads it."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnctl import __version__
from fnctl.engine.instances import runtime_root
from fnctl.errors import BadInput, UnknownName
from fnctl.manifest.files import MAX_FILE_BYTES, Document, find_manifest_files
from fnctl.manifest.kinds import build
from fnctl.manifest.model import DesiredState, Function
from fnctl.manifest.project import Project

if TYPE_CHECKING:
    from fnctl.manifest.validate import ValidationResult

# Validates a project's manifests (all of them, or the files given) and its functions' code.
Validator = Callable[[Project, "list[Path] | None"], "ValidationResult"]

RECORD_FORMAT = 1
# A source file changed this close to (or after) the start of a validation may have changed while it ran,
# after being read: such a validation is not recorded. 2 s covers the coarsest file timestamps (FAT).
RACY_NS = 2_000_000_000
RECORD_LIFETIME = 86_400.0


def _validate(project: Project, target: str, validate: Validator) -> tuple[Function, DesiredState]:
    by_path = _by_path(target)
    result = validate(project, [Path(target)] if by_path else None)
    if not result.ok:
        raise BadInput("the manifests are invalid:\n" + "\n".join(d.render() for d in result.diagnostics))
    functions = result.state.functions
    if by_path:
        if len(functions) != 1:
            raise BadInput(f"{target} defines {len(functions)} functions; name one instead")
        return functions[0], result.state
    for function in functions:
        if function.name == target:
            return function, result.state
    known = ", ".join(sorted(f.name for f in functions)) or "none"
    raise UnknownName("function", target, "is not in the manifests", f"known: {known}")


def _by_path(target: str) -> bool:
    path = Path(target)
    return path.suffix in (".yaml", ".yml") or path.is_file()


def function_source(function: Function) -> Path:
    assert function.document is not None
    return function.document.file.parent / function.source


# ---- the record of the last passing validation --------------------------------------------------------
# Validation reads the manifest files (their bytes are hashed before it runs, so an edit made while it runs
# is seen next time), the project settings, and every function's source tree (symlinks, the handler's
# file). The record holds a hash of all of that and the target function's document; while every hash
# matches, validation would give the same verdict and the same function, so the document is rebuilt instead.


def recorded_function(project: Project, target: str) -> Function | None:
    """The function of the last passing validation of `target`, or None when anything it read has changed."""
    try:
        record = json.loads(_record_path(project, target).read_text(encoding="utf-8"))
        if record.get("format") != RECORD_FORMAT or record["manifests"] != _manifests_digest(project, target):
            return None
        if record["sources"] != _sources_signature(record["sourceDirs"])[0]:
            return None
        document = Document(Path(record["file"]), int(record["index"]), record["document"], {})
        function = build(document, project.default_limits)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no record, an unreadable one, or a document that no longer builds: validate again
    if not isinstance(function, Function) or not (_by_path(target) or function.name == target):
        return None
    return function


def validated_function(
    project: Project, target: str, validate: Validator, *, record: bool
) -> tuple[Function, DesiredState]:
    """The function and the desired state, validated; with `record`, the passing validation is recorded for
    the next calls."""
    manifests = _manifests_digest(project, target) if record else None
    started = time.time_ns()
    function, state = _validate(project, target, validate)
    if manifests is not None:
        try:
            _write_record(project, target, manifests, function, state, started)
        except OSError:
            pass  # the record only saves time: the next call validates again
    return function, state


def _write_record(
    project: Project, target: str, manifests: str, function: Function, state: DesiredState, started: int
) -> None:
    assert function.document is not None
    directories = sorted({os.path.normpath(os.path.abspath(function_source(f))) for f in state.functions})
    signature, newest = _sources_signature(directories)
    data = function.document.data
    if newest >= started - RACY_NS or not _json_exact(data):
        return  # a source may have changed while validation read it, or the record could not hold the document
    record = {
        "format": RECORD_FORMAT,
        "manifests": manifests,
        "sources": signature,
        "sourceDirs": directories,
        "file": str(function.document.file),
        "index": function.document.index,
        "document": data,
    }
    path = _record_path(project, target)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(record, out)
    os.replace(partial, path)  # whole or not at all, also with two calls at once
    _prune_records(path.parent)


def _json_exact(data: Any) -> bool:
    """True when JSON gives `data` back as it is (YAML also allows, say, integer keys)."""
    try:
        return bool(json.loads(json.dumps(data)) == data)
    except (TypeError, ValueError):
        return False


def _prune_records(directory: Path) -> None:
    """Records not rewritten for a day go (projects long deleted, test runs): the next call of one still in
    use validates once more and records it again."""
    too_old = time.time() - RECORD_LIFETIME
    for entry in os.scandir(directory):
        if entry.name.startswith("validated-"):  # also partial writes left by a killed call
            try:
                if entry.stat(follow_symlinks=False).st_mtime < too_old:
                    os.unlink(entry.path)
            except OSError:
                pass  # gone already: another call pruned it


def _record_path(project: Project, target: str) -> Path:
    """Beside the warm instances' socket directories (private to the user), never inside one: what is in
    those is mounted into a sandbox, and a record is not the sandbox's business."""
    where = hashlib.sha256(f"{project.root}\0{Path.cwd()}\0{target}".encode()).hexdigest()[:24]
    return runtime_root() / f"validated-{where}.json"


def _manifests_digest(project: Project, target: str) -> str | None:
    """Hash of the manifest files' names and bytes, of the project's settings and of fnctl's version."""
    by_path = _by_path(target)
    files, missing = find_manifest_files([Path(target)] if by_path else list(project.manifest_paths))
    if missing or not files:
        return None
    digest = hashlib.sha256(
        f"{RECORD_FORMAT}\0{__version__}\0{project!r}\0{os.path.realpath(project.root)}\0{target}\0{by_path}\0".encode()
    )
    for path in files:
        with path.open("rb") as file:
            status = os.fstat(file.fileno())
            if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_FILE_BYTES:
                return None  # validation refuses these: never recorded
            content = file.read(MAX_FILE_BYTES + 1)
        digest.update(f"{path}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def _sources_signature(directories: list[str]) -> tuple[str, int]:
    """Hash of every entry below `directories` (name, type, size, times, where symlinks lead), and the
    newest modification time seen."""
    digest = hashlib.sha256()
    newest = 0
    for top in directories:
        digest.update(f"{top}\0{os.path.realpath(top)}\0".encode())
        pending = [top]
        while pending:
            directory = pending.pop()
            try:
                status = os.stat(directory, follow_symlinks=False)
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                digest.update(f"{directory}\0error {exc.errno}\0".encode())
                continue
            newest = max(newest, status.st_mtime_ns)
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                newest = max(newest, info.st_mtime_ns)
                digest.update(
                    f"{entry.path}\0{info.st_mode}\0{info.st_size}\0{info.st_mtime_ns}\0"
                    f"{info.st_ctime_ns}\0{info.st_ino}\0".encode()
                )
                if entry.is_symlink():
                    digest.update(f"->{os.path.realpath(entry.path)}\0".encode())
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
    return digest.hexdigest(), newest
