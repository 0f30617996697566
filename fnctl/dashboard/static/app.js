// The dashboard: sign-in, the API client and the router. The credential lives in sessionStorage (this tab
// only) and goes out as the Authorization header: never in a URL, never in a cookie.
import { pages } from "./views.js";

const KEY = "fnctl.credential";
const $ = (id) => document.getElementById(id);
let stopCurrent = () => {};

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// One request as the signed-in user: {status, ok, statusText, headers, body}, whatever the status (but 401).
export async function call(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}`, "Content-Type": "application/json" },
  });
  if (response.status === 401) { signOut(); throw new ApiError(401, "signed out"); }
  const body = await response.json().catch(() => ({}));
  return { status: response.status, ok: response.ok, statusText: response.statusText, headers: response.headers, body };
}

export async function api(path, options = {}) {
  const { status, ok, statusText, body } = await call(path, options);
  if (!ok) throw new ApiError(status, body.error || body.detail || body.title || statusText);
  return body;
}

// Server-sent events read with fetch (EventSource cannot send a header): calls onView with each `rollout` event,
// and onEnd when the server ends the stream (the gateway shutting down), not when the page stops it.
export function stream(path, onView, onError, onEnd = () => {}) {
  const abort = new AbortController();
  (async () => {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` }, signal: abort.signal });
    if (!response.ok) { onError(new ApiError(response.status, (await response.json().catch(() => ({}))).error || response.statusText)); return; }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) { onEnd(); break; }
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data) onView(JSON.parse(data));
      }
    }
  })().catch((e) => { if (e.name !== "AbortError") onError(e); });
  return () => abort.abort();
}

export let session = null;

export function confirmAction(title, text) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

function signOut() {
  sessionStorage.removeItem(KEY);
  session = null;
  show();
}

// Each navigation renders into a page of its own: one that a later navigation overtook (a slow read) lands in a
// detached element and its stream is stopped, so two pages never mix in the view.
let shown = 0;

async function show() {
  const token = ++shown;
  stopCurrent(); stopCurrent = () => {};
  const signedIn = Boolean(sessionStorage.getItem(KEY));
  $("login").hidden = signedIn;
  for (const id of ["nav", "who", "signout"]) $(id).hidden = !signedIn;
  const view = document.createElement("div");
  $("view").replaceChildren(view);
  if (!signedIn) { $("credential").focus(); return; }
  try {
    if (!session) {
      const mine = await api("/v1/ui/session");
      if (token !== shown) return; // overtaken, perhaps by a sign-out: this answer may be another user's
      session = mine;
    }
    $("who").textContent = `signed in as ${session.principal}`;
    const [, page = "functions", ...rest] = (location.hash || "#/functions").split("/");
    for (const a of document.querySelectorAll("nav a")) a.setAttribute("aria-current", a.getAttribute("href") === `#/${page}` ? "page" : "false");
    const render = pages[page] || pages.functions;
    const stop = (await render(view, rest.map(decodeURIComponent))) || (() => {});
    if (token === shown) stopCurrent = stop; else stop();
  } catch (e) {
    if (e.status === 401 || token !== shown) return;
    view.replaceChildren(Object.assign(document.createElement("p"), { className: "error", role: "alert", textContent: e.status === 403 ? `Forbidden: ${e.message}` : `Error: ${e.message}` }));
    view.firstChild.dataset.status = String(e.status || "");
  }
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("credential").value.trim());
  $("credential").value = "";
  $("login-error").textContent = "";
  await show();
  if (!sessionStorage.getItem(KEY)) $("login-error").textContent = "That key or token was not accepted.";
});
$("signout").addEventListener("click", signOut);
window.addEventListener("hashchange", show);
show();
