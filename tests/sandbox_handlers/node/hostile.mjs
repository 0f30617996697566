// The hostile probes of tests/engine/test_node_sandbox.py: each pushes one limit of the sandbox.
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";

const MIB = 1 << 20;

/** Starts child processes until refused. */
export const forkBomb = async () => {
  let children = 0;
  try {
    for (;;) {
      spawn("/bin/sleep", ["600"]);
      children += 1;
    }
  } catch (error) {
    console.log(`children=${children}`);
    throw error;
  }
};

/** Holds on to memory 8 MiB at a time until the engine's OOM killer ends it. */
export const memoryBomb = async () => {
  const hoard = [];
  for (;;) hoard.push(Buffer.alloc(8 * MIB, 1));
};

/** An endless loop when asked to; answers otherwise. */
export const spin = async (event) => {
  if (event.spin) for (;;);
  return { spun: false };
};

/** Writes 1 MiB files into /tmp until the filesystem refuses; logs how much fitted, then fails. */
export const fillTmp = async (event) => {
  const chunk = Buffer.alloc(MIB);
  let written = 0;
  try {
    while (written < (event.max ?? 2 ** 30)) {
      writeFileSync(`/tmp/fill-${written / MIB}`, chunk);
      written += MIB;
    }
  } catch (error) {
    console.log(`written=${written}`);
    throw error;
  }
  return { written };
};

export const bigResult = async (event) => "x".repeat(event.size);

/** Throws from a timer, outside the handler's own promise, which never settles. */
export const uncaught = async () => {
  setTimeout(() => {
    throw new Error("thrown from a timer");
  }, 5);
  return new Promise(() => {});
};

/** Leaves a rejected promise nobody handles, and never settles its own. */
export const unhandled = async () => {
  Promise.reject(new Error("nobody caught me"));
  return new Promise(() => {});
};

/** What Node's permission model lets the code do inside the sandbox. */
export const permissions = async () => {
  const attempt = (what) => {
    try {
      what();
      return "allowed";
    } catch (error) {
      return error.code ?? error.name;
    }
  };
  return {
    readPasswd: attempt(() => readFileSync("/etc/passwd")),
    readOwnCode: attempt(() => readFileSync(new URL(import.meta.url))),
    writeTmp: attempt(() => writeFileSync("/tmp/ok", "x")),
    spawn: attempt(() => spawn("/bin/true")),
    uid: process.getuid(),
  };
};
