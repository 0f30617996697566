// The data plane's moving parts: triggers with their health (Enable, Run), views with their hit rates, and the
// onCommit events (Replay). The tables are what `fnctl triggers -o json`, `fnctl events ls -o json` and
// /metrics say; Run is the data plane's own POST /v1/triggers/NAME/run, under its `run` grant.
import { api, call, confirmAction, session } from "./app.js";
import { h, pct, table, when } from "./dom.js";

const fn = (name) => h("a", { href: `#/function/${encodeURIComponent(name)}` }, name);

// A page whose tables `load` (re-)fills, with a note that outlives a reload: what the last action did.
function shell(view, title, intro) {
  const out = h("div", { "aria-live": "polite" });
  const note = h("p", { id: "action-result", role: "status" });
  view.append(h("h1", {}, title), h("p", { class: "muted" }, intro), note, out);
  return { out, note };
}

// Press a button: confirm, saying what `action` will do (Cancel sends nothing), call, and say in `note` what
// happened; then `after` (a reload).
async function act(note, { action, words, request, done, after }) {
  if (!(await confirmAction(`${words}?`, `${words}: ${session.consequences[action]}.`))) return;
  note.textContent = `${words}…`; note.className = "";
  try { note.textContent = done(await request()); } catch (e) { note.textContent = `${words} failed: ${e.message}`; note.className = "error"; }
  await after();
}

export async function triggersPage(view) {
  const { out, note } = shell(view, "Triggers",
    "Every trigger the last apply published, with its health: a trigger disables itself after disableAfter consecutive faults (a hook that errs, times out or answers badly), until enabled again.");
  const event = h("textarea", { id: "run-event", rows: 2, cols: 60, placeholder: "{} (empty: the trigger's manual.event)" });
  const result = h("pre", { id: "run-result", class: "mono" });
  const granted = new Set(session.granted);
  const enable = (t) => act(note, {
    action: "enable", words: `Enable ${t.name}`,
    request: () => api(`/v1/triggers/${encodeURIComponent(t.name)}/enable`, { method: "POST", body: "{}" }),
    done: (now) => `Enable ${t.name}: done. It is ${now.disabled ? "still disabled" : "enabled"}, with ${now.faults} faults counted.`,
    after: load,
  });
  const run = async (t) => {
    let body;
    try { body = event.value.trim() ? JSON.stringify(JSON.parse(event.value)) : undefined; } catch (e) { result.textContent = `The event is not JSON: ${e.message}`; return; }
    result.textContent = `Running ${t.name}…`; result.className = "mono";
    // as `fnctl invoke` prints it: the result, or the error's kind, message and traceback
    const r = await call(`/v1/triggers/${encodeURIComponent(t.name)}/run`, { method: "POST", body });
    const revision = r.headers.get("X-Fnctl-Revision");
    const head = `${t.name}: ${r.status} ${r.statusText}${revision ? `, revision ${revision}` : ""}`;
    const err = r.body && r.body.error;
    result.className = r.ok ? "mono ok" : "mono error";
    result.textContent = r.ok ? `${head}\n${JSON.stringify(r.body, null, 2)}`
      : typeof err === "object" && err ? `${head}\n${err.kind}: ${err.message}${err.traceback ? `\n${err.traceback}` : ""}` : `${head}\n${err || ""}`;
    await load();
  };
  async function load() {
    const list = await api("/v1/triggers");
    out.replaceChildren(table(["trigger", "type", "function", "on", "order", "failure policy", "faults", "state", "last fault", ""], list.map((t) => [
      h("span", { "data-trigger": t.name }, t.name), t.type, fn(t.function), t.target, t.order ?? "-", t.failurePolicy ?? "-",
      h("span", { class: t.faults ? "warn" : "" }, String(t.faults)),
      t.disabled ? h("span", { class: "bad state", id: `state-${t.name}` }, `disabled since ${when(t.disabledAt)}`) : h("span", { class: "ok", id: `state-${t.name}` }, "enabled"),
      t.lastError ?? "-",
      h("span", { class: "actions" },
        t.disabled && granted.has("enable") ? h("button", { type: "button", id: `enable-${t.name}`, onclick: () => enable(t) }, "Enable") : null,
        t.type === "manual" ? h("button", { type: "button", id: `run-${t.name}`, onclick: () => run(t) }, "Run") : null),
    ])));
  }
  await load();
  view.append(h("h2", {}, "Run a manual trigger"),
    h("label", { for: "run-event" }, "Event (JSON; empty: the trigger's own manual.event)"), h("div", {}, event),
    h("p", { class: "muted" }, "Run needs a Policy granting run on the trigger (as fnctl run). The answer is the function's, as fnctl invoke shows it:"),
    result, h("button", { type: "button", onclick: () => load().catch((e) => { note.textContent = e.message; }) }, "Refresh"));
}

export async function viewsPage(view) {
  const { out, note } = shell(view, "Views",
    "Each view's cache since the gateway started (the numbers of /metrics), and the onCommit events of each trigger.");
  const granted = new Set(session.granted);
  const replay = (trigger) => act(note, {
    action: "replay", words: `Replay ${trigger}'s dead letters`,
    request: () => api("/v1/events/replay", { method: "POST", body: JSON.stringify({ trigger }) }),
    done: (r) => `Replay ${r.trigger}: done. ${r.replayed} event(s) pending again.`,
    after: load,
  });
  async function load() {
    const [views, counts, dead] = await Promise.all([api("/v1/views"), api("/v1/events/summary"), api("/v1/events?status=dead&limit=100")]);
    const cache = (v) => [v.cache.ttl ? `ttl ${v.cache.ttl}` : "no ttl", v.cache.perCaller ? "per caller" : null, v.dependsOn.length ? `depends on ${v.dependsOn.join(", ")}` : null].filter(Boolean).join(", ");
    out.replaceChildren(
      views.length ? table(["view", "function", "revision", "cache", "hits", "misses", "invalidations", "hit rate"], views.map((v) => [
        h("span", { "data-view": v.name }, v.name), fn(v.function), v.revision ?? "-", cache(v), v.hits, v.misses, v.invalidations,
        h("span", { id: `hit-rate-${v.name}` }, v.hits + v.misses ? pct(v.hitRate) : "- (no reads yet)"),
      ]), "hit rate = hits / (hits + misses), as fnctl_view_hit_ratio") : h("p", { class: "muted" }, "No views."),
      h("h2", {}, "onCommit events"),
      Object.keys(counts).length ? table(["trigger", "pending", "delivered (last hour)", "dead", ""], Object.entries(counts).map(([t, c]) => [
        h("span", { "data-events": t }, t), c.pending, c.delivered, h("span", { class: c.dead ? "bad" : "" }, String(c.dead)),
        c.dead && granted.has("replay") ? h("button", { type: "button", id: `replay-${t}`, onclick: () => replay(t) }, "Replay") : null,
      ])) : h("p", { class: "muted" }, "No onCommit events."),
      h("h2", {}, "Dead letters"),
      dead.length ? table(["seq", "trigger", "document", "op", "attempts", "last error", "at"], dead.map((e) => [e.seq, e.trigger, `${e.collection}/${e.id}`, e.op, e.attempts, e.lastError ?? "-", e.at]))
        : h("p", { class: "muted", id: "no-dead" }, "No dead letters."));
  }
  await load();
  view.append(h("button", { type: "button", onclick: () => load().catch((e) => { note.textContent = e.message; }) }, "Refresh"));
}
