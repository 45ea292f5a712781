// The cache admin dashboard. Every value from the server (function names, keys, tags) is put
// into the page as text (textContent), never as HTML: keys carry user input.
"use strict";

const HEADERS = { "X-Requested-With": "cache-admin" };

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ headers: HEADERS, credentials: "same-origin" }, options));
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  return { ok: response.ok, status: response.status, body };
}

function fmt(n) {
  return typeof n === "number" ? n.toLocaleString("en-US", { maximumFractionDigits: 2 }) : String(n);
}

function renderStats(stats) {
  const totals = document.getElementById("totals");
  totals.replaceChildren();
  for (const [name, value] of Object.entries(stats.totals)) {
    const row = el("div");
    row.append(el("dt", name.replaceAll("_", " ")), el("dd", fmt(value)));
    totals.append(row);
  }
  const body = document.querySelector("#functions tbody");
  body.replaceChildren();
  for (const f of stats.functions) {
    const reads = f.hits + f.misses;
    const ratio = reads === 0 ? "–" : (100 * f.hits / reads).toFixed(1) + " %";
    const row = el("tr");
    row.dataset.function = f.name;
    for (const cell of [f.name, fmt(f.hits), fmt(f.misses), ratio, fmt(f.stale), fmt(f.collapsed),
                        fmt(f.failed), fmt(f.body_runs), fmt(f.body_p50_ms), fmt(f.body_p99_ms), fmt(f.bytes_stored)]) {
      row.append(el("td", cell));
    }
    body.append(row);
  }
}

function renderChart(history) {
  const points = history.points;
  const seconds = history.interval_ms / 1000;
  const slots = history.capacity;
  const rates = points.map(p => ({ hits: p.hits / seconds, misses: p.misses / seconds }));
  const max = Math.max(1, ...rates.map(r => Math.max(r.hits, r.misses)));
  document.getElementById("chart-max").textContent = fmt(max) + "/s";
  // Each interval is a step: a flat segment over its slot, so one sample already shows.
  const step = 590 / slots;
  const line = key => rates.map((r, i) => {
    const x = 40 + step * (slots - rates.length + i);
    const y = (150 - (140 * r[key]) / max).toFixed(1);
    return x.toFixed(1) + "," + y + " " + (x + step).toFixed(1) + "," + y;
  }).join(" ");
  document.getElementById("hits-line").setAttribute("points", line("hits"));
  document.getElementById("misses-line").setAttribute("points", line("misses"));
}

async function refresh() {
  const [stats, history] = await Promise.all([api("stats"), api("history")]);
  const status = document.getElementById("updated");
  if (!stats.ok || !history.ok) {
    status.textContent = "could not load the statistics (" + stats.status + ")";
    status.className = "error";
    return;
  }
  renderStats(stats.body);
  renderChart(history.body);
  status.textContent = "updated " + new Date().toLocaleTimeString();
  status.className = "";
}

function field(form, name) {
  return form.elements.namedItem(name).value.trim();
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  return q.toString();
}

document.getElementById("lookup").addEventListener("submit", async event => {
  event.preventDefault();
  const form = event.target;
  const namespace = field(form, "namespace");
  const key = field(form, "key");
  const out = document.getElementById("entry");
  const found = await api("entry?" + query({ key, namespace }));
  out.replaceChildren();
  if (!found.ok) {
    out.append(el("p", (found.body && found.body.error) || ("error " + found.status), "error"));
    return;
  }
  const e = found.body;
  const list = el("dl");
  const add = (name, value) => list.append(el("dt", name), el("dd", value));
  add("key", e.key);
  add("namespace", e.namespace);
  add("tier", e.tier + (e.in_l1 ? " (and the L1)" : ""));
  add("stored at", new Date(e.stored_at_ms).toISOString());
  add("fresh for", fmt(e.fresh_for_ms / 1000) + " s");
  add("stale for", fmt(e.stale_for_ms / 1000) + " s");
  add("size", fmt(e.bytes) + " bytes" + (e.format ? ", " + e.format : ""));
  add("negative", e.negative ? "yes (a cached “not found”)" : "no");
  add("etag", e.etag || "–");
  add("tags", e.tags.length === 0 ? "–" : e.tags.map(t => t.tag + " (v" + t.version + ")").join(", "));
  out.append(list);
  const purge = el("button", "Purge this key");
  purge.type = "button";
  purge.addEventListener("click", () => doPurge("key", { key: e.key, namespace: e.namespace }, "key " + e.key));
  out.append(purge);
});

let nextCursor = null;
let listedNamespace = "";

async function listKeys(cursor) {
  const page = await api("keys?" + query({ namespace: listedNamespace, cursor, count: "100" }));
  const list = document.getElementById("keys");
  if (!cursor) list.replaceChildren();
  if (!page.ok) {
    list.append(el("li", (page.body && page.body.error) || ("error " + page.status), "error"));
    return;
  }
  for (const key of page.body.keys) list.append(el("li", key));
  if (!cursor && page.body.keys.length === 0) list.append(el("li", "no keys"));
  nextCursor = page.body.next;
  document.getElementById("more").hidden = !nextCursor;
}

document.getElementById("list").addEventListener("submit", event => {
  event.preventDefault();
  listedNamespace = field(event.target, "namespace");
  listKeys("");
});
document.getElementById("more").addEventListener("click", () => listKeys(nextCursor));

async function doPurge(kind, params, what) {
  if (!window.confirm("Purge " + what + " on every replica (and the CDN)?")) return;
  const result = await api("purge/" + kind + "?" + query(params), { method: "POST" });
  const out = document.getElementById("purge-result");
  if (result.ok) {
    out.textContent = "purged " + what;
    out.className = "";
  } else {
    out.textContent = "purge of " + what + " failed: " + ((result.body && result.body.error) || result.status);
    out.className = "error";
  }
  refresh();
}

document.getElementById("purge-tag").addEventListener("submit", event => {
  event.preventDefault();
  const tag = field(event.target, "tag");
  doPurge("tag", { tag }, "tag " + tag);
});
document.getElementById("purge-namespace").addEventListener("submit", event => {
  event.preventDefault();
  const namespace = field(event.target, "namespace");
  doPurge("namespace", { namespace }, "namespace " + namespace);
});

refresh();
setInterval(refresh, 2000);
