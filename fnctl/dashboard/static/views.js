// The pages. Each renders into `view` and may return a function that stops what it started (a stream).
import { api, confirmAction, session, stream } from "./app.js";
import { sparkline, weightChart } from "./charts.js";
import { h, pct, table, when } from "./dom.js";
import { triggersPage, viewsPage } from "./plane.js";

const link = (href, text) => h("a", { href }, text);
const fn = (name) => `#/function/${encodeURIComponent(name)}`;

async function functions(view) {
  const [list, traffic] = await Promise.all([api("/v1/functions"), api("/v1/traffic")]);
  const rows = list.map((f) => {
    const serving = f.instances.filter((i) => !i.orphan);
    const healthy = serving.filter((i) => i.healthy).length;
    const spans = traffic[f.function] || { revisions: {} };
    return [
      link(fn(f.function), f.function),
      f.liveRevision ?? "-",
      Object.entries(f.weights).map(([r, w]) => `r${r}: ${w}%`).join(", ") || "-",
      h("span", { class: serving.length && healthy === serving.length ? "ok" : "bad" }, `${healthy}/${serving.length} healthy`),
      h("span", {}, Object.entries(spans.revisions).map(([r, pts], i) => h("span", {}, `r${r} `, sparkline(pts, 300, `revision ${r}: requests and errors per second, last 5 minutes`, `s${i % 4}`), " "))),
      `${when(f.lastDeploy)}${f.lastDeployBy ? ` by ${f.lastDeployBy}` : ""}`,
      f.gitCommit ? h("span", {}, h("code", {}, f.gitCommit.slice(0, 8)), ` ${f.gitSubject || ""}`) : "-",
      f.rollout ? link(`#/rollout/${encodeURIComponent(f.function)}`, f.rollout.split(" (")[0]) : "-",
    ];
  });
  view.append(h("h1", {}, "Functions"),
    table(["function", "live revision", "weights", "instances", "traffic (5 min)", "last deploy", "commit", "rollout"], rows),
    h("button", { type: "button", onclick: () => window.dispatchEvent(new HashChangeEvent("hashchange")) }, "Refresh"));
}

async function functionPage(view, [name]) {
  const data = await api(`/v1/functions/${encodeURIComponent(name)}`);
  const numbers = data.revisions.map((r) => r.number);
  const diffOut = h("div", { id: "diff-result", "aria-live": "polite" });
  const pick = (id, value) => h("select", { id }, numbers.map((n) => h("option", { value: n, selected: n === value }, `revision ${n}`)));
  const from = pick("diff-from", numbers[Math.max(0, numbers.length - 2)]);
  const to = pick("diff-to", numbers[numbers.length - 1]);
  const diff = async (event) => {
    event.preventDefault();
    const d = await api(`/v1/functions/${encodeURIComponent(name)}/diff?from=${from.value}&to=${to.value}`);
    diffOut.replaceChildren(d.changes.length
      ? table(["field", `revision ${d.from}`, `revision ${d.to}`], d.changes.map((c) => [h("code", {}, c.path), JSON.stringify(c.old), JSON.stringify(c.new)]))
      : h("p", {}, "The two specs are the same."));
  };
  view.append(
    h("h1", {}, name),
    h("p", {}, link(`#/rollout/${encodeURIComponent(name)}`, "Latest rollout"), " · ", link(`#/abtest/${encodeURIComponent(name)}`, "A/B test report"), " · ", link(`#/audit/${encodeURIComponent(name)}`, "Audit")),
    h("h2", {}, "Revisions"),
    table(["revision", "status", "created", "by", "commit", "author", "reason", "traffic (5 min)"], [...data.revisions].reverse().map((r) => [
      r.number, h("span", { class: r.status === "ready" ? "ok" : r.status === "quarantined" || r.status === "failed" ? "bad" : "" }, r.status),
      when(r.createdAt), r.createdBy, r.gitCommit ? h("code", {}, r.gitCommit.slice(0, 8)) : "-", r.gitAuthor, r.reason,
      data.traffic.revisions[r.number] ? sparkline(data.traffic.revisions[r.number], 300, `revision ${r.number}: requests and errors per second`) : "-",
    ])),
    h("h2", {}, "Triggers"),
    data.triggers.length ? table(["trigger", "kind", "detail"], data.triggers.map((t) => [link("#/triggers", t.name), t.http ? "http" : t.cron ? "cron" : t.on ? "on" : t.manual ? "manual" : "other", JSON.stringify(t.http || t.cron || t.on || t.manual || t)])) : h("p", { class: "muted" }, "No triggers."),
    h("h2", {}, "Compare two revisions' specs"),
    h("form", { class: "filters", onsubmit: diff },
      h("label", { for: "diff-from" }, "From", from), h("label", { for: "diff-to" }, "To", to), h("button", { type: "submit" }, "Compare")),
    diffOut);
}

// The weight of each revision at each change: all traffic on stable when the rollout starts, then every event
// that set weights (a revision an event leaves out has none: an abort names only the stable one), then now.
function weightSeries(events, status) {
  const series = { [status.stable]: [[status.startedAt, 100]], [status.canary]: [[status.startedAt, 0]] };
  for (const e of events) {
    const weights = e.data && e.data.weights;
    if (!weights) continue;
    for (const rev of new Set([...Object.keys(series), ...Object.keys(weights)])) (series[rev] ||= []).push([e.at, weights[rev] || 0]);
  }
  const end = Math.max(status.updatedAt, ...events.map((e) => e.at));
  for (const [rev, w] of Object.entries(status.weights)) (series[rev] ||= []).push([end, w]);
  return series;
}

// Each analysis result's figures against its step's thresholds: "2.0% ≤ max 5.0%", in words and colour.
function measurements(events, stages) {
  return events.filter((e) => e.event === "measurement").map((e) => {
    const t = (stages[e.step - 1] || {}).thresholds || {};
    const d = e.data || {}, st = d.stable || {};
    const ms = (x) => `${Number(x).toFixed(1)} ms`;
    const vs = (value, limit, fmt, least = false) => {
      if (value === null || value === undefined) return "-";
      if (limit === null || limit === undefined) return fmt(value);
      const within = least ? value >= limit : value <= limit;
      return h("span", { class: within ? "ok" : least ? "warn" : "bad" }, `${fmt(value)} ${within ? (least ? "≥" : "≤") : least ? "<" : ">"} ${least ? "min" : "max"} ${fmt(limit)}`);
    };
    const increase = d.errorRate !== undefined && st.errorRate !== undefined && st.errorRate !== null ? d.errorRate - st.errorRate : null;
    const ratio = d.p95Ms && st.p95Ms ? d.p95Ms / st.p95Ms : null;
    const figures = [
      vs(d.requests, t.minRequests || null, String, true), vs(d.errorRate, t.maxErrorRate, pct),
      vs(increase, t.maxErrorRateIncrease, pct), vs(d.p95Ms, t.maxP95LatencyMs, ms), vs(ratio, t.maxP95LatencyRatio, (x) => `${x.toFixed(2)}×`),
    ];
    const text = `${when(e.at)} step ${e.step} analysis: ${d.outcome}: ${figures.map((f) => (f instanceof Node ? f.textContent : f)).join(", ")}`;
    return { at: e.at, outcome: d.outcome, text, row: [when(e.at), `step ${e.step}`, h("span", { class: d.outcome === "pass" ? "ok" : d.outcome === "fail" ? "bad" : "warn" }, d.outcome), ...figures, e.message] };
  });
}

const ACTIONS = { promote: "Promote", abort: "Abort", retry: "Retry", rollback: "Roll back" };

// What a finished action did, in words, from the answer of its POST.
function outcome(action, answer) {
  if (action === "rollback") return `${ACTIONS[action]}: done. Revision ${answer.to} takes all traffic again (rolled away from revision ${answer.from}).`;
  return `${ACTIONS[action]}: done. The rollout of revision ${answer.canary} is ${answer.state} at step ${answer.step} of ${answer.steps}.`;
}

async function rolloutPage(view, [name]) {
  const path = `/v1/functions/${encodeURIComponent(name)}`;
  const body = h("div", { id: "rollout" });
  const note = h("p", { id: "action-result", role: "status" });
  const live = h("p", { id: "live-status", class: "muted", role: "status" }, "Connecting…");
  view.append(h("h1", {}, `Rollout of ${name}`), live, body, note);
  const granted = new Set(session.granted);
  const render = (v) => {
    live.textContent = "Live: updates appear as the rollout moves.";
    renderView(v);
    performance.mark("fnctl:rollout-rendered"); // read by benchmarks/bench_ui.py
  };
  const renderView = (v) => {
    const st = v.status;
    const button = (action, enabled) => granted.has(action) ? h("button", {
      type: "button", id: `do-${action}`, class: action === "promote" || action === "retry" ? "" : "danger", disabled: !enabled,
      onclick: async () => {
        const words = ACTIONS[action];
        if (!(await confirmAction(`${words} ${name}?`, `${words}: ${session.consequences[action]}.`))) return;
        note.textContent = `${words}…`; note.className = "";
        try { note.textContent = outcome(action, await api(`${path}/${action}`, { method: "POST", body: "{}" })); }
        catch (e) { note.textContent = `${words} failed: ${e.message}`; note.className = "error"; }
      },
    }, ACTIONS[action]) : null;
    const active = ["progressing", "paused"].includes(st.state);
    const results = measurements(v.events, v.stages);
    body.replaceChildren(
      h("p", {}, `${st.strategy} of revision ${st.canary} over revision ${st.stable}: `,
        h("span", { class: `state ${st.state === "completed" ? "ok" : st.state === "aborted" ? "bad" : "warn"}`, id: "rollout-state" }, st.state),
        st.reason ? h("span", { class: "bad", id: "rollout-reason" }, ` (${st.reason})`) : null),
      h("div", { class: "actions" },
        button("promote", active), button("abort", active),
        button("retry", st.state === "aborted"), button("rollback", !active || st.state === "paused")),
      h("h2", {}, "Steps"),
      h("ol", { class: "steps", id: "steps" }, v.stages.map((stage, i) => h("li", {
        class: i + 1 < st.step || st.state === "completed" ? "done" : "", "aria-current": i + 1 === st.step && active ? "step" : false,
      }, `${i + 1}. ${stage.label}`))),
      h("h2", {}, "Traffic"),
      h("p", { id: "weights" }, Object.entries(st.weights).map(([r, w]) => `revision ${r}: ${w}%`).join(" · ")),
      ...weightChart(weightSeries(v.events, st), st.startedAt, Math.max(st.updatedAt, ...v.events.map((e) => e.at)), results,
        { [st.stable]: "stable", [st.canary]: "canary" }),
      h("h2", {}, "Analysis"),
      results.length
        ? table(["time", "step", "outcome", "requests", "error rate", "error rate over stable", "p95", "p95 / stable's", "detail"], results.map((r) => r.row), "each figure against the step's threshold")
        : h("p", { class: "muted" }, "No measurement yet."),
      h("h2", {}, "Events"),
      table(["time", "step", "event", "message"], [...v.events].reverse().map((e) => [when(e.at), e.step, e.event, e.message])));
  };
  const fail = (e) => body.replaceChildren(h("p", { class: "error", role: "alert", "data-status": e.status || "" }, e.status === 403 ? `Forbidden: ${e.message}` : e.message));
  return stream(`${path}/rollout/stream`, render, fail,
    () => { live.textContent = "Live updates ended: the gateway closed the stream (it is stopping or restarting). Reload to reconnect."; live.className = "warn"; });
}

async function abtestPage(view, [name]) {
  const r = await api(`/v1/functions/${encodeURIComponent(name)}/abtest`);
  const ms = (x) => (x === null || x === undefined ? "-" : x.toFixed(1));
  const alpha = 1 - r.confidence;
  const test = (t) => (t ? h("span", { class: t.significant ? "bad" : "" }, `z ${t.statistic.toFixed(2)}, p ${t.pValue < 0.001 ? "< 0.001" : t.pValue.toFixed(3)} ${t.significant ? "<" : "≥"} ${alpha.toFixed(3)}: ${t.significant ? "significant" : "not significant"}`) : "not tested");
  view.append(h("h1", {}, `A/B test of ${name}`),
    h("p", {}, `at ${pct(r.confidence)} confidence, at least ${r.minSamples} requests per variant`),
    table(["variant", "revision", "requests", "errors", "error rate", "p50 ms", "p95 ms", "p99 ms"],
      r.variants.map((v) => [v.name, v.revision, v.requests, v.errors, pct(v.errorRate), ms(v.p50Ms), ms(v.p95Ms), ms(v.p99Ms)])),
    h("h2", {}, "Verdict"),
    h("ul", { id: "verdicts" }, r.comparisons.map((c) => h("li", { class: c.enoughSamples ? "" : "warn" }, `${c.variant} vs ${c.control}: ${c.verdict}`))),
    r.comparisons.length ? table(["comparison", "enough samples", "error rate (two-proportion z test)", "latency (Mann-Whitney U)"],
      r.comparisons.map((c) => [`${c.variant} vs ${c.control}`, c.enoughSamples ? "yes" : "no", test(c.errorRate), test(c.latency)]), "the tests behind the verdict") : null);
}

async function auditPage(view, [preset]) {
  const out = h("div", { "aria-live": "polite" });
  const field = (id, label, attrs = {}) => h("label", { for: id }, label, h("input", { id, name: id, ...attrs }));
  const form = h("form", { class: "filters", id: "audit-filters" },
    field("function", "Function or key id", { value: preset || "" }), field("actor", "Actor"),
    field("since", "Since (1h, 2024-05-01)"), field("limit", "Limit", { value: "100", inputmode: "numeric" }),
    h("label", { for: "invocations" }, "Invocations", h("input", { id: "invocations", type: "checkbox" })),
    h("button", { type: "submit" }, "Filter"));
  const load = async (event) => {
    if (event) event.preventDefault();
    const q = new URLSearchParams();
    for (const k of ["function", "actor", "since", "limit"]) if (form.elements[k].value) q.set(k, form.elements[k].value);
    if (form.elements.invocations.checked) q.set("invocations", "true");
    const rows = await api(`/v1/audit?${q}`);
    out.replaceChildren(form.elements.invocations.checked
      ? table(["id", "time", "principal", "function", "revision", "outcome", "status", "ms"], rows.map((r) => [r.id, when(r.at), r.principal, r.function, r.revision, r.outcome, r.status, r.durationMs.toFixed(1)]))
      : table(["id", "time", "actor", "command", "action", "target", "outcome", "commit", "detail"], rows.map((r) => [r.id, when(r.at), r.actor, r.command, r.action, r.target, r.outcome, r.gitCommit ? h("code", {}, r.gitCommit.slice(0, 8)) : "-", r.detail])));
  };
  form.addEventListener("submit", (e) => load(e).catch((err) => out.replaceChildren(h("p", { class: "error", role: "alert" }, err.message))));
  view.append(h("h1", {}, "Audit log"), form, out);
  await load();
}

// Data: read through the data plane's own REST API (/v1/collections, /v1/changes) with the signed-in user's
// credential, so its rights, row rules and tenant apply exactly as to any other client of that API.
const col = (c) => `#/data/${encodeURIComponent(c)}`;

async function dataPage(view, [collection, id]) {
  if (collection && id) return documentPage(view, collection, id);
  if (collection) return collectionPage(view, collection);
  const spec = await api("/v1/openapi.json");
  const names = Object.keys(spec.components.schemas).filter((k) => k.endsWith(".document")).map((k) => k.slice(0, -9));
  view.append(h("h1", {}, "Data"),
    h("h2", {}, "Collections"),
    names.length ? h("ul", { id: "collections" }, names.map((n) => h("li", {}, link(col(n), n)))) : h("p", { class: "muted" }, "No collections."),
    h("p", { class: "muted" }, "Each collection shows the documents your key or token may read, in its tenant."),
    h("h2", {}, "Triggers and views"),
    h("ul", { id: "triggers-views" },
      h("li", {}, link("#/triggers", "Triggers"), ": data hooks, onCommit, manual and the others, with their health (auto-disabled after repeated faults)"),
      h("li", {}, link("#/views", "Views"), ": cached function results with their hit rates, and the onCommit events (pending, delivered, dead letters)")));
}

async function collectionPage(view, collection) {
  const base = `/v1/collections/${encodeURIComponent(collection)}/docs`;
  const out = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "filters", id: "data-filter" },
    h("label", { for: "filter" }, "Filter (JSON, docs/data.md)", h("input", { id: "filter", name: "filter", size: 40, placeholder: '{"status": "paid"}' })),
    h("button", { type: "submit" }, "Find"));
  let cursor = null;
  const load = async (more) => {
    const q = new URLSearchParams({ limit: "50" });
    if (form.elements.filter.value.trim()) q.set("filter", form.elements.filter.value.trim());
    if (more && cursor) q.set("cursor", cursor);
    const page = await api(`${base}?${q}`);
    cursor = page.cursor;
    const rows = page.documents.map((d) => [link(`${col(collection)}/${encodeURIComponent(d.id)}`, d.id), d.version, d.updatedAt, d.updatedBy, h("code", {}, JSON.stringify(d.data).slice(0, 160))]);
    const shown = table(["id", "version", "updated", "by", "data"], rows);
    if (more) out.querySelector("tbody").append(...shown.querySelector("tbody").children); else out.replaceChildren(rows.length ? shown : h("p", { class: "muted" }, "No documents you may read."));
    next.hidden = !cursor;
  };
  const next = h("button", { type: "button", id: "data-next", hidden: true, onclick: () => load(true).catch(show) }, "More");
  const show = (e) => out.replaceChildren(h("p", { class: "error", role: "alert", "data-status": e.status || "" }, e.message));
  form.addEventListener("submit", (e) => { e.preventDefault(); load(false).catch(show); });
  view.append(h("h1", {}, `Collection ${collection}`), h("p", {}, link("#/data", "All collections")), form, out, next);
  await load(false).catch(show);
}

// A document's versions as the change feed records them (each write: op, version, who, when, the data after),
// newest first. The feed holds only what the caller may read.
async function documentPage(view, collection, id) {
  const doc = await api(`/v1/collections/${encodeURIComponent(collection)}/docs/${encodeURIComponent(id)}`).catch((e) => (e.status === 404 ? null : Promise.reject(e)));
  const changes = [];
  for (let since = 0, pages = 0; pages < 50; pages++) {
    const feed = await api(`/v1/changes?collection=${encodeURIComponent(collection)}&since=${since}&limit=1000`);
    changes.push(...feed.changes.filter((c) => c.collection === collection && c.id === id));
    if (feed.changes.length < 1000) break;
    since = feed.next;
  }
  const versions = changes.reverse().map((c) => [c.seq, c.after ? c.after.version : "(deleted)", c.op, c.at, c.actor, c.function ? `${c.function} r${c.revision}` : "-", h("code", {}, c.after ? JSON.stringify(c.after.data) : "-")]);
  view.append(h("h1", {}, `${collection} / ${id}`), h("p", {}, link(col(collection), `Back to ${collection}`)),
    doc ? h("p", { id: "current" }, `Current version ${doc.version}, updated ${doc.updatedAt} by ${doc.updatedBy}`) : h("p", { id: "current", class: "muted" }, "No such document now (deleted, or not readable with your rights)."),
    h("h2", {}, "Versions (change feed)"),
    versions.length ? table(["change", "version", "op", "at", "by", "function", "data after"], versions) : h("p", { class: "muted" }, "No changes you may read."));
}

export const pages = { functions, function: functionPage, rollout: rolloutPage, abtest: abtestPage, audit: auditPage, data: dataPage, triggers: triggersPage, views: viewsPage };
