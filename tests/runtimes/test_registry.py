"""The runtime registry: one Runtime per value of the schema's `spec.runtime` enum, and the Python runtime
hashing its layer exactly as before the move (existing images keep their tags)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fnctl.engine.images import runtime_hash
from fnctl.errors import BadInput
from fnctl.runtimes import RUNTIMES, runtime_for
from fnctl.runtimes.node import NODEJS, TYPESCRIPT, compiled_name
from fnctl.runtimes.python import PYTHON

ROOT = Path(__file__).resolve().parents[2]


def test_every_schema_runtime_has_a_runtime() -> None:
    schema = json.loads((ROOT / "schemas" / "function.schema.json").read_text())
    assert set(schema["properties"]["spec"]["properties"]["runtime"]["enum"]) == set(RUNTIMES)


def test_unknown_runtime_is_bad_input() -> None:
    with pytest.raises(BadInput, match="unknown runtime 'cobol'"):
        runtime_for("cobol")


def test_python_runtime_layer_hash_is_unchanged() -> None:
    digest = hashlib.sha256(b"base=sha256:abc;python=3.11\0")
    for name in ("Dockerfile", "function.Dockerfile", "fnctl_runtime.py", "launch.py"):
        digest.update(hashlib.sha256((ROOT / "runtime-image" / name).read_bytes()).digest())
    assert runtime_hash("sha256:abc", PYTHON) == digest.hexdigest()


def test_node_runtimes_have_their_own_layer() -> None:
    assert runtime_hash("sha256:abc", NODEJS) != runtime_hash("sha256:abc", PYTHON)
    assert NODEJS.base_image("fnctl-base:bookworm") != "fnctl-base:bookworm"


def test_typescript_handlers_load_their_compiled_file() -> None:
    assert compiled_name("src/main.ts") == "src/main.mjs"
    assert compiled_name("lib/x.cts") == "lib/x.cjs"
    assert compiled_name("index.js") == "index.js"


def test_node_handler_problems(tmp_path: Path) -> None:
    (tmp_path / "index.js").write_text("exports.handler = async (event) => event;\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.ts").write_text("export const handler = async (e: unknown) => e;\n")
    assert NODEJS.handler_problem(tmp_path, "index.handler") is None
    assert TYPESCRIPT.handler_problem(tmp_path, "src/main.ts:handler") is None
    assert NODEJS.handler_problem(tmp_path, "index.other") == "index.js defines no export 'other'"
    assert "looked for missing.js, missing.mjs, missing.cjs" in str(NODEJS.handler_problem(tmp_path, "missing.handler"))
    assert "outside the source directory" in str(NODEJS.handler_problem(tmp_path, "../x.js:handler"))


def test_the_python_runtime_layer_carries_the_runtime_compiled_and_the_launcher_loads_it(tmp_path: Path) -> None:
    """An instance imports the runtime's bytecode, compiled on the host when the layer is built, instead of
    compiling its source at every start (docs/runtime.md#memory): shown by a source that no longer compiles."""
    for name in PYTHON.runtime_files:
        shutil.copy2(PYTHON.runtime_dir() / name, tmp_path / name)
    PYTHON.stage_runtime(tmp_path)
    (tmp_path / "fnctl_runtime.py").write_text("this is not Python\n")
    launcher = (tmp_path / "launch.py").read_text().replace('"/opt/fnctl"', repr(str(tmp_path)))
    probe = launcher.replace("sys.exit(fnctl_runtime.main())", "print(fnctl_runtime.PROTOCOL, sys.path[0] != _dir)")
    probe = probe.replace("import sys\n", f"import sys\n_dir = {str(tmp_path)!r}\n", 1)
    done = subprocess.run([sys.executable, "-I", "-B", "-c", probe], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "1 True\n", "")
