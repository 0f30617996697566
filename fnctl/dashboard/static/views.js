// The pages. Each renders into `view` and may return a function that stops what it started (a stream).
import { api, confirmAction, session, stream } from "./app.js";
import { sparkline, weightChart } from "./charts.js";
import { h, pct, table, when } from "./dom.js";

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
    data.triggers.length ? table(["trigger", "kind", "detail"], data.triggers.map((t) => [t.name, t.http ? "http" : t.cron ? "cron" : "other", JSON.stringify(t.http || t.cron || t)])) : h("p", { class: "muted" }, "No triggers."),
    h("h2", {}, "Compare two revisions' specs"),
    h("form", { class: "filters", onsubmit: diff },
      h("label", { for: "diff-from" }, "From", from), h("label", { for: "diff-to" }, "To", to), h("button", { type: "submit" }, "Compare")),
    diffOut);
}

function weightSeries(events, status) {
  const series = {};
  for (const e of events) {
    const weights = e.data && e.data.weights;
    if (!weights) continue;
    for (const [rev, w] of Object.entries(weights)) (series[rev] ||= []).push([e.at, w]);
  }
  if (!Object.keys(series).length) for (const [rev, w] of Object.entries(status.weights)) series[rev] = [[status.startedAt, w]];
  return series;
}

function analysisRows(events, stages) {
  return events.filter((e) => e.event === "measurement").map((e) => {
    const t = (stages[e.step - 1] || {}).thresholds || {};
    const d = e.data || {};
    const vs = (value, limit, fmt) => (limit === null || limit === undefined ? fmt(value) : `${fmt(value)} (max ${fmt(limit)})`);
    return [when(e.at), `step ${e.step}`, h("span", { class: d.outcome === "pass" ? "ok" : d.outcome === "fail" ? "bad" : "warn" }, d.outcome),
      `${d.requests ?? "-"}${t.minRequests ? ` (min ${t.minRequests})` : ""}`, vs(d.errorRate, t.maxErrorRate, pct),
      vs(d.p95Ms, t.maxP95LatencyMs, (x) => (x === null || x === undefined ? "-" : `${Number(x).toFixed(1)} ms`)), e.message];
  });
}

async function rolloutPage(view, [name]) {
  const path = `/v1/functions/${encodeURIComponent(name)}`;
  const body = h("div", { id: "rollout" });
  const note = h("p", { id: "action-result", role: "status" });
  view.append(h("h1", {}, `Rollout of ${name}`), body, note);
  const granted = new Set(session.granted);
  const render = (v) => {
    renderView(v);
    performance.mark("fnctl:rollout-rendered"); // read by benchmarks/bench_ui.py
  };
  const renderView = (v) => {
    const st = v.status;
    const button = (action, words, enabled) => granted.has(action) ? h("button", {
      type: "button", id: `do-${action}`, class: action === "promote" || action === "retry" ? "" : "danger", disabled: !enabled,
      onclick: async () => {
        if (!(await confirmAction(`${words} ${name}?`, `${words}: ${session.consequences[action]}.`))) return;
        note.textContent = `${words}…`;
        try { await api(`${path}/${action}`, { method: "POST", body: "{}" }); note.textContent = `${words}: done.`; }
        catch (e) { note.textContent = `${words} failed: ${e.message}`; note.className = "error"; }
      },
    }, words) : null;
    const active = ["progressing", "paused"].includes(st.state);
    body.replaceChildren(
      h("p", {}, `${st.strategy} of revision ${st.canary} over revision ${st.stable}: `,
        h("span", { class: `state ${st.state === "completed" ? "ok" : st.state === "aborted" ? "bad" : "warn"}`, id: "rollout-state" }, st.state),
        st.reason ? h("span", { class: "bad", id: "rollout-reason" }, ` (${st.reason})`) : null),
      h("div", { class: "actions" },
        button("promote", "Promote", active), button("abort", "Abort", active),
        button("retry", "Retry", st.state === "aborted"), button("rollback", "Roll back", !active || st.state === "paused")),
      h("h2", {}, "Steps"),
      h("ol", { class: "steps", id: "steps" }, v.stages.map((stage, i) => h("li", {
        class: i + 1 < st.step || st.state === "completed" ? "done" : "", "aria-current": i + 1 === st.step && active ? "step" : false,
      }, `${i + 1}. ${stage.label}`))),
      h("h2", {}, "Traffic"),
      h("p", { id: "weights" }, Object.entries(st.weights).map(([r, w]) => `revision ${r}: ${w}%`).join(" · ")),
      weightChart(weightSeries(v.events, st), st.startedAt, Math.max(st.updatedAt, ...v.events.map((e) => e.at)), "weights per revision over the rollout"),
      h("h2", {}, "Analysis"),
      analysisRows(v.events, v.stages).length ? table(["time", "step", "outcome", "requests", "error rate", "p95", "detail"], analysisRows(v.events, v.stages)) : h("p", { class: "muted" }, "No measurement yet."),
      h("h2", {}, "Events"),
      table(["time", "step", "event", "message"], [...v.events].reverse().map((e) => [when(e.at), e.step, e.event, e.message])));
  };
  return stream(`${path}/rollout/stream`, render, (e) => body.replaceChildren(h("p", { class: "error", role: "alert", "data-status": e.status || "" }, e.status === 403 ? `Forbidden: ${e.message}` : e.message)));
}

async function abtestPage(view, [name]) {
  const r = await api(`/v1/functions/${encodeURIComponent(name)}/abtest`);
  const ms = (x) => (x === null || x === undefined ? "-" : x.toFixed(1));
  view.append(h("h1", {}, `A/B test of ${name}`),
    h("p", {}, `at ${pct(r.confidence)} confidence, at least ${r.minSamples} requests per variant`),
    table(["variant", "revision", "requests", "errors", "error rate", "p50 ms", "p95 ms", "p99 ms"],
      r.variants.map((v) => [v.name, v.revision, v.requests, v.errors, pct(v.errorRate), ms(v.p50Ms), ms(v.p95Ms), ms(v.p99Ms)])),
    h("h2", {}, "Verdict"),
    h("ul", { id: "verdicts" }, r.comparisons.map((c) => h("li", {}, `${c.variant} vs ${c.control}: ${c.verdict}`))));
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

// Collections, triggers with their auto-disable state and views with hit rates come here once their endpoints exist.
async function dataPage(view) {
  view.append(h("h1", {}, "Data"), h("p", { class: "muted" }, "Collections, triggers and views are not in the dashboard yet: use `fnctl data` (docs/data.md)."));
}

export const pages = { functions, function: functionPage, rollout: rolloutPage, abtest: abtestPage, audit: auditPage, data: dataPage };
