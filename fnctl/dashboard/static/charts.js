// Charts as inline SVG (drawn with attributes, not styles: the page's CSP allows no inline style).
import { s } from "./dom.js";

// A sparkline of requests (and errors, red) per second over `span` seconds: points are [offset, requests, errors].
export function sparkline(points, span, label, cls = "s0") {
  const w = 120, hgt = 24, max = Math.max(1, ...points.map((p) => p[1]));
  const line = (i) => points.map((p) => `${((p[0] / span) * w).toFixed(1)},${(hgt - (p[i] / max) * (hgt - 2) - 1).toFixed(1)}`).join(" ");
  return s("svg", { class: "spark", width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, role: "img", "aria-label": label },
    s("title", {}, label),
    points.length ? s("polyline", { class: cls, points: line(1) }) : null,
    points.some((p) => p[2]) ? s("polyline", { class: "err", points: line(2) }) : null);
}

// Weights over time: series is {revision: [[t, weight], ...]} (a step chart, 0..100%).
export function weightChart(series, t0, t1, label) {
  const w = 600, hgt = 160, span = Math.max(1, t1 - t0);
  const x = (t) => (((t - t0) / span) * (w - 20) + 10).toFixed(1);
  const y = (v) => (hgt - 10 - (v / 100) * (hgt - 20)).toFixed(1);
  const lines = Object.entries(series).map(([rev, pts], i) => {
    const coords = [];
    pts.forEach(([t, v], j) => { if (j) coords.push(`${x(t)},${y(pts[j - 1][1])}`); coords.push(`${x(t)},${y(v)}`); });
    coords.push(`${x(t1)},${y(pts[pts.length - 1][1])}`);
    return s("polyline", { class: `s${i % 4}`, points: coords.join(" "), "data-revision": rev });
  });
  return s("svg", { class: "chart", viewBox: `0 0 ${w} ${hgt}`, role: "img", "aria-label": label, preserveAspectRatio: "none" },
    s("title", {}, label),
    s("line", { x1: 10, x2: w - 10, y1: y(100), y2: y(100), stroke: "#d0d7de" }),
    s("line", { x1: 10, x2: w - 10, y1: y(0), y2: y(0), stroke: "#d0d7de" }),
    lines);
}
