"""A Python function's dependencies, installed on the host (pip) into a directory the revision image copies.

Read the way projects write them: `requirements.lock` (pinned, installed as it is), else `requirements.txt`
(with `-r`/`-c` includes, markers, extras, `--hash`), else `pyproject.toml`'s PEP 621 `dependencies`. They are
resolved for the image's Python and every manylinux tag its glibc runs (`imageplatform`), once per input: the
resolved set is cached by the inputs, and the installed directory by the resolved set, so a code-only change
never resolves again. A package published only as an sdist is built into a wheel on the host when it is pure
Python; one that needs a compiler is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnctl.engine.imageplatform import ImagePlatform, missing_libraries
from fnctl.errors import BuildFailed

LOCK = "requirements.lock"
REQUIREMENTS = "requirements.txt"
PYPROJECT = "pyproject.toml"
# Locks of other tools, and how to turn each into the requirements.lock fnctl installs.
FOREIGN_LOCKS = {
    "uv.lock": "uv export --format requirements-txt -o requirements.lock",
    "poetry.lock": "poetry export -f requirements.txt -o requirements.lock",
    "Pipfile.lock": "pipenv requirements > requirements.lock",
    "pylock.toml": "uv export --format requirements-txt -o requirements.lock",
}
MAX_SDISTS = 8  # sdist-only packages built per resolution; each costs one more pip run
_COMPILED = (".c", ".cc", ".cpp", ".cxx", ".pyx", ".f", ".f90", ".rs", ".go")
_BUILD_FILES = ("meson.build", "CMakeLists.txt", "Cargo.toml")
_UNSATISFIED = re.compile(r"satisfies the requirement (.+?) \(from versions: (.*?)\)")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class Requirements:
    origin: str  # the file they were read from, for messages
    lines: tuple[str, ...]  # requirement and option lines, includes expanded
    constraints: tuple[str, ...]
    locked: bool  # install exactly these, without resolving dependencies


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    url: str
    sha256: str


def install_dependencies(
    source: Path, platform_of: Callable[[], ImagePlatform], cache: Path, on_line: Callable[[str], None]
) -> Path | None:
    """The directory holding `source`'s dependencies installed for the image's platform (asked of the image
    only when there are dependencies), or None when it has none."""
    requirements = read_requirements(source)
    if requirements is None:
        return None
    platform = platform_of()
    pins = resolve(requirements, source, platform, cache, on_line)
    target = install(pins, platform, cache, on_line)
    missing = missing_libraries(target, platform.libraries)
    if missing:
        shown = "; ".join(f"{file} needs {soname}" for file, soname in missing[:5])
        raise BuildFailed(
            f"a dependency of {requirements.origin} needs shared libraries the base image does not have "
            f"({', '.join(sorted({s for _, s in missing}))}): {shown}. Rebuild the base with "
            "`bash scripts/build-base-image.sh` (it installs the libraries manylinux wheels may assume) or use "
            "a base image that has them"
        )
    return target


# ---- reading -------------------------------------------------------------------------------------------


def read_requirements(source: Path) -> Requirements | None:
    for name, locked in ((LOCK, True), (REQUIREMENTS, False)):
        if (source / name).is_file():
            lines, constraints = _expand(source / name, source, set())
            return Requirements(name, tuple(lines), tuple(constraints), locked)
    if not (source / PYPROJECT).is_file():
        return None
    for lock, export in FOREIGN_LOCKS.items():
        if (source / lock).is_file():
            raise BuildFailed(
                f"{lock} in {source.name}: fnctl installs a lock written as requirements; run `{export}` in "
                f"{source} (fnctl then installs exactly what it pins)"
            )
    return _pyproject(source / PYPROJECT)


def _pyproject(path: Path) -> Requirements | None:
    try:
        project = tomllib.loads(path.read_text()).get("project", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BuildFailed(f"{path.name} is not valid TOML: {exc}") from None
    if "dependencies" in project.get("dynamic", []):
        raise BuildFailed(
            f"{path.name} declares its dependencies dynamic: list them in [project] dependencies, or write a "
            f"{REQUIREMENTS}"
        )
    dependencies = project.get("dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise BuildFailed(f"{path.name}: [project] dependencies must be a list of requirement strings (PEP 621)")
    return Requirements(PYPROJECT, tuple(dependencies), (), False) if dependencies else None


def _expand(path: Path, source: Path, seen: set[Path]) -> tuple[list[str], list[str]]:
    """The lines of a requirements file with its `-r` and `-c` includes expanded (each kept inside `source`:
    only the source directory is part of a revision)."""
    real = path.resolve()
    if real in seen:
        return [], []
    seen.add(real)
    lines: list[str] = []
    constraints: list[str] = []
    for line in _logical_lines(path.read_text()):
        option, _, argument = re.sub(r"^(-[rc]|--requirement|--constraint)[=\s]\s*", r"\1 ", line).partition(" ")
        if option in ("-r", "--requirement", "-c", "--constraint"):
            included = (path.parent / argument.strip()).resolve()
            if not included.is_relative_to(source.resolve()) or not included.is_file():
                raise BuildFailed(
                    f"{path.name} includes {argument.strip()}, which is not a file inside the function's source "
                    f"directory ({source}): copy it there (only that directory is part of a revision)"
                )
            more, more_constraints = _expand(included, source, seen)
            if option in ("-c", "--constraint"):
                constraints += more + more_constraints
            else:
                lines += more
                constraints += more_constraints
        elif option in ("-e", "--editable"):
            raise BuildFailed(f"{path.name}: editable requirements ({line}) cannot go into an image; drop -e")
        else:
            lines.append(line)
    return lines, constraints


def _logical_lines(text: str) -> list[str]:
    """Lines with continuations joined and comments (`#` at the start or after a blank) removed."""
    joined = re.sub(r"\\\r?\n", " ", text)
    lines = (re.sub(r"(^|\s)#.*$", "", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- resolving -----------------------------------------------------------------------------------------


def _pip_target(platform: ImagePlatform) -> list[str]:
    tags = [arg for tag in platform.platform_tags() for arg in ("--platform", tag)]
    return ["--only-binary=:all:", "--implementation", "cp", "--python-version", platform.python, *tags]


def _pip(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd)


def resolve(
    requirements: Requirements, source: Path, platform: ImagePlatform, cache: Path, on_line: Callable[[str], None]
) -> list[Pin]:
    """The packages `requirements` come to for `platform`, resolved once per input and cached."""
    facts = [requirements.origin, requirements.lines, requirements.constraints, requirements.locked]
    key = hashlib.sha256(json.dumps([*facts, platform.python, platform.platform_tags()]).encode()).hexdigest()
    path = cache / "resolved" / f"{key[:32]}.json"
    if path.is_file():
        return [Pin(**pin) for pin in json.loads(path.read_text())]
    on_line(f"resolving {requirements.origin} for Python {platform.python}, glibc {'.'.join(map(str, platform.glibc))}")
    built: dict[str, Pin] = {}
    while True:
        with tempfile.TemporaryDirectory(prefix="fnctl-resolve-") as tmp:
            lines = [line for line in requirements.lines if _line_name(line) not in built]
            # A hash would turn on pip's hash-checking mode for every line: only where the user's are hashed.
            hashed = any("--hash" in line for line in requirements.lines)
            lines += [f"{pin.name} @ {pin.url}" + f" --hash=sha256:{pin.sha256}" * hashed for pin in built.values()]
            args = _requirement_files(Path(tmp), lines, requirements.constraints)
            report = Path(tmp, "report.json")
            no_deps = ["--no-deps"] if requirements.locked else []
            done = _pip(
                ["install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report), "--target",
                 str(Path(tmp, "t")), *_pip_target(platform), *no_deps, *args],
                cwd=source,
            )  # fmt: skip
            if done.returncode == 0:
                pins = _pins(json.loads(report.read_text()))
                break
        unsatisfied = _UNSATISFIED.search(done.stderr + done.stdout)
        if unsatisfied is None or len(built) >= MAX_SDISTS or _line_name(unsatisfied[1]) in built:
            raise BuildFailed(
                f"installing {requirements.origin}: resolving it for Python {platform.python} failed (pip exit "
                f"{done.returncode})",
                detail=(done.stdout + done.stderr).strip()[-4000:],
            )
        options = [line for line in requirements.lines if line.startswith("-")]  # the index to ask, --no-index
        pin = build_pure_wheel(unsatisfied[1], unsatisfied[2], options, source, platform, cache, on_line)
        built[_normalize(pin.name)] = pin
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([pin.__dict__ for pin in pins]))
    return pins


def _line_name(line: str) -> str:
    found = _NAME.match(line) if not line.startswith("-") else None
    return _normalize(found[1]) if found else ""


def _requirement_files(tmp: Path, lines: list[str], constraints: tuple[str, ...]) -> list[str]:
    (tmp / "requirements.txt").write_text("\n".join(lines) + "\n")
    args = ["-r", str(tmp / "requirements.txt")]
    if constraints:
        (tmp / "constraints.txt").write_text("\n".join(constraints) + "\n")
        args += ["-c", str(tmp / "constraints.txt")]
    return args


def _pins(report: dict[str, Any]) -> list[Pin]:
    """The packages of pip's installation report (https://pip.pypa.io/en/stable/reference/installation-report/)."""
    pins = []
    for item in report.get("install", []):
        info, metadata = item["download_info"], item["metadata"]
        archive = info.get("archive_info", {})
        sha = archive.get("hashes", {}).get("sha256") or archive.get("hash", "").partition("sha256=")[2]
        if not sha and info["url"].startswith("file://"):
            sha = hashlib.sha256(Path(info["url"].removeprefix("file://")).read_bytes()).hexdigest()
        pins.append(Pin(metadata["name"], metadata["version"], info["url"], sha))
    return sorted(pins, key=lambda pin: _normalize(pin.name))


def build_pure_wheel(
    requirement: str,
    versions: str,
    options: list[str],
    source: Path,
    platform: ImagePlatform,
    cache: Path,
    on_line: Callable[[str], None],
) -> Pin:
    """`requirement` has no wheel for `platform`: build its sdist into a wheel on the host if it is pure
    Python, refuse it by name otherwise."""
    name = _line_name(requirement) or requirement
    no_wheel = (
        f"installing {name}: it has no wheel for CPython {platform.python} on {platform.machine} with glibc "
        f"{'.'.join(map(str, platform.glibc))} (pip saw versions: {versions or 'none'})"
    )
    with tempfile.TemporaryDirectory(prefix="fnctl-sdist-") as tmp:
        Path(tmp, "sdist.txt").write_text("\n".join([*options, requirement]) + "\n")
        done = _pip(["download", "--no-deps", "--no-binary=:all:", "--dest", tmp, "-r", f"{tmp}/sdist.txt"], source)
        sdists = [p for p in Path(tmp).iterdir() if p.name.endswith((".tar.gz", ".zip", ".tar.bz2"))]
        if done.returncode != 0 or not sdists:
            raise BuildFailed(f"{no_wheel}, and no source distribution either", detail=done.stderr.strip()[-4000:])
        compiled = _compiled_file(sdists[0])
        if compiled:
            raise BuildFailed(
                f"{no_wheel}; its source distribution needs a compiler ({compiled}), which fnctl does not run: "
                f"pin a version of {name} that publishes manylinux wheels, or build a wheel for the image "
                "yourself and list it with --find-links in requirements.txt"
            )
        on_line(f"building {sdists[0].name} into a wheel (pure Python, no wheel published)")
        wheels = _pip(["wheel", "--no-deps", "--quiet", "--wheel-dir", str(Path(tmp, "w")), str(sdists[0])], source)
        built = sorted(Path(tmp, "w").glob("*.whl")) if wheels.returncode == 0 else []
        if wheels.returncode != 0 or not built:
            raise BuildFailed(f"{no_wheel}, and building its sdist failed", detail=wheels.stderr.strip()[-4000:])
        if not built[0].name.endswith("-none-any.whl"):
            raise BuildFailed(f"{no_wheel}; its sdist built a platform wheel ({built[0].name}): it needs a compiler")
        house = cache / "wheelhouse"
        house.mkdir(parents=True, exist_ok=True)
        wheel = Path(shutil.copy2(built[0], house / built[0].name))
    _, version = wheel.name.split("-")[:2]
    return Pin(name, version, wheel.as_uri(), hashlib.sha256(wheel.read_bytes()).hexdigest())


def _compiled_file(sdist: Path) -> str:
    """A member of `sdist` that shows it compiles code (C, Cython, Fortran, Rust sources, a native build
    file), or "" for a pure-Python one."""
    if sdist.name.endswith(".zip"):
        with zipfile.ZipFile(sdist) as archive:
            names = archive.namelist()
    else:
        with tarfile.open(sdist) as archive:
            names = archive.getnames()
    return next((n for n in names if n.endswith(_COMPILED) or n.rsplit("/", 1)[-1] in _BUILD_FILES), "")


# ---- installing ----------------------------------------------------------------------------------------


def install(pins: list[Pin], platform: ImagePlatform, cache: Path, on_line: Callable[[str], None]) -> Path:
    """Install exactly `pins` (each file checked against its hash) into a directory keyed by them."""
    key = hashlib.sha256(json.dumps([platform.python, [pin.__dict__ for pin in pins]]).encode()).hexdigest()
    target = cache / "deps" / key[:24]
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="deps-", dir=target.parent))
    on_line(f"installing {len(pins)} packages: {', '.join(f'{p.name}=={p.version}' for p in pins)}")
    with tempfile.TemporaryDirectory(prefix="fnctl-install-") as tmp:
        lines = [f"{pin.name} @ {pin.url} --hash=sha256:{pin.sha256}" for pin in pins]
        args = _requirement_files(Path(tmp), lines, ())
        done = _pip(
            ["install", "--quiet", "--no-compile", "--no-deps", "--require-hashes", "--target", str(staging),
             *_pip_target(platform), *args],
            cwd=Path(tmp),
        )  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BuildFailed(
            f"installing {len(pins)} resolved packages failed (pip exit {done.returncode})",
            detail=(done.stdout + done.stderr).strip()[-4000:],
        )
    try:
        staging.rename(target)
    except OSError:  # another build installed the same set meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return target
