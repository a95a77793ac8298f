// The status page: redraws from /status.json and /history.json every 2 s, never reloading.
// Values from the store (reasons, ids, errors) are set as text, never parsed as HTML.
"use strict";

const REFRESH_MS = 2000;
const charts = {};
let lastOk = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function setText(id, text) {
  document.getElementById(id).textContent = text === null || text === undefined ? "–" : String(text);
}

function ago(iso) {
  if (!iso) return "never";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  if (!isFinite(seconds)) return iso;
  return duration(Math.max(0, seconds)) + " ago";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return "<1 s";
  if (seconds < 90) return Math.round(seconds) + " s";
  if (seconds < 5400) return Math.round(seconds / 60) + " min";
  if (seconds < 172800) return Math.round(seconds / 3600) + " h";
  return Math.round(seconds / 86400) + " d";
}

function fillRows(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}

function rowHeader(text) {
  const th = el("th", text);
  th.scope = "row";
  return th;
}

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const [key, value] of Object.entries(attrs || {})) tr.dataset[key] = value;
  for (const cell of cells) tr.appendChild(cell);
  return tr;
}

function modeClass(mode) {
  return mode === "push" || mode === "poll" ? "badge ok" : mode === "fallback" ? "badge warn" : "badge";
}

async function fetchReady() {
  // 503 is an answer here (not ready, and why), not a failure to refresh.
  const response = await fetch("/readyz", {cache: "no-store"});
  return response.json();
}

function renderReady(r) {
  const node = document.getElementById("ready");
  node.textContent = (r.ready ? "ready: " : "not ready: ") + r.reason;
  node.className = r.ready ? "" : "bad";
}

function renderStatus(s, ready) {
  setText("store", s.store);
  const d = s.daemon;
  setText("daemon", d.running ? "running, pid " + d.pid : "not running (last heartbeat " + ago(d.heartbeat_at) + ")");
  const mode = document.getElementById("mode-current");
  mode.textContent = s.mode.current || "unknown";
  mode.className = modeClass(s.mode.current);
  setText("mode-configured", "(configured: " + s.configured_mode + ")");
  setText("mode-reason", s.mode.reason);
  setText("mode-since", s.mode.since ? ago(s.mode.since) + " (" + s.mode.since + ")" : null);
  setText("fallback-switches", s.fallback_switches);
  setText("last-webhook", ago(s.last_webhook_at));
  setText("inbox-depth", s.inbox_depth);
  setText("events-applied", s.events.applied || 0);

  const errors = [];
  fillRows("resources", Object.entries(s.resources).map(([name, r]) => {
    const outcome = r.last_error
      ? el("td", "error: " + r.last_error, "reason bad")
      : el("td", r.last_success_at ? "ok, " + r.last_changes + " written" : "not polled yet");
    if (r.last_error) errors.push([r.last_error_at, name + ": " + r.last_error]);
    for (const note of [r.cursor_problem, r.relist_held_back]) if (note) errors.push([null, name + ": " + note]);
    return row([
      rowHeader(name), el("td", duration(r.lag_seconds), "lag"), el("td", ago(r.last_poll_at), "last-poll"),
      outcome, el("td", r.live, "num live"), el("td", r.tombstoned, "num tombstoned"),
    ], {resource: name});
  }));

  const dead = s.dead_letters;
  setText("dead-counts", "(" + dead.open + " open of " + dead.total + ")");
  fillRows("dead-letters", dead.latest.length ? dead.latest.map((x) => row([
    el("td", x.id), el("td", x.source), el("td", x.resource), el("td", x.record_id), el("td", x.reason, "reason"),
  ])) : [row([Object.assign(el("td", "none open"), {colSpan: 5})])]);

  const sinks = Object.entries(s.sinks);
  setText("changes-head", s.changes.enabled
    ? "(log head seq " + s.changes.head_seq + ", " + s.changes.entries + " entries)" : "(change log off)");
  fillRows("sinks", sinks.length ? sinks.map(([name, k]) => {
    if (k.last_error) errors.push([k.last_error_at, "sink " + name + ": " + k.last_error]);
    const state = k.state || "not started";
    return row([
      rowHeader(name), el("td", state + (k.state_stale ? " (daemon not running)" : ""), k.state === "ok" ? "ok" : k.state ? "warn" : ""),
      el("td", k.lag, "num"), el("td", k.delivered_seq, "num"), el("td", k.dead_letters, "num"),
      el("td", k.last_error || "–", "reason"),
    ], {sink: name});
  }) : [row([Object.assign(el("td", "no sinks configured"), {colSpan: 6})])]);

  if (!ready.ready) errors.push([new Date().toISOString(), "not ready: " + ready.reason]);
  errors.sort((a, b) => String(b[0]).localeCompare(String(a[0])));
  const list = document.getElementById("errors");
  list.replaceChildren(...(errors.length ? errors.map(([at, text]) => el("li", (at ? ago(at) + ": " : "") + text))
    : [el("li", "none")]));
}

function chart(id, lines, width) {
  const target = document.getElementById(id);
  const opts = {
    width: Math.max(260, target.clientWidth || width), height: 180,
    scales: {x: {time: true}},
    series: [{}, ...lines.map(([label, stroke]) => ({label: label, stroke: stroke, width: 2, spanGaps: false}))],
    axes: [{stroke: "#4d5560"}, {stroke: "#4d5560"}],
    legend: {show: true},
  };
  return new uPlot(opts, [[], ...lines.map(() => [])], target);
}

function renderHistory(h) {
  if (typeof uPlot === "undefined") return;
  if (!charts.rate) {
    charts.rate = chart("rate-chart", [["deliveries/s", "#0550ae"]], 480);
    charts.latency = chart("latency-chart", [["mean ms", "#0550ae"], ["max ms", "#8a1c13"]], 480);
  }
  charts.rate.setData([h.t, h.deliveries_per_second]);
  charts.latency.setData([h.t, h.latency_mean_ms, h.latency_max_ms]);
  const rates = h.deliveries_per_second;
  const peak = Math.max(0, ...rates);
  const latest = rates.length ? rates[rates.length - 1] : 0;
  setText("rate-summary", "now " + latest.toFixed(1) + "/s, peak " + peak.toFixed(1) + "/s");
  const lat = h.latency_max_ms.filter((v) => v !== null);
  setText("latency-summary", lat.length ? "worst " + Math.max(...lat).toFixed(1) + " ms" : "no webhook changes applied");
}

function resize() {
  for (const [key, id] of [["rate", "rate-chart"], ["latency", "latency-chart"]]) {
    const c = charts[key];
    const w = document.getElementById(id).clientWidth;
    if (c && w) c.setSize({width: w, height: 180});
  }
}

async function fetchJson(path) {
  const response = await fetch(path, {cache: "no-store"});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.status + " " + response.statusText);
  return body;
}

async function refresh() {
  try {
    const [status, history, ready] = await Promise.all(
      [fetchJson("/status.json"), fetchJson("/history.json"), fetchReady()]);
    renderReady(ready);
    renderStatus(status, ready);
    renderHistory(history);
    lastOk = Date.now();
    const updated = document.getElementById("updated");
    updated.textContent = "Updated " + new Date(lastOk).toLocaleTimeString() + ", every 2 s.";
    updated.className = "";
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (error) {
    const updated = document.getElementById("updated");
    updated.textContent = "Cannot refresh: " + error.message + (lastOk ? " (showing " + ago(new Date(lastOk).toISOString()) + ")" : "");
    updated.className = "bad";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

window.addEventListener("resize", resize);
refresh();
