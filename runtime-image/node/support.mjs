// The parts of fnctl's Node.js runtime (runtime.mjs) that hold no connection: configuration, frames, output
// capture, errors, `context.db`, handler loading and calling, results. Node's standard library only.

import { AsyncLocalStorage } from "node:async_hooks";
import { lstatSync, readFileSync } from "node:fs";
import path from "node:path";
import vm from "node:vm";
import { pathToFileURL, fileURLToPath } from "node:url";

const PROTOCOL = 1;
const MIB = 1 << 20;
const FRAME_SLACK = 64 * 1024; // room for the envelope around a payload at the limit
const RUNTIME_DIR = path.dirname(fileURLToPath(import.meta.url));
const realStderrWrite = process.stderr.write.bind(process.stderr);

// ---- configuration --------------------------------------------------------------------------------

function intEnv(name, fallback) {
  const value = Number.parseInt(process.env[name] ?? "", 10);
  return Number.isFinite(value) ? value : fallback;
}

function readConfig() {
  const env = process.env;
  if (!env.FNCTL_HANDLER) throw new Error("FNCTL_HANDLER is not set (expected module.export or file.js:export)");
  return {
    handler: env.FNCTL_HANDLER,
    codeDir: path.resolve(env.FNCTL_CODE_DIR || "/var/task"),
    socketDir: socketDir(),
    function: env.FNCTL_FUNCTION ?? "",
    revision: env.FNCTL_REVISION ?? "",
    concurrency: Math.max(1, intEnv("FNCTL_CONCURRENCY", 8)),
    payloadLimit: intEnv("FNCTL_PAYLOAD_LIMIT", 6 * MIB),
    outputLimit: intEnv("FNCTL_OUTPUT_LIMIT", 6 * MIB),
    logLimit: intEnv("FNCTL_LOG_LIMIT", 64 * 1024),
  };
}

function socketDir() {
  return path.resolve(process.env.FNCTL_SOCKET_DIR || "/run/fnctl");
}

// ---- frames ---------------------------------------------------------------------------------------

function frame(body) {
  const header = Buffer.allocUnsafe(4);
  header.writeUInt32BE(body.length, 0);
  return Buffer.concat([header, body]);
}

const encode = (message) => frame(Buffer.from(JSON.stringify(message), "utf8"));
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

// ---- per-invocation output capture ----------------------------------------------------------------

class Capture {
  constructor(limit) {
    this.parts = [];
    this.size = 0;
    this.limit = limit;
    this.truncated = false;
  }

  write(chunk) {
    if (this.truncated) return;
    let data = typeof chunk === "string" ? Buffer.from(chunk, "utf8") : Buffer.from(chunk);
    const room = this.limit - this.size;
    if (data.length > room) {
      data = data.subarray(0, room);
      this.truncated = true;
    }
    this.parts.push(data);
    this.size += data.length;
  }

  text() {
    if (this.parts.length === 0) return "";
    // A cut through a character at the cap drops that half character (as Python's "ignore" does).
    const text = Buffer.concat(this.parts, this.size).toString("utf8");
    return this.truncated ? text.replace(/\uFFFD+$/, "") : text;
  }
}

const captured = new AsyncLocalStorage();

// console.* ends in these writes, within the caller's async context: that context names the invocation.
function captureWrites() {
  const route = (fallback) =>
    function write(chunk, encoding, callback) {
      const capture = captured.getStore()?.capture;
      if (capture === undefined) return fallback(chunk, encoding, callback);
      capture.write(typeof chunk === "string" && typeof encoding === "string" ? Buffer.from(chunk, encoding) : chunk);
      if (typeof encoding === "function") encoding();
      else if (typeof callback === "function") callback();
      return true;
    };
  process.stdout.write = route(realStderrWrite); // stdout is the protocol's neighbour: never used for output
  process.stderr.write = route(realStderrWrite);
}

// ---- errors ---------------------------------------------------------------------------------------

class CallbackError extends Error {
  constructor(type, message, details = {}) {
    super(message);
    this.name = "CallbackError";
    this.type = type; // the host's error type (`NotFound`, `Timeout`, `ConnectionLost`, ...)
    this.details = details; // the reply's whole error object (status, problem, ...)
  }
}

class DataError extends CallbackError {
  constructor(type, message, details = {}) {
    super(type, message, details);
    this.name = this.constructor.name;
    this.status = Number.isInteger(details.status) ? details.status : 500;
    this.problem = details.problem && typeof details.problem === "object" ? details.problem : {};
    this.violations = Array.isArray(this.problem.violations) ? this.problem.violations : [];
  }
}
class NotFound extends DataError {}
class Conflict extends DataError {}
class LimitExceeded extends DataError {}
class Forbidden extends DataError {}
class Invalid extends DataError {}

/** Thrown by a handler (a before-hook, a procedure) to refuse on purpose: the invocation fails with it. */
class Abort extends Error {
  constructor(message, details = {}) {
    super(message);
    this.name = "Abort";
    this.details = details;
  }
}

const DATA_ERRORS = { NotFound, Conflict, PreconditionFailed: Conflict, LimitExceeded, Forbidden, Invalid };
const DATA_STATUS = { 404: NotFound, 409: Conflict, 412: Conflict, 429: LimitExceeded, 403: Forbidden };

function dataError(error) {
  const status = error.details.status;
  if (!Number.isInteger(status)) return error; // a lost connection or a timeout stays a CallbackError
  const Kind =
    DATA_ERRORS[error.type] ?? DATA_STATUS[status] ?? (status >= 400 && status < 500 ? Invalid : DataError);
  return new Kind(error.type, error.message, error.details);
}

function errorName(value) {
  if (value instanceof Error) return value.name || value.constructor?.name || "Error";
  return "Error";
}

function errorMessage(value) {
  try {
    return value instanceof Error ? String(value.message) : String(value);
  } catch {
    return `<${errorName(value)}: cannot be shown>`;
  }
}

/** The stack with this runtime's and Node's own frames removed: what the user's code did. */
function userTraceback(value) {
  if (!(value instanceof Error) || typeof value.stack !== "string") return "";
  const keep = (line) =>
    !/^\s+at /.test(line) || !(line.includes(RUNTIME_DIR + path.sep) || line.includes("node:internal") || /\(node:/.test(line));
  return value.stack.split("\n").filter(keep).join("\n") + "\n";
}

// ---- context.db: the data plane, over `call` frames ----------------------------------------------

class Collection {
  constructor(context, name) {
    this.context = context;
    this.name = name;
  }

  async #call(method, params) {
    try {
      return await this.context.call(method, { collection: this.name, ...params });
    } catch (error) {
      throw error instanceof CallbackError ? dataError(error) : error;
    }
  }

  get(id) {
    return this.#call("db.get", { id });
  }

  /** `{documents, cursor}`: pass the cursor back for the next page. */
  find(filter = {}, { order, limit, cursor } = {}) {
    const query = { filter: filter ?? {} };
    if (order !== undefined) query.order = order;
    if (limit !== undefined) query.limit = limit;
    if (cursor !== undefined && cursor !== null) query.cursor = cursor;
    return this.#call("db.find", query);
  }

  insert(document, { id } = {}) {
    return this.#call("db.insert", id === undefined ? { document } : { document, id });
  }

  /** A JSON merge patch (RFC 7396): `null` removes a field. */
  update(id, patch, { ifVersion } = {}) {
    return this.#call("db.update", withVersion({ id, patch }, ifVersion));
  }

  replace(id, document, { ifVersion } = {}) {
    return this.#call("db.replace", withVersion({ id, document }, ifVersion));
  }

  async delete(id, { ifVersion } = {}) {
    await this.#call("db.delete", withVersion({ id }, ifVersion));
  }
}

const withVersion = (params, ifVersion) =>
  ifVersion === undefined || ifVersion === null ? params : { ...params, if_version: ifVersion };

/** `context.db`: `context.db.collection("orders")` or `context.db["orders"]`; the error classes too. */
function database(context) {
  const db = {
    collection(name) {
      if (typeof name !== "string" || !name) throw new TypeError("a collection name is a non-empty string");
      return new Collection(context, name);
    },
    DataError,
    NotFound,
    Conflict,
    LimitExceeded,
    Forbidden,
    Invalid,
  };
  return new Proxy(db, {
    // `then` stays undefined: `await context.db` must not take it for a collection named "then"
    get: (target, key) =>
      typeof key === "string" && key !== "then" && !(key in target) ? target.collection(key) : target[key],
  });
}

// ---- handler loading ------------------------------------------------------------------------------

const JS_SUFFIXES = [".js", ".mjs", ".cjs"];
const COMPILED = { ".ts": ".mjs", ".mts": ".mjs", ".cts": ".cjs" };

/** The file a handler names (a TypeScript file: its compiled output beside it) and its export. */
function resolveHandler(spec, codeDir) {
  let candidates;
  let attr;
  if (spec.includes(":")) {
    const at = spec.lastIndexOf(":");
    const file = spec.slice(0, at);
    attr = spec.slice(at + 1);
    const ext = path.extname(file);
    candidates = [ext in COMPILED ? file.slice(0, -ext.length) + COMPILED[ext] : file];
  } else {
    const at = spec.lastIndexOf(".");
    if (at <= 0) throw new Error(`invalid handler ${JSON.stringify(spec)}: expected module.export or file.js:export`);
    attr = spec.slice(at + 1);
    const stem = spec.slice(0, at).split(".").join("/");
    candidates = [...JS_SUFFIXES, ".ts"].map((suffix) => stem + (COMPILED[suffix] ?? suffix));
  }
  for (const candidate of candidates) {
    const file = path.resolve(codeDir, candidate);
    if (!file.startsWith(codeDir + path.sep)) throw new Error(`handler file ${candidate} is outside the code`);
    try {
      if (lstatSync(file).isFile() || lstatSync(file).isSymbolicLink()) return { file, attr };
    } catch {
      // not this one
    }
  }
  const error = new Error(`handler module not found in ${codeDir} (looked for ${[...new Set(candidates)].join(", ")})`);
  error.name = "ModuleNotFoundError";
  throw error;
}

async function loadHandler(config) {
  const { file, attr } = resolveHandler(config.handler, config.codeDir);
  let module;
  try {
    module = await import(pathToFileURL(file).href);
  } catch (error) {
    if (error instanceof SyntaxError && !/^\s+at (?!.*node:)/m.test(error.stack ?? "")) locateSyntaxError(error, file, config);
    throw error;
  }
  const fn = module[attr] ?? module.default?.[attr];
  if (fn === undefined) {
    const error = new Error(`handler ${JSON.stringify(config.handler)} not found: ${path.basename(file)} exports no ${JSON.stringify(attr)}`);
    error.name = "AttributeError";
    throw error;
  }
  if (typeof fn !== "function") throw new TypeError(`handler ${JSON.stringify(config.handler)} is not a function`);
  return fn;
}

/** A syntax error from `import()` carries no position Node lets us read. Compiling a CommonJS file as a
 * script finds it (file, line and the code with a caret); an ES module's gets the file loaded named. */
function locateSyntaxError(error, file, config) {
  const shown = path.relative(config.codeDir, file);
  try {
    // Without Node's CommonJS wrapper, so the code shown is the file's own line (the message must match:
    // what compiles differently outside the wrapper, a top-level return, is not taken for the cause).
    new vm.Script(readFileSync(file, "utf8"), { filename: file });
  } catch (found) {
    if (found instanceof SyntaxError && found.message === error.message && typeof found.stack === "string") {
      error.stack = `${found.stack.split("\n\n")[0]}\n\n${error.name}: ${error.message}`;
      return;
    }
  }
  error.message += ` (loading ${shown} or a module it imports)`;
  error.stack = `${error.name}: ${error.message}`;
}

/** Call the handler in any of its styles; a promise of its result. */
function callHandler(fn, event, context) {
  if (fn.length < 3) return Promise.resolve().then(() => fn(event, context));
  return new Promise((resolve, reject) => {
    const callback = (error, result) => (error === undefined || error === null ? resolve(result) : reject(error));
    Promise.resolve()
      .then(() => fn(event, context, callback))
      .then((returned) => {
        if (returned !== undefined) resolve(returned); // an async handler that also takes a callback
      }, reject);
  });
}

// ---- results --------------------------------------------------------------------------------------

const FLOOR_BUDGET = 10_000;

/** A lower bound of the value's size as JSON, counted until it passes `limit` or the budget runs out: a
 * huge result is refused before its encoded copy is built. */
function jsonSizeFloor(value, limit) {
  let total = 0;
  let budget = FLOOR_BUDGET;
  const pending = [value];
  while (pending.length && total <= limit && budget > 0) {
    const item = pending.pop();
    budget -= 1;
    if (typeof item === "string") total += item.length + 2;
    else if (Array.isArray(item)) {
      total += 2;
      for (let n = 0; n < item.length && n < budget; n++) pending.push(item[n]);
    } else if (item !== null && typeof item === "object") {
      total += 2;
      let n = 0;
      for (const key in item) {
        if (n++ >= budget) break;
        total += key.length + 3;
        pending.push(item[key]);
      }
    } else total += 1;
  }
  return total;
}

function strictNumbers(key, value) {
  if (typeof value === "number" && !Number.isFinite(value)) throw new TypeError(`${value} is not JSON`);
  return value;
}

function serialise(result, limit) {
  const floor = jsonSizeFloor(result, limit);
  if (floor > limit) return tooLarge(floor, limit);
  let text;
  try {
    text = JSON.stringify(result === undefined ? null : result, strictNumbers);
  } catch (error) {
    return { ok: false, error: { kind: "not_serialisable", type: errorName(error), message: errorMessage(error), traceback: "" } };
  }
  if (text === undefined) text = "null"; // a function or symbol: nothing to return, as on Lambda
  if (text.length > limit) return tooLarge(text.length, limit);
  const data = Buffer.from(text, "utf8");
  if (data.length > limit) return tooLarge(data.length, limit);
  return { ok: true, data };
}

function tooLarge(size, limit) {
  const message = `the result is at least ${size} bytes, over the output limit of ${limit} bytes`;
  return { ok: false, error: { kind: "output_too_large", type: "OutputTooLarge", message, traceback: "" } };
}

// What Node's permission model refuses that Python's sandbox refuses with its pids limit: reported as the same
// typed failure (the host's "process limit reached"), not as a bug in the handler.
const PROCESS_PERMISSIONS = new Set(["ChildProcess", "WorkerThreads"]);

function failure(kind, error) {
  if (error instanceof Error && error.code === "ERR_ACCESS_DENIED" && PROCESS_PERMISSIONS.has(error.permission)) {
    const what = error.permission === "ChildProcess" ? "child processes" : "worker threads";
    const message = `the sandbox allows no new ${what} (Node's permission model refused it: ${errorMessage(error)})`;
    return { kind, type: "ProcessLimit", message, traceback: userTraceback(error) };
  }
  return { kind, type: errorName(error), message: errorMessage(error), traceback: userTraceback(error) };
}

function resultFrame(id, outcome, capture, durationMs) {
  const envelope = { type: "result", id, ok: outcome.ok, logs: capture.text(), logs_truncated: capture.truncated, duration_ms: durationMs };
  if (!outcome.ok) return encode({ ...envelope, error: outcome.error });
  const head = Buffer.from(JSON.stringify(envelope), "utf8");
  return frame(Buffer.concat([head.subarray(0, head.length - 1), Buffer.from(',"result":'), outcome.data, Buffer.from("}")]));
}

function failureFrame(id, kind, type, message) {
  const error = { kind, type, message, traceback: "" };
  return encode({ type: "result", id, ok: false, error, logs: "", logs_truncated: false, duration_ms: 0 });
}

/** Copy an invocation's (capped) output to the container's log, each line tagged with the invocation. */
function echoLogs(invocationId, capture) {
  const text = capture.text();
  if (!text) return;
  const tag = `[${invocationId.slice(0, 12)}] `;
  realStderrWrite(text.replace(/\n$/, "").split("\n").map((line) => tag + line + "\n").join(""));
}

export { Abort, CallbackError, DataError, NotFound, Conflict, LimitExceeded, Forbidden, Invalid };
export { Capture, captured, captureWrites, callHandler, database, echoLogs, failure, failureFrame, resultFrame };
export { encode, errorMessage, errorName, jsonSizeFloor, loadHandler, readConfig, resolveHandler, serialise };
export { socketDir, strictUtf8, userTraceback, realStderrWrite, PROTOCOL, FRAME_SLACK };
