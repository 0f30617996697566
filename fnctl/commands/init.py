"""`fnctl init`: a new project (fnctl.toml, one function in the runtime asked for, its manifest and an HTTP
trigger)."""

from __future__ import annotations

from pathlib import Path

from fnctl.errors import BadInput
from fnctl.manifest.project import CONFIG_FILE, slug, write_config
from fnctl.manifest.schemas import data_dir

_MANIFEST = """\
# yaml-language-server: $schema={schema}
apiVersion: fnctl/v1
kind: Function
metadata:
  name: hello
spec:
  runtime: {runtime}
  source: ../functions/hello
  handler: {handler}
  env: {{GREETING: hello}}
  limits: {{timeout: 5s, memory: 128Mi, cpu: 0.5}}
  scaling: {{minInstances: 1, maxInstances: 2, concurrency: 8}}
  access: {{roles: [public]}}
  parameters:
    type: object
    properties: {{name: {{type: string}}}}
  healthCheck:
    - event: {{name: probe}}
      expect: {{message: hello probe}}
  rollout: {{strategy: immediate}}
---
apiVersion: fnctl/v1
kind: Trigger
metadata:
  name: hello-http
spec:
  function: hello
  http: {{path: /hello, methods: [GET, POST]}}
"""

_HANDLER = '''\
"""The {name} project's first function: `fnctl invoke --local hello --data '{{"name": "you"}}'`."""

import os


def handler(event, context):
    name = event.get("name", "world")
    context.logger.info("greeting %s", name)
    return {{"message": f"{{os.environ.get('GREETING', 'hello')}} {{name}}"}}
'''


_JAVASCRIPT = """\
// The {name} project's first function: `fnctl invoke --local hello --data '{{"name": "you"}}'`.
export const handler = async (event, context) => {{
  const name = event.name ?? "world";
  console.log(`greeting ${{name}}`);
  return {{ message: `${{process.env.GREETING ?? "hello"}} ${{name}}` }};
}};
"""

_TYPESCRIPT = """\
// The {name} project's first function: `fnctl invoke --local hello --data '{{"name": "you"}}'`.
// fnctl type-checks it (tsc) and compiles it (esbuild) on this machine before building the image.

interface Event {{
  name?: string;
}}

interface Context {{
  functionName: string;
  awsRequestId: string;
  getRemainingTimeInMillis(): number;
}}

export const handler = async (event: Event, context: Context): Promise<{{ message: string }}> => {{
  const name = event.name ?? "world";
  console.log(`greeting ${{name}} in ${{context.functionName}}`);
  return {{ message: `${{process.env.GREETING ?? "hello"}} ${{name}}` }};
}};
"""

# runtime → (handler, its file, the file's template, what .gitignore adds)
RUNTIMES = {
    "python3.11": ("main.handler", "main.py", _HANDLER, "__pycache__/\n"),
    "nodejs22": ("index.handler", "index.mjs", _JAVASCRIPT, "node_modules/\n"),
    "typescript": ("src/main.ts:handler", "src/main.ts", _TYPESCRIPT, "node_modules/\n"),
}


def scaffold(directory: Path, name: str | None, *, force: bool = False, runtime: str = "python3.11") -> list[Path]:
    """Create the project files in `directory` with a function of `runtime`; refuses to overwrite anything, and
    a non-empty directory unless `force`."""
    if runtime not in RUNTIMES:
        raise BadInput(f"unknown runtime {runtime!r}; fnctl init knows {', '.join(RUNTIMES)}")
    handler, handler_file, template, ignored = RUNTIMES[runtime]
    if directory.exists() and not directory.is_dir():
        raise BadInput(f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    project = slug(name or directory.resolve().name)
    files = {
        directory / CONFIG_FILE: None,
        directory / "manifests" / "hello.yaml": _MANIFEST.format(
            schema=data_dir("schemas") / "manifest.schema.json", runtime=runtime, handler=handler
        ),
        directory / "functions" / "hello" / handler_file: template.format(name=project),
        directory / ".gitignore": ".fnctl/\n" + ignored,
    }
    existing = [p for p in files if p.exists()]
    if existing:
        raise BadInput(f"refusing to overwrite {', '.join(str(p) for p in existing)}")
    if any(directory.iterdir()) and not force:
        raise BadInput(f"{directory} is not empty; use --force to scaffold into it anyway")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            write_config(path, project)
        else:
            path.write_text(text, encoding="utf-8")
    return list(files)
