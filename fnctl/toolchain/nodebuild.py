"""What the Node.js and TypeScript runtimes ask of the host-side toolchain: check a function's code for
`fnctl validate` (package files, dependencies, type and syntax errors, the handler's export), compile its
TypeScript, install its dependencies. Nothing here runs user code: exports are read from esbuild's
metafile, CommonJS ones from the source text.

A clean type-check is remembered in the cache under everything it read (code, tools, dependencies), so the
build that follows `validate`, and every unchanged validation, skips it.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

from fnctl.errors import BuildFailed
from fnctl.manifest.project import cache_dir
from fnctl.manifest.source import code_hash, source_files
from fnctl.toolchain import esbuild, npmdeps, tsc
from fnctl.toolchain.nodetools import Tools, ensure_tools, tools_key
from fnctl.toolchain.npm import OnLine
from fnctl.toolchain.packages import LOCK, PACKAGE, PackageFiles, package_problems
from fnctl.toolchain.problems import CodeProblem
from fnctl.toolchain.semver import Version

TS_SUFFIXES = (".ts", ".mts", ".cts")


def content_key(source: Path, typescript: bool) -> str:
    """The code's hash, and for TypeScript the pinned compilers' too (a new esbuild is a new image)."""
    return code_hash(source) + (f";tools={tools_key()}" if typescript else "")


def code_problems(
    source: Path, handler_file: Path, export: str, *, typescript: bool, node: Version, on_line: OnLine
) -> list[CodeProblem]:
    """Every problem of the function's code at once: package.json and its lock, its dependencies, then type
    and syntax errors and the handler's export."""
    problems = package_problems(_package_files(source), node)
    if problems:
        return problems
    try:
        modules = npmdeps.installed_modules(source, on_line)
    except BuildFailed as exc:  # a native addon; or npm failed (the registry, a package that is not there)
        last = (exc.detail or "").strip().splitlines()[-1:]
        return [CodeProblem(source / PACKAGE, 1, 1, ": ".join([exc.message, *last]))]
    tools = ensure_tools(on_line)
    problems = type_problems(source, tools, modules) if typescript else []
    parsed = esbuild.compile_entries(tools.esbuild, source, [handler_file], None, cjs=_cjs(handler_file))
    problems += [p for p in parsed.problems if not _same_place(p, problems)]
    if not parsed.problems:
        problems += _export_problems(handler_file, export, parsed.exports.get(handler_file.resolve(), ()))
    return problems


def type_problems(source: Path, tools: Tools, modules: Path | None) -> list[CodeProblem]:
    """tsc --noEmit over every TypeScript file of `source`; a clean result is cached."""
    files = [f for f in source_files(source) if f.suffix in TS_SUFFIXES]
    if not files:
        return []
    local = (source / "node_modules").is_dir()  # the author's own install (with devDependencies' types) wins
    config = tsc.tsconfig(source, files, tools.types, [] if local or modules is None else [modules])
    key = hashlib.sha256(f"{code_hash(source)};{tools.key};{config}".encode()).hexdigest()[:32]
    stamp = cache_dir() / "typechecked" / key
    if not local and stamp.is_file():
        return []
    problems = tsc.type_check(tools.tsc, source, config)
    if not problems and not local:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    return problems


def compile_typescript(source: Path, code: Path, on_line: OnLine) -> None:
    """Each TypeScript file of `source` → its `.mjs` (`.cts`: `.cjs`) at the same place in `code`, bundled
    with the function's own modules, npm packages left to node_modules; type-checked first."""
    tools = ensure_tools(on_line)
    problems = type_problems(source, tools, npmdeps.installed_modules(source, on_line))
    files = [f for f in source_files(source) if f.suffix in TS_SUFFIXES and not f.name.endswith(".d.ts")]
    on_line(f"esbuild: {len(files)} TypeScript file{'s' if len(files) != 1 else ''} for Node 22")
    for cjs in (False, True):
        entries = [f for f in files if (f.suffix == ".cts") == cjs]
        problems += esbuild.compile_entries(tools.esbuild, source, entries, code, cjs=cjs).problems
    if problems:
        raise BuildFailed(f"{source}: the TypeScript does not compile", detail=render(problems))


def install_dependencies(source: Path, deps: Path, on_line: OnLine) -> None:
    """The production dependencies of `source`'s lock (cached by its hash) copied into `deps`."""
    problems = package_problems(_package_files(source), None)  # engines.node: validate's, with the version
    if problems:
        raise BuildFailed(f"{source / PACKAGE}: cannot install the dependencies", detail=render(problems))
    modules = npmdeps.installed_modules(source, on_line)
    if modules is not None:
        shutil.copytree(modules, deps, symlinks=True, dirs_exist_ok=True)


def render(problems: list[CodeProblem]) -> str:
    return "\n".join(p.render() for p in problems)


def _package_files(source: Path) -> PackageFiles:
    def text(name: str) -> str | None:
        path = source / name
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None

    return PackageFiles(source, text(PACKAGE), text(LOCK))


def _cjs(file: Path) -> bool:
    return file.suffix in (".cts", ".cjs")


def _same_place(problem: CodeProblem, others: list[CodeProblem]) -> bool:
    """esbuild stops at a file's first syntax error, which tsc has reported already (in its own words)."""
    return any(o.file == problem.file and o.line == problem.line for o in others)


def _export_problems(handler_file: Path, export: str, exports: tuple[str, ...]) -> list[CodeProblem]:
    if export in exports:
        return []
    if exports in ((), ("default",)) and _commonjs_exports(handler_file, export):
        return []  # CommonJS: esbuild sees one default export; the assignment is read from the text
    listed = ", ".join(e for e in exports if e != "default") or "nothing by name"
    return [CodeProblem(handler_file, 1, 1, f"the handler {export!r} is not exported (the file exports {listed})")]


def _commonjs_exports(file: Path, export: str) -> bool:
    """`exports.X =`, `module.exports.X =` or `module.exports = { ..., X, ... }`: as Node's own
    cjs-module-lexer finds CommonJS exports, without running the file."""
    text = file.read_text(encoding="utf-8", errors="replace")
    name = re.escape(export)
    if re.search(rf"(?<![\w$.])(?:module\.)?exports\.{name}\s*=(?!=)", text):
        return True
    literal = re.search(r"module\.exports\s*=\s*\{([^}]*)\}", text)
    return bool(literal and re.search(rf"(?<![\w$]){name}(?![\w$])\s*(?:[:,(]|$)", literal.group(1)))
