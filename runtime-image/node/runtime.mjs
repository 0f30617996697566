// fnctl's in-container runtime for Node.js 22 (docs/protocol.md); Node's standard library only.
// Placeholder until the runtime lands: it exits so that an instance never reports ready.
process.exit(70);
