// Charts as inline SVG (drawn with attributes, not styles: the page's CSP allows no inline style).
import { h, s } from "./dom.js";

// The series colours (style.css .s0-.s3), named for the text legend: colour is never the only cue.
export const COLOURS = ["blue", "pink", "green", "ochre"];

// A sparkline of requests (and errors, red) per second over `span` seconds: points are [offset, requests, errors].
export function sparkline(points, span, label, cls = "s0") {
  const w = 120, hgt = 24, max = Math.max(1, ...points.map((p) => p[1]));
  const line = (i) => points.map((p) => `${((p[0] / span) * w).toFixed(1)},${(hgt - (p[i] / max) * (hgt - 2) - 1).toFixed(1)}`).join(" ");
  return s("svg", { class: "spark", width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, role: "img", "aria-label": label },
    s("title", {}, label),
    points.length ? s("polyline", { class: cls, points: line(1) }) : null,
    points.some((p) => p[2]) ? s("polyline", { class: "err", points: line(2) }) : null);
}

const clock = (t) => new Date(t * 1000).toISOString().slice(11, 19);

// Weights over time, a step chart: `series` is {revision: [[t, weight], ...]}, `marks` the analysis results
// [{at, outcome, text}] drawn as ticks on the time axis. Returns the chart and its legend (revision → colour,
// in words, with the weight at the start and now), which also makes the chart's text alternative.
export function weightChart(series, t0, t1, marks, roles) {
  const w = 640, hgt = 190, left = 44, right = 10, top = 10, bottom = 36;
  const span = Math.max(1, t1 - t0);
  const x = (t) => (left + ((t - t0) / span) * (w - left - right)).toFixed(1);
  const y = (v) => (top + (1 - v / 100) * (hgt - top - bottom)).toFixed(1);
  const revisions = Object.keys(series).sort((a, b) => Number(a) - Number(b));
  const summary = revisions.map((rev, i) => {
    const pts = series[rev];
    return { rev, colour: COLOURS[i % COLOURS.length], cls: `s${i % 4}`, from: pts[0][1], now: pts[pts.length - 1][1] };
  });
  const lines = summary.map(({ rev, cls }) => {
    const pts = series[rev], coords = [];
    pts.forEach(([t, v], j) => { if (j) coords.push(`${x(t)},${y(pts[j - 1][1])}`); coords.push(`${x(t)},${y(v)}`); });
    coords.push(`${x(t1)},${y(pts[pts.length - 1][1])}`);
    return s("polyline", { class: cls, points: coords.join(" "), "data-revision": rev });
  });
  const grid = [0, 25, 50, 75, 100].flatMap((v) => [
    s("line", { x1: left, x2: w - right, y1: y(v), y2: y(v), class: "grid" }),
    s("text", { x: left - 4, y: Number(y(v)) + 4, "text-anchor": "end", class: "axis" }, `${v}%`),
  ]);
  const ticks = marks.map((m) => s("line", { x1: x(m.at), x2: x(m.at), y1: y(100), y2: y(0), class: `mark ${m.outcome}` }, s("title", {}, m.text)));
  const words = summary.map((r) => `revision ${r.rev} (${r.colour}${roles[r.rev] ? `, ${roles[r.rev]}` : ""}) from ${r.from}% to ${r.now}%`).join("; ");
  const label = `Traffic weight per revision over time, 0 to 100%, ${clock(t0)} to ${clock(t1)} UTC: ${words}` +
    (marks.length ? `; ${marks.length} analysis result${marks.length > 1 ? "s" : ""} marked` : "");
  const chart = s("svg", { class: "chart", id: "weights-chart", viewBox: `0 0 ${w} ${hgt}`, role: "img", "aria-label": label },
    s("title", {}, label), grid, ticks, lines,
    s("text", { x: left, y: hgt - 18, "text-anchor": "start", class: "axis" }, clock(t0)),
    s("text", { x: w - right, y: hgt - 18, "text-anchor": "end", class: "axis" }, clock(t1)),
    s("text", { x: (left + w - right) / 2, y: hgt - 4, "text-anchor": "middle", class: "axis" }, "time (UTC)"),
    s("text", { x: 10, y: (top + hgt - bottom) / 2, "text-anchor": "middle", class: "axis", transform: `rotate(-90 10 ${(top + hgt - bottom) / 2})` }, "weight"));
  const legend = h("ul", { class: "legend", id: "weights-legend", "aria-label": "Legend" },
    summary.map((r) => h("li", { "data-revision": r.rev },
      s("svg", { width: 18, height: 10, "aria-hidden": "true" }, s("line", { x1: 0, x2: 18, y1: 5, y2: 5, class: r.cls })),
      ` revision ${r.rev}${roles[r.rev] ? ` (${roles[r.rev]})` : ""}: ${r.colour} line, ${r.from}% → ${r.now}%`)),
    marks.length ? h("li", {}, "ticks: analysis results (green pass, red fail, amber inconclusive)") : null);
  return [chart, legend];
}
