"""What a base image can run, asked of the image itself: its Python, machine, glibc and shared libraries.

From these follow the wheel tags fnctl may install for it (every manylinux tag its glibc satisfies, PEP 600)
and whether an installed wheel's compiled code finds every library it links against: a wheel may assume the
libraries PEP 599 lists without bundling them, and a base that lacks one (libstdc++ for anything with C++
inside) would otherwise fail only at import time, with the library's own, often misleading, message.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from fnctl.engine import dockerio
from fnctl.errors import BuildFailed

# Run with the image's python3: prints what the host needs to know, as JSON. `ldconfig -p` lists what the
# dynamic loader finds (the library directories and ld.so.conf); os.confstr names the C library.
_PROBE = r"""
import json, os, platform, subprocess, sys
try:
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
except (ValueError, OSError):
    libc = ""
try:
    listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
except OSError:
    listing = ""
libraries = sorted({line.split()[0] for line in listing.splitlines()[1:] if "=>" in line})
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "machine": platform.machine(), "libc": libc,
                  "libraries": libraries}))
"""

# The legacy manylinux names (PEP 513, 571, 599) and the glibc each stands for, per architecture.
_LEGACY = (
    ("manylinux2014", 17, ("x86_64", "i686", "aarch64", "armv7l", "ppc64", "ppc64le", "s390x")),
    ("manylinux2010", 12, ("x86_64", "i686")),
    ("manylinux1", 5, ("x86_64", "i686")),
)


@dataclass(frozen=True)
class ImagePlatform:
    python: str  # "3.11"
    machine: str  # "x86_64"
    glibc: tuple[int, int]
    libraries: frozenset[str]  # sonames the image's dynamic loader finds

    def platform_tags(self) -> list[str]:
        return platform_tags(self.glibc, self.machine)


def platform_tags(glibc: tuple[int, int], machine: str) -> list[str]:
    """Every manylinux platform tag a glibc `glibc` on `machine` can run, newest first."""
    major, minor = glibc
    if major != 2:
        return []
    tags = [f"manylinux_2_{m}_{machine}" for m in range(minor, 4, -1)]
    tags += [f"{name}_{machine}" for name, needs, arches in _LEGACY if minor >= needs and machine in arches]
    return tags


def probe(base_image: str, base_id: str, cache: Path) -> ImagePlatform:
    """The platform of `base_image`, asked of the image once per image ID and cached."""
    path = cache / "platforms" / f"{base_id.removeprefix('sha256:')[:32]}.json"
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError):
        facts = json.loads(dockerio.run_once(base_image, ["-I", "-c", _PROBE], entrypoint="python3"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(facts))
        tmp.replace(path)
    return parse_probe(base_image, facts)


def parse_probe(base_image: str, facts: dict[str, object]) -> ImagePlatform:
    libc = str(facts.get("libc", ""))
    name, _, version = libc.partition(" ")
    if name != "glibc" or version.count(".") < 1:
        raise BuildFailed(
            f"the base image {base_image} has no glibc ({libc or 'confstr names no C library'}): fnctl installs "
            "manylinux wheels, which need glibc; use a Debian- or Ubuntu-based image"
        )
    major, minor = (int(part) for part in version.split(".")[:2])
    libraries = facts.get("libraries", [])
    return ImagePlatform(
        python=str(facts["python"]),
        machine=str(facts["machine"]),
        glibc=(major, minor),
        libraries=frozenset(str(lib) for lib in libraries) if isinstance(libraries, list) else frozenset(),
    )


def missing_libraries(deps: Path, available: frozenset[str]) -> list[tuple[str, str]]:
    """(file, soname) for each shared library a compiled file under `deps` needs and neither the image nor
    the installed wheels provide (auditwheel puts the libraries it bundles next to the package)."""
    files = [Path(d, n) for d, _, names in os.walk(deps) for n in names]
    bundled = {path.name for path in files}
    missing: list[tuple[str, str]] = []
    for path in sorted(files):
        if not (path.name.endswith(".so") or ".so." in path.name) or path.is_symlink():
            continue
        for soname in needed_libraries(path):
            if soname not in available and soname not in bundled:
                missing.append((str(path.relative_to(deps)), soname))
    return missing


def needed_libraries(path: Path) -> list[str]:
    """The DT_NEEDED entries of an ELF file (empty for anything that is not one)."""
    with path.open("rb") as elf:
        ident = elf.read(16)
        if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
            return []
        wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        header = elf.read(48 if wide else 36)
        phoff, phentsize, phnum = (
            struct.unpack_from(order + "Q", header, 16)[0] if wide else struct.unpack_from(order + "I", header, 12)[0],
            *struct.unpack_from(order + "HH", header, 38 if wide else 26),
        )
        loads: list[tuple[int, int, int]] = []  # (vaddr, offset, size)
        dynamic: tuple[int, int] | None = None
        for index in range(phnum):
            elf.seek(phoff + index * phentsize)
            entry = elf.read(phentsize)
            if wide:
                ptype, _, offset, vaddr, _, filesz = struct.unpack_from(order + "IIQQQQ", entry)
            else:
                ptype, offset, vaddr, _, filesz = struct.unpack_from(order + "IIIII", entry)
            if ptype == 1:
                loads.append((vaddr, offset, filesz))
            elif ptype == 2:
                dynamic = (offset, filesz)
        if dynamic is None:
            return []
        elf.seek(dynamic[0])
        table = elf.read(dynamic[1])
        size = 16 if wide else 8
        needed: list[int] = []
        strtab = None
        for start in range(0, len(table) - size + 1, size):
            tag, value = struct.unpack_from(order + ("qQ" if wide else "iI"), table, start)
            if tag == 0:
                break
            if tag == 1:
                needed.append(value)
            elif tag == 5:
                strtab = value
        base = next((off + strtab - va for va, off, sz in loads if strtab is not None and va <= strtab < va + sz), None)
        if base is None:
            return []
        names = []
        for offset in needed:
            elf.seek(base + offset)
            names.append(elf.read(256).split(b"\0", 1)[0].decode(errors="replace"))
        return names
