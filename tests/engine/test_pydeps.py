"""Reading a function's dependencies, the wheel tags of an image and the shared-library check: no engine, no
network (issue 16 items 1, 2, 3 and 6)."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from fnctl.engine import imageplatform, pydeps
from fnctl.engine.imageplatform import ImagePlatform
from fnctl.errors import BuildFailed


def test_requirements_with_includes_markers_extras_and_hashes(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text(
        "# top\n-r common/base.txt\n--constraint=pins.txt\n"
        'python-igraph[plotting]==1.0.0 ; python_version >= "3.8"  # extras and a marker\n'
        "pyaes==1.6.1 \\\n    --hash=sha256:02c1b1405c38d3c370b085fb952dd8bea3fadcee6411ad99f312cc129c536d8f\n"
    )
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "base.txt").write_text("--index-url https://pypi.org/simple\njinja2==3.1.6\n")
    (tmp_path / "pins.txt").write_text("markupsafe==3.0.2\n")
    read = pydeps.read_requirements(tmp_path)
    assert read == pydeps.Requirements(
        "requirements.txt",
        (
            "--index-url https://pypi.org/simple",
            "jinja2==3.1.6",
            'python-igraph[plotting]==1.0.0 ; python_version >= "3.8"',
            "pyaes==1.6.1      --hash=sha256:02c1b1405c38d3c370b085fb952dd8bea3fadcee6411ad99f312cc129c536d8f",
        ),
        ("markupsafe==3.0.2",),
        locked=False,
    )


def test_a_lock_wins_and_is_installed_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("jinja2\n")
    (tmp_path / "requirements.lock").write_text("jinja2==3.1.6\nmarkupsafe==3.0.2\n")
    assert pydeps.read_requirements(tmp_path) == pydeps.Requirements(
        "requirements.lock", ("jinja2==3.1.6", "markupsafe==3.0.2"), (), locked=True
    )


def test_pyproject_dependencies(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "f"\ndependencies = ["jinja2>=3", "pyaes"]\n')
    assert pydeps.read_requirements(tmp_path) == pydeps.Requirements(
        "pyproject.toml", ("jinja2>=3", "pyaes"), (), locked=False
    )
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "f"\ndynamic = ["dependencies"]\n')
    with pytest.raises(BuildFailed, match="declares its dependencies dynamic"):
        pydeps.read_requirements(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "f"\ndependencies = ["jinja2"]\n')
    (tmp_path / "uv.lock").write_text("version = 1\n")
    with pytest.raises(
        BuildFailed, match=r"uv.lock in .*run `uv export --format requirements-txt -o requirements.lock`"
    ):
        pydeps.read_requirements(tmp_path)


def test_no_dependencies(tmp_path: Path) -> None:
    assert pydeps.read_requirements(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "f"\n')
    assert pydeps.read_requirements(tmp_path) is None


def test_an_include_outside_the_source_or_an_editable_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "fn"
    source.mkdir()
    (tmp_path / "shared.txt").write_text("jinja2\n")
    (source / "requirements.txt").write_text("-r ../shared.txt\n")
    with pytest.raises(BuildFailed, match=r"includes \.\./shared\.txt, which is not a file inside the function's"):
        pydeps.read_requirements(source)
    (source / "requirements.txt").write_text("-e ./lib\n")
    with pytest.raises(BuildFailed, match="editable requirements"):
        pydeps.read_requirements(source)


def test_wheel_tags_follow_the_images_glibc() -> None:
    tags = imageplatform.platform_tags((2, 36), "x86_64")
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_28_x86_64" in tags and "manylinux_2_5_x86_64" in tags
    assert tags[-3:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    assert "manylinux_2_28_x86_64" not in imageplatform.platform_tags((2, 17), "x86_64")
    assert imageplatform.platform_tags((2, 31), "aarch64")[-1] == "manylinux2014_aarch64"
    with pytest.raises(BuildFailed, match="has no glibc"):
        imageplatform.parse_probe("alpine", {"python": "3.11", "machine": "x86_64", "libc": "", "libraries": []})


def _sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_an_sdist_that_compiles_is_recognised(tmp_path: Path) -> None:
    pure = _sdist(tmp_path / "pure-1.0.tar.gz", {"pure-1.0/setup.py": b"", "pure-1.0/pure/__init__.py": b""})
    compiled = _sdist(tmp_path / "fast-1.0.tar.gz", {"fast-1.0/setup.py": b"", "fast-1.0/src/speed.c": b""})
    assert pydeps._compiled_file(pure) == ""
    assert pydeps._compiled_file(compiled) == "fast-1.0/src/speed.c"


# An in-tree PEP 517 backend that needs nothing installed, so pip reads the sdist's metadata offline.
BACKEND = b"""
import os

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    os.makedirs(os.path.join(metadata_directory, "fast-1.0.dist-info"))
    with open(os.path.join(metadata_directory, "fast-1.0.dist-info", "METADATA"), "w") as metadata:
        metadata.write("Metadata-Version: 2.1\\nName: fast\\nVersion: 1.0\\n")
    return "fast-1.0.dist-info"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("fnctl must not build this: it needs a C compiler")
"""


def test_an_sdist_that_compiles_is_refused_naming_the_package(tmp_path: Path) -> None:
    """Issue 16 item 3: no wheel, an sdist with C sources: refused by name with what to do (offline: a local
    --find-links directory holds the sdist only)."""
    index = tmp_path / "index"
    index.mkdir()
    pyproject = b'[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    members = {"fast-1.0/pyproject.toml": pyproject, "fast-1.0/backend.py": BACKEND, "fast-1.0/src/speed.c": b""}
    _sdist(index / "fast-1.0.tar.gz", {**members, "fast-1.0/PKG-INFO": b"Metadata-Version: 2.1\nName: fast\n"})
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "requirements.txt").write_text(f"--no-index\n--find-links {index}\nfast==1.0\n")
    requirements = pydeps.read_requirements(tmp_path / "fn")
    assert requirements is not None
    base = ImagePlatform("3.11", "x86_64", (2, 36), frozenset({"libc.so.6"}))
    with pytest.raises(BuildFailed) as failed:
        pydeps.resolve(requirements, tmp_path / "fn", base, tmp_path / "cache", lambda _: None)
    assert failed.value.message == (
        "installing fast: it has no wheel for CPython 3.11 on x86_64 with glibc 2.36 (pip saw versions: none); "
        "its source distribution needs a compiler (fast-1.0/src/speed.c), which fnctl does not run: pin a "
        "version of fast that publishes manylinux wheels, or build a wheel for the image yourself and list it "
        "with --find-links in requirements.txt"
    )


def test_a_missing_shared_library_is_named(tmp_path: Path) -> None:
    extension = next(Path("/usr/lib/python3.11/lib-dynload").glob("_ssl.*.so"))
    (tmp_path / "pkg").mkdir()
    shutil.copy(extension, tmp_path / "pkg" / extension.name)
    needed = imageplatform.needed_libraries(tmp_path / "pkg" / extension.name)
    assert "libssl.so.3" in needed and "libc.so.6" in needed
    available = frozenset({"libc.so.6", "libcrypto.so.3"})
    assert imageplatform.missing_libraries(tmp_path, available) == [(f"pkg/{extension.name}", "libssl.so.3")]
    (tmp_path / "pkg.libs").mkdir()  # bundled by auditwheel next to the package: found
    (tmp_path / "pkg.libs" / "libssl.so.3").write_bytes(b"not an ELF file")
    assert imageplatform.missing_libraries(tmp_path, available) == []


def test_install_refuses_a_dependency_the_base_cannot_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extension = next(Path("/usr/lib/python3.11/lib-dynload").glob("_ssl.*.so"))
    (tmp_path / "fn").mkdir()
    (tmp_path / "fn" / "requirements.lock").write_text("numpy==2.4.6\n")
    installed = tmp_path / "installed"
    (installed / "numpy" / "_core").mkdir(parents=True)
    shutil.copy(extension, installed / "numpy" / "_core" / "_multiarray_umath.so")
    monkeypatch.setattr(pydeps, "resolve", lambda *args: [])
    monkeypatch.setattr(pydeps, "install", lambda *args: installed)
    base = ImagePlatform("3.11", "x86_64", (2, 36), frozenset({"libc.so.6", "libcrypto.so.3"}))
    with pytest.raises(BuildFailed) as failed:
        pydeps.install_dependencies(tmp_path / "fn", lambda: base, tmp_path / "cache", lambda _: None)
    assert failed.value.message.startswith(
        "a dependency of requirements.lock needs shared libraries the base image does not have (libssl.so.3): "
        "numpy/_core/_multiarray_umath.so needs libssl.so.3. Rebuild the base with `bash scripts/build-base-image.sh`"
    )
