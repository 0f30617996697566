"""`fnctl validate` on Node.js and TypeScript functions, end to end (a real `python -m fnctl` process with the
real esbuild, tsc and npm): every problem of the code is reported at once, each as FILE:LINE:COL: message,
beside the manifests' own, and nothing of the user's code runs on the host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "node"
MANIFEST = """\
apiVersion: fnctl/v1
kind: Function
metadata: {{name: {name}}}
spec:
  runtime: {runtime}
  source: ../functions/{name}
  handler: {handler}
---
"""


def project(root: Path, functions: dict[str, tuple[str, str, dict[str, str]]]) -> Path:
    """A project with one manifest file holding `functions`: name → (runtime, handler, files)."""
    (root / "manifests").mkdir(parents=True)
    (root / "fnctl.toml").write_text('[project]\nname = "node-checks"\n')
    text = ""
    for name, (runtime, handler, files) in functions.items():
        text += MANIFEST.format(name=name, runtime=runtime, handler=handler)
        for path, content in files.items():
            target = root / "functions" / name / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
    (root / "manifests" / "functions.yaml").write_text(text.removesuffix("---\n"))
    return root


def validate(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fnctl", "validate", *args], cwd=root, capture_output=True, text=True, timeout=120
    )


GOOD_TS = "export const handler = async (event: { name?: string }) => ({ message: `hi ${event.name}` });\n"


def test_every_code_problem_at_once_at_file_line_col(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "typed": (
                "typescript",
                "src/main.ts:handler",
                {
                    "src/main.ts": 'import { size } from "./util";\n'
                    "export const handler = async (event: { name: string }) => {\n"
                    "  const n: string = size(event.name);\n"
                    "  return { n };\n"
                    "};\n",
                    "src/util.ts": "export function size(s: string): number {\n  return s.length;\n}\n",
                },
            ),
            "syntax": (
                "typescript",
                "main.handler",
                {"main.ts": "export const handler = () => {\n  return {a: 1;\n};\n"},
            ),
            "noexport": (
                "typescript",
                "main.handler",
                {"main.ts": "const handler = async () => 1;\nexport const other = handler;\n"},
            ),
            "nofile": ("typescript", "src/missing.ts:handler", {"src/main.ts": GOOD_TS}),
            "jssyntax": (
                "nodejs22",
                "index.handler",
                {"index.mjs": "export const handler = async (event) => {\n  return event +;\n};\n"},
            ),
            "good": ("typescript", "main.handler", {"main.ts": GOOD_TS}),
        },
    )
    done = validate(root)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[:-1] == [
        'functions/jssyntax/index.mjs:2:17: Unexpected ";"',
        "functions/noexport/main.ts:1:1: the handler 'handler' is not exported (the file exports other)",
        "functions/syntax/main.ts:2:15: ',' expected. (TS1005)",
        "functions/syntax/main.ts:4:1: '}' expected. (TS1005)",
        "functions/typed/src/main.ts:3:9: Type 'number' is not assignable to type 'string'. (TS2322)",
        "manifests/functions.yaml:31:12: $.spec.handler: handler file not found in the source directory "
        "(looked for src/missing.ts)",
    ]
    assert done.stderr.splitlines()[-1] == "invalid: 6 problems in 1 file"


def test_code_problems_in_json_have_no_json_path(tmp_path: Path) -> None:
    root = project(
        tmp_path, {"typed": ("typescript", "main.handler", {"main.ts": "export const handler = (): number => 'x';\n"})}
    )
    report = json.loads(validate(root, "-o", "json").stdout)
    assert report["valid"] is False
    assert report["errors"] == [
        {
            "file": "functions/typed/main.ts",
            "line": 1,
            "column": 38,
            "path": None,
            "message": "Type 'string' is not assignable to type 'number'. (TS2322)",
        }
    ]


def test_an_import_from_outside_the_source_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.ts").write_text('export const token = "s3cr3t";\n')
    main = 'import { token } from "../../../secret";\nexport const handler = async () => ({ token });\n'
    root = project(tmp_path / "p", {"leaky": ("typescript", "main.handler", {"main.ts": main})})
    done = validate(root)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == (
        f"{tmp_path / 'secret.ts'}: imported from the function's code, but outside its source directory "
        f"{root / 'functions' / 'leaky'}"
    )


def test_manifest_paths_relative_to_the_working_directory(tmp_path: Path) -> None:
    root = project(
        tmp_path, {"typed": ("typescript", "main.handler", {"main.ts": "export const handler = (): number => 'x';\n"})}
    )
    for path in ("manifests", "manifests/functions.yaml", "./manifests/../manifests"):
        done = validate(root, path)
        assert done.stderr.splitlines()[0] == (
            "functions/typed/main.ts:1:38: Type 'string' is not assignable to type 'number'. (TS2322)"
        ), path


@pytest.mark.parametrize(
    "source",
    [
        "exports.handler = async (event) => event;\n",
        "module.exports.handler = function (event, context, callback) { callback(null, event); };\n",
        "async function handler(event) { return event; }\nmodule.exports = { handler };\n",
        "export async function handler(event) { return event; }\n",
    ],
    ids=["exports", "module-exports-callback", "module-exports-object", "esm"],
)
def test_javascript_handler_styles_are_found_without_running_them(tmp_path: Path, source: str) -> None:
    # the file would write a marker if it ran: validation reads it, never executes it
    marker = tmp_path / "ran"
    code = f"require('fs').writeFileSync({str(marker)!r}, 'x');\n" if "export async" not in source else ""
    name = "index.mjs" if "export async" in source else "index.js"
    root = project(tmp_path / "p", {"js": ("nodejs22", "index.handler", {name: code + source})})
    done = validate(root)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()


def test_commonjs_without_the_export_is_refused(tmp_path: Path) -> None:
    root = project(
        tmp_path, {"js": ("nodejs22", "index.handler", {"index.js": "exports.handle = async () => 1; // handler\n"})}
    )
    done = validate(root)
    assert done.returncode == 2
    assert "functions/js/index.js:1:1: the handler 'handler' is not exported" in done.stderr


def _package(root: Path, package: dict[str, object], lock: dict[str, object] | None) -> dict[str, str]:
    files = {"package.json": json.dumps(package, indent=2) + "\n", "main.ts": GOOD_TS}
    if lock is not None:
        files["package-lock.json"] = json.dumps(lock, indent=2) + "\n"
    return files


def test_lock_out_of_date_and_unsupported_node_are_refused(tmp_path: Path) -> None:
    lock = {
        "name": "x",
        "lockfileVersion": 3,
        "packages": {"": {"dependencies": {"camelcase": "9.0.0"}}, "node_modules/camelcase": {"version": "9.0.0"}},
    }
    stale = _package(tmp_path, {"name": "x", "dependencies": {"camelcase": "10.0.0"}}, lock)
    engines = _package(tmp_path, {"name": "y", "engines": {"node": ">=24"}}, None)
    unlocked = _package(tmp_path, {"name": "z", "dependencies": {"camelcase": "10.0.0"}}, None)
    root = project(
        tmp_path,
        {
            "stale": ("typescript", "main.handler", stale),
            "engines": ("typescript", "main.handler", engines),
            "unlocked": ("typescript", "main.handler", unlocked),
        },
    )
    done = validate(root)
    assert done.returncode == 2
    assert done.stderr.splitlines()[:-1] == [
        "functions/engines/package.json:4:5: engines.node '>=24' does not admit Node.js 22.23.5, the runtime's version",
        "functions/stale/package.json:4:5: package-lock.json is out of date with package.json: dependencies.camelcase "
        "is '10.0.0' in package.json but '9.0.0' in the lock; run `npm install`",
        "functions/unlocked/package.json:1:1: package.json declares dependencies but there is no package-lock.json: "
        "run `npm install` and commit the lock (fnctl installs exactly what it pins)",
    ]


def _addon_tarball(directory: Path, prebuilt: bool) -> str:
    """A native addon package (binding.gyp), with or without a linux-x64 prebuild, as an npm tarball."""
    staging = directory / "addon-src"
    (staging / "package").mkdir(parents=True)
    (staging / "package" / "package.json").write_text(json.dumps({"name": "fancy-addon", "version": "1.0.0"}))
    (staging / "package" / "binding.gyp").write_text("{'targets': [{'target_name': 'fancy', 'sources': ['a.cc']}]}")
    if prebuilt:
        (staging / "package" / "prebuilds" / "linux-x64").mkdir(parents=True)
        (staging / "package" / "prebuilds" / "linux-x64" / "fancy.node").write_bytes(b"\x7fELF")
    name = "fancy-addon-1.0.0.tgz"
    with tarfile.open(directory / name, "w:gz") as tar:
        tar.add(staging / "package", arcname="package")
    shutil.rmtree(staging)
    return name


@pytest.mark.parametrize("prebuilt", [False, True], ids=["no-prebuild", "linux-x64-prebuild"])
def test_native_addon_without_a_linux_x64_binary_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prebuilt: bool
) -> None:
    source = tmp_path / "functions" / "addon"
    (source / "vendor").mkdir(parents=True)
    tarball = _addon_tarball(source / "vendor", prebuilt)
    dependency = {"fancy-addon": f"file:vendor/{tarball}"}
    (source / "package.json").write_text(json.dumps({"name": "a", "dependencies": dependency}))
    (source / "main.ts").write_text(GOOD_TS)
    npm = shutil.which("npm")
    assert npm is not None
    subprocess.run(
        [npm, "install", "--package-lock-only", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=source,
        check=True,
        capture_output=True,
    )
    # a project .npmrc fnctl must not use: were it read, npm ci would install nothing (and find no addon)
    (source / ".npmrc").write_text("dry-run=true\n")
    root = project(tmp_path, {"addon": ("typescript", "main.handler", {})})
    done = subprocess.run(
        [sys.executable, "-m", "fnctl", "validate"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        # fnctl's cache and npm's own, both empty: the tarball is found in the function's source, where it is
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "npm_config_cache": str(tmp_path / "npm")},
    )
    if prebuilt:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode == 2
        assert done.stderr.startswith(
            "functions/addon/package.json:1:1: native addon without a prebuilt linux-x64 binary: fancy-addon "
        ), done.stderr
