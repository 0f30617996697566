"""The host-side toolchain of the Node.js and TypeScript runtimes: the pinned tools themselves (`nodetools`:
esbuild, TypeScript's native tsc, @types/node, from node-tools/package-lock.json), one boundary module per
external tool (`npm`, `esbuild`, `tsc`), and the pure reading of a function's package.json and lock
(`packages`). User code is parsed and compiled here, never run.
"""
