// fnctl's in-container runtime for Node.js 22: loads the function's handler and serves invocations over
// Unix sockets, protocol 1 (docs/protocol.md). Node's standard library only; it never imports fnctl.
//
// Like the Python runtime (runtime-image/fnctl_runtime.py) it connects OUT and never creates a file: each
// host process that wants to talk to this instance puts up a listener `h-<pid>-<random>.sock` in the
// read-only socket directory; the runtime scans it every SCAN_INTERVAL, connects once to each such name that
// is a socket file (never a symlink), speaks first (`ready`, or `startup_failed` and exit 3), and serves
// every connection at once.
//
// Handlers, as on AWS Lambda: `async (event, context) => result`, `(event) => result`, or the callback
// style `(event, context, callback)`; CommonJS (`exports.handler`) or ESM (`export const handler`).
// `console.*` and process.stdout/stderr writes are captured per invocation (AsyncLocalStorage). JavaScript
// runs on one thread: `FNCTL_CONCURRENCY` invocations interleave at their awaits, and a handler that holds
// the CPU holds `ping` too (the host's deadline still ends it).

import { readdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { performance } from "node:perf_hooks";
import * as s from "./support.mjs";

const SCAN_INTERVAL = 20; // ms between looks for new host listeners: what a new host connection may wait
const STARTUP_REPORT_WAIT = 10_000; // ms a failed start waits for a host to listen, then to read the report
const MAX_TIMER = 2 ** 31 - 1; // ms: setTimeout's ceiling (a deadline further away needs no timer)
const LISTENER = /^h-.*\.sock$/; // the host's listeners; every other name is ignored

/** Paths of the host listeners in `directory` not yet tried (names that are gone are forgotten): socket
 * files named h-*.sock, never a symlink or anything else (readdir's type is the entry's own, unfollowed). */
function hostListeners(directory, tried) {
  let entries;
  try {
    entries = readdirSync(directory, { withFileTypes: true });
  } catch {
    return [];
  }
  const names = new Set(entries.filter((e) => LISTENER.test(e.name)).map((e) => e.name));
  for (const name of tried) if (!names.has(name)) tried.delete(name);
  const found = [];
  for (const entry of entries) {
    if (!names.has(entry.name) || tried.has(entry.name)) continue;
    tried.add(entry.name); // tried once, whatever happens: a stale listener is not retried every scan
    if (entry.isSocket()) found.push(path.join(directory, entry.name));
  }
  return found;
}

// ---- one host connection ------------------------------------------------------------------------

class Connection {
  constructor(server, socket) {
    this.server = server;
    this.socket = socket;
    this.chunks = [];
    this.buffered = 0;
    this.calls = new Map(); // call id -> {resolve, reject, timer}
    this.nextCall = 0;
    socket.setNoDelay?.(true);
    socket.on("data", (data) => this.received(data));
    socket.on("error", () => {}); // followed by "close"
    socket.on("close", () => this.lost());
  }

  received(data) {
    this.chunks.push(data);
    this.buffered += data.length;
    while (this.buffered >= 4) {
      let head = this.chunks[0];
      if (head.length < 4) head = this.join();
      const size = head.readUInt32BE(0);
      if (size > this.server.maxFrame) return this.abort(`frame of ${size} bytes is over the limit of ${this.server.maxFrame}`);
      if (this.buffered < 4 + size) return;
      const all = this.chunks.length === 1 ? this.chunks[0] : this.join();
      const body = all.subarray(4, 4 + size);
      const rest = all.subarray(4 + size);
      this.chunks = rest.length ? [rest] : [];
      this.buffered = rest.length;
      let message;
      try {
        message = JSON.parse(s.strictUtf8.decode(body));
      } catch {
        message = undefined;
      }
      if (message === null || typeof message !== "object" || Array.isArray(message)) {
        return this.abort("frame is not a JSON object");
      }
      this.server.dispatch(this, message, size);
    }
  }

  join() {
    const all = Buffer.concat(this.chunks, this.buffered);
    this.chunks = [all];
    return all;
  }

  abort(reason) {
    s.realStderrWrite(`fnctl-runtime: closing a connection: ${reason}\n`);
    this.chunks = [];
    this.buffered = 0;
    this.socket.destroy();
  }

  lost() {
    this.server.connections.delete(this);
    for (const [id, call] of this.calls) {
      this.calls.delete(id);
      clearTimeout(call.timer);
      call.reject(new s.CallbackError("ConnectionLost", "the host connection closed"));
    }
    this.server.maybeStop();
  }

  write(buffer) {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(buffer);
  }

  send(message) {
    this.write(s.encode(message));
  }

  /** A callback to the host: a promise of the reply's result, failing at the deadline or on a lost link. */
  call(invocationId, method, params, deadline) {
    if (this.socket.destroyed || !this.socket.writable) {
      return Promise.reject(new s.CallbackError("ConnectionLost", "the host connection is closed"));
    }
    const id = `c${++this.nextCall}`;
    return new Promise((resolve, reject) => {
      const call = { resolve, reject, timer: undefined };
      const wait = deadline ? Math.max(0, deadline * 1000 - Date.now()) : Infinity;
      if (wait <= MAX_TIMER) {
        call.timer = setTimeout(() => {
          this.calls.delete(id);
          reject(new s.CallbackError("Timeout", `no reply to ${JSON.stringify(method)} before the deadline`));
        }, wait);
      }
      this.calls.set(id, call);
      try {
        this.send({ type: "call", id, invocation_id: invocationId, method, params });
      } catch (error) {
        this.calls.delete(id);
        clearTimeout(call.timer);
        reject(error); // e.g. params that are not JSON: the caller's error
      }
    });
  }

  resolve(message) {
    const call = this.calls.get(String(message.id));
    if (call === undefined) return; // timed out already
    this.calls.delete(String(message.id));
    clearTimeout(call.timer);
    if (message.ok) call.resolve(message.result);
    else {
      const error = message.error && typeof message.error === "object" ? message.error : {};
      call.reject(new s.CallbackError(String(error.type ?? "Error"), String(error.message ?? ""), error));
    }
  }
}

// ---- the handler's context ----------------------------------------------------------------------

/** The handler's second argument: fnctl's names and AWS Lambda's. One per invocation, so its methods live
 * on the prototype and `db` is made on first use. */
class Context {
  #conn;

  constructor(conn, config, invocationId, deadline, caller) {
    this.#conn = conn;
    this.functionName = config.function;
    this.revision = config.revision;
    this.invocationId = invocationId;
    this.deadline = deadline; // epoch seconds
    this.caller = caller !== null && typeof caller === "object" && !Array.isArray(caller) ? caller : null;
    this.callbackWaitsForEmptyEventLoop = false; // accepted for Lambda code; nothing waits for the event loop
  }

  get awsRequestId() {
    return this.invocationId;
  }

  get functionVersion() {
    return this.revision;
  }

  get db() {
    const db = s.database(this);
    Object.defineProperty(this, "db", { value: db });
    return db;
  }

  /** Seconds left before the deadline (as the Python runtime's `remaining_time()`). */
  remainingTime() {
    return Math.max(0, this.deadline - Date.now() / 1000);
  }

  getRemainingTimeInMillis() {
    return Math.max(0, Math.round(this.deadline * 1000 - Date.now()));
  }

  /** A raw callback to the host: a promise of the reply's result (CallbackError on failure). */
  call(method, params = {}) {
    return this.#conn.call(this.invocationId, method, params, this.deadline);
  }
}
Context.prototype.Abort = s.Abort;
Context.prototype.CallbackError = s.CallbackError;

// ---- the server ---------------------------------------------------------------------------------

class Server {
  constructor(config, handler) {
    this.config = config;
    this.handler = handler;
    this.maxFrame = config.payloadLimit + s.FRAME_SLACK;
    this.connections = new Set();
    this.running = 0;
    this.waiting = [];
    this.inflight = 0;
    this.draining = false;
    this.drainReplies = [];
    this.tried = new Set();
    this.scanner = setInterval(() => this.scan(), SCAN_INTERVAL);
    this.scan();
  }

  scan() {
    if (this.draining) return; // a draining instance takes no new connections
    for (const listener of hostListeners(this.config.socketDir, this.tried)) {
      const socket = net.createConnection({ path: listener });
      socket.once("connect", () => {
        const conn = new Connection(this, socket);
        this.connections.add(conn);
        conn.send(this.readyMessage());
      });
      socket.once("error", () => socket.destroy()); // a host that died or gave up: not tried again
    }
  }

  readyMessage() {
    const c = this.config;
    return { type: "ready", protocol: s.PROTOCOL, function: c.function, revision: c.revision, pid: process.pid, concurrency: c.concurrency };
  }

  dispatch(conn, message, size) {
    const { type, id } = message;
    if (type === "invoke") this.startInvocation(conn, message, size);
    else if (type === "reply") conn.resolve(message);
    else if (type === "ping") conn.send({ type: "pong", id, inflight: this.inflight });
    else if (type === "configure") this.configure(conn, id, message.secrets);
    else if (type === "drain") this.drain(conn, id);
    else conn.send({ type: "error", id, message: `unknown message type ${JSON.stringify(type)}` });
  }

  configure(conn, id, secrets) {
    const valid =
      secrets !== null && typeof secrets === "object" && !Array.isArray(secrets) && Object.values(secrets).every((v) => typeof v === "string");
    if (!valid) return conn.send({ type: "error", id, message: "secrets must map names to strings" });
    Object.assign(process.env, secrets); // never echoed: values stay in the environment
    conn.send({ type: "configured", id });
  }

  startInvocation(conn, message, size) {
    if (this.draining) return conn.write(s.failureFrame(message.id, "draining", "Draining", "the instance is draining"));
    if (size > this.config.payloadLimit) {
      const text = `the request is ${size} bytes, over the payload limit of ${this.config.payloadLimit}`;
      return conn.write(s.failureFrame(message.id, "payload_too_large", "PayloadTooLarge", text));
    }
    this.inflight += 1;
    if (this.running < this.config.concurrency) this.begin(conn, message);
    else this.waiting.push([conn, message]); // admitted in arrival order as slots free up
  }

  begin(conn, message) {
    this.running += 1;
    const info = message.context !== null && typeof message.context === "object" ? message.context : {};
    const invocationId = String(info.invocation_id ?? "");
    const context = new Context(conn, this.config, invocationId, Number(info.deadline) || 0, info.caller ?? null);
    const invocation = { capture: new s.Capture(this.config.logLimit), done: false, settle: undefined };
    const start = performance.now();
    const finish = (outcome) => {
      if (invocation.done) return;
      invocation.done = true;
      s.echoLogs(invocationId, invocation.capture);
      conn.write(s.resultFrame(message.id, outcome, invocation.capture, performance.now() - start));
      this.finish();
    };
    invocation.settle = (error) => finish({ ok: false, error: s.failure("handler_error", error) });
    s.captured.run(invocation, () => {
      s.callHandler(this.handler, message.event, context).then(
        (result) => finish(s.serialise(result, this.config.outputLimit)),
        (error) => invocation.settle(error),
      );
    });
  }

  finish() {
    this.running -= 1;
    this.inflight -= 1;
    if (this.waiting.length) this.begin(...this.waiting.shift());
    else if (this.inflight === 0) this.maybeStop();
  }

  drain(conn, id) {
    this.draining = true;
    if (conn) this.drainReplies.push([conn, id]);
    this.maybeStop();
  }

  maybeStop() {
    if (!this.draining || this.inflight > 0) return;
    clearInterval(this.scanner);
    for (const [conn, id] of this.drainReplies.splice(0)) conn.send({ type: "drained", id });
    for (const conn of this.connections) conn.socket.end(); // flushes the `drained` reply first
    if (this.connections.size === 0) process.exit(0);
    setTimeout(() => process.exit(0), 5000).unref();
  }
}

// ---- failures outside a handler's own promise -----------------------------------------------------

/** An exception thrown from a timer or a rejection nobody handled: it fails the invocation whose async
 * context it came from (the instance keeps serving), or, outside any invocation, goes to the log. */
function failOutside(error, what) {
  const invocation = s.captured.getStore();
  if (invocation !== undefined && !invocation.done) {
    if (error instanceof Error) error.message = `${what}: ${error.message}`;
    else error = new Error(`${what}: ${s.errorMessage(error)}`);
    invocation.settle(error);
    return;
  }
  s.realStderrWrite(`fnctl-runtime: ${what} outside an invocation: ${s.userTraceback(error) || s.errorMessage(error)}\n`);
}

// ---- start-up ---------------------------------------------------------------------------------------

/** Send `startup_failed` to the hosts listening (waiting a while for a first one), wait until each has
 * hung up (a host checks who connected while this process still runs), then exit 3. */
function startupFailed(error) {
  const report = { type: s.errorName(error), message: s.errorMessage(error), traceback: s.userTraceback(error) };
  s.realStderrWrite(`fnctl-runtime: cannot load the handler\n${report.traceback || report.message + "\n"}`);
  const frame = s.encode({ type: "startup_failed", protocol: s.PROTOCOL, error: report });
  const giveUp = Date.now() + STARTUP_REPORT_WAIT;
  const tried = new Set();
  let open = 0;
  let told = 0;
  const exit = () => process.exit(3);
  setTimeout(exit, STARTUP_REPORT_WAIT + 1000).unref();
  const look = () => {
    for (const listener of hostListeners(socketDirOf(), tried)) {
      open += 1;
      const socket = net.createConnection({ path: listener });
      socket.once("connect", () => {
        told += 1;
        socket.end(frame);
      });
      socket.on("data", () => {});
      socket.on("error", () => socket.destroy());
      socket.on("close", () => {
        open -= 1;
        if (told > 0 && open === 0) exit();
      });
    }
    if (told === 0 && open === 0 && Date.now() < giveUp) setTimeout(look, SCAN_INTERVAL);
    else if (told === 0 && open === 0) exit();
  };
  look();
}

const socketDirOf = () => s.socketDir();

async function main() {
  s.captureWrites();
  let config;
  let handler;
  try {
    config = s.readConfig();
    try {
      process.chdir(config.codeDir); // relative paths in handlers resolve against their code, as on Lambda
    } catch {
      // no code directory: loading the handler says so
    }
    handler = await s.loadHandler(config);
  } catch (error) {
    return startupFailed(error);
  }
  process.on("uncaughtException", (error) => failOutside(error, "uncaught exception"));
  process.on("unhandledRejection", (error) => failOutside(error, "unhandled rejection"));
  const server = new Server(config, handler);
  for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.drain(null, null));
}

main();
