// The live pipeline page: polls /api/state (see crates/sluice/src/observe/live.rs)
// and draws it. Every value from the run is put in the page as text, never as
// markup: row messages and offsets come from input nobody here wrote.
"use strict";

const POLL_MS = 500;
const RATE_WINDOW_MS = 5000;
const SPARK_POINTS = 120;

const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat("en-US");
const history = new Map(); // component -> [{t, rows, latency}]
let graphDrawn = false;
let lastStatus = null;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs = {}) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function millis(ms) {
  if (ms === undefined || ms === null) return "";
  return ms < 10 ? `${ms.toFixed(2)} ms` : ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

// --- the graph: columns by depth, sources left, sinks right -------------------

const NODE_W = 150, NODE_H = 44, GAP_X = 60, GAP_Y = 14;

function drawGraph(graph) {
  const g = $("graph");
  g.replaceChildren();
  const columns = new Map();
  for (const n of graph.nodes) {
    if (!columns.has(n.depth)) columns.set(n.depth, []);
    columns.get(n.depth).push(n);
  }
  const pos = new Map();
  let height = 0;
  for (const [depth, nodes] of columns) {
    nodes.forEach((n, i) => pos.set(n.name, { x: 10 + depth * (NODE_W + GAP_X), y: 10 + i * (NODE_H + GAP_Y) }));
    height = Math.max(height, 10 + nodes.length * (NODE_H + GAP_Y));
  }
  const width = 20 + Math.max(...columns.keys(), 0) * (NODE_W + GAP_X) + NODE_W;
  g.setAttribute("viewBox", `0 0 ${width} ${height}`);
  g.setAttribute("height", height);
  g.style.maxWidth = `${width}px`;
  for (const [from, to] of graph.edges) {
    const a = pos.get(from), b = pos.get(to);
    if (!a || !b) continue;
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2, mid = (x1 + x2) / 2;
    g.append(svg("path", { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`, "data-edge": `${from}>${to}` }));
  }
  for (const n of graph.nodes) {
    const p = pos.get(n.name);
    const node = svg("g", { class: `node ${n.role}`, "data-node": n.name, transform: `translate(${p.x},${p.y})` });
    node.append(svg("rect", { width: NODE_W, height: NODE_H }));
    const name = svg("text", { x: 10, y: 18 });
    name.textContent = n.name;
    const sub = svg("text", { x: 10, y: 34, class: "sub", "data-node-rows": n.name });
    sub.textContent = `${n.kind} · 0 rows`;
    node.append(name, sub);
    const title = svg("title");
    title.textContent = `${n.role} ${n.name} (${n.kind})`;
    node.append(title);
    g.append(node);
  }
}

// --- sparklines ----------------------------------------------------------------

function spark(canvas, values, color) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 90, h = canvas.clientHeight || 22;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const c = canvas.getContext("2d");
  c.scale(dpr, dpr);
  c.clearRect(0, 0, w, h);
  const vs = values.filter((v) => Number.isFinite(v));
  if (vs.length < 2) return;
  const max = Math.max(...vs, 1e-9);
  c.strokeStyle = color;
  c.lineWidth = 1.3;
  c.beginPath();
  // the newest point at the right edge; a young run's few points fill
  // the chart until a minute of them is there
  const span = Math.max(Math.min(values.length, SPARK_POINTS), 20) - 1;
  values.forEach((v, i) => {
    const x = w - ((values.length - 1 - i) / span) * w;
    const y = h - 2 - ((Number.isFinite(v) ? v : 0) / max) * (h - 4);
    i ? c.lineTo(x, y) : c.moveTo(x, y);
  });
  c.stroke();
}

function rateOf(points, now) {
  if (points.length < 2) return 0;
  const last = points[points.length - 1];
  let first = points[0];
  for (const p of points) if (now - p.t <= RATE_WINDOW_MS) { first = p; break; }
  const dt = (last.t - first.t) / 1000;
  return dt > 0 ? (last.rows - first.rows) / dt : 0;
}

// --- the tables -----------------------------------------------------------------

function cell(field, value, text, cls = "n") {
  const td = el("td", { class: cls, "data-field": field, "data-value": value });
  td.textContent = text;
  return td;
}

function componentRow(c) {
  const tr = el("tr", { "data-component": c.name });
  tr.append(el("td", { class: `role-${c.role}` }, c.name), el("td", {}, c.kind));
  for (const f of ["rows_in", "rows_out", "rate"]) tr.append(cell(f, 0, "0"));
  tr.append(el("td", {}, el("canvas", { class: "spark", "data-spark": "rate" })));
  tr.append(cell("latency", "", ""));
  tr.append(el("td", {}, el("canvas", { class: "spark", "data-spark": "latency" })));
  for (const f of ["rows_skipped", "rows_dead_lettered"]) tr.append(cell(f, 0, "0"));
  tr.append(cell("errors", "", "", "wrap"), cell("lag", "", ""));
  return tr;
}

function setCell(tr, field, value, text) {
  const td = tr.querySelector(`[data-field="${field}"]`);
  td.dataset.value = value;
  td.textContent = text ?? fmt.format(value);
}

function drawComponents(state, now) {
  const body = $("components").tBodies[0];
  const rows = new Map([...body.rows].map((r) => [r.dataset.component, r]));
  const errors = new Map();
  for (const d of state.dead_letters) {
    if (!errors.has(d.component)) errors.set(d.component, new Set());
    errors.get(d.component).add(d.code);
  }
  for (const c of state.components) {
    let tr = rows.get(c.name);
    if (!tr) {
      tr = componentRow(c);
      body.append(tr);
    }
    const h = history.get(c.name) || [];
    h.push({ t: now, rows: c.rows_out, latency: state.latency_ms[c.name] });
    while (h.length > SPARK_POINTS) h.shift();
    history.set(c.name, h);
    const rate = state.status === "running" ? rateOf(h, now) : 0;
    h[h.length - 1].rate = rate;
    setCell(tr, "rows_in", c.rows_in);
    setCell(tr, "rows_out", c.rows_out);
    setCell(tr, "rate", Math.round(rate));
    setCell(tr, "latency", state.latency_ms[c.name] ?? "", millis(state.latency_ms[c.name]));
    setCell(tr, "rows_skipped", c.rows_skipped);
    setCell(tr, "rows_dead_lettered", c.rows_dead_lettered);
    const given = c.rows_skipped + c.rows_dead_lettered;
    tr.querySelector('[data-field="rows_skipped"]').classList.toggle("bad", c.rows_skipped > 0);
    tr.querySelector('[data-field="rows_dead_lettered"]').classList.toggle("bad", c.rows_dead_lettered > 0);
    const codes = errors.has(c.name) ? [...errors.get(c.name)].join(", ") : "";
    setCell(tr, "errors", given, given ? `${fmt.format(given)} ${codes}`.trim() : "");
    const lag = state.backlog_files[c.name];
    setCell(tr, "lag", lag ?? "", lag === undefined ? "" : `${fmt.format(lag)} files`);
    spark(tr.querySelector('[data-spark="rate"]'), h.map((p) => p.rate), "#3d8bfd");
    spark(tr.querySelector('[data-spark="latency"]'), h.map((p) => p.latency), "#d29922");
    const sub = document.querySelector(`[data-node-rows="${CSS.escape(c.name)}"]`);
    if (sub) sub.textContent = `${c.kind} · ${fmt.format(c.rows_out)} rows`;
  }
}

function drawCommits(state) {
  const body = $("commits").tBodies[0];
  body.replaceChildren(...state.commits.map((c) => {
    const epochs = c.first_epoch === c.epoch ? `${c.epoch}` : `${c.first_epoch}–${c.epoch}`;
    const rows = Object.entries(c.rows).map(([s, n]) => `${s}: ${fmt.format(n)}`).join(", ");
    const offsets = Object.entries(c.offsets).map(([s, o]) => `${s}: ${JSON.stringify(o)}`).join("; ");
    return el("tr", { "data-epoch": c.epoch },
      el("td", {}, epochs), el("td", {}, new Date(c.at_ms).toLocaleTimeString()),
      el("td", { class: "n" }, millis(c.took_ms)), el("td", {}, rows),
      el("td", { class: "wrap" }, offsets.length > 240 ? offsets.slice(0, 240) + "…" : offsets));
  }));
}

function drawDeadLetters(state) {
  const body = $("dead-letters").tBodies[0];
  body.replaceChildren(...state.dead_letters.map((d) =>
    el("tr", { title: d.raw },
      el("td", {}, d.epoch), el("td", {}, d.component),
      el("td", { class: "bad" }, d.skipped ? `${d.code} (skipped)` : d.code),
      el("td", { class: "wrap" }, d.location ?? ""), el("td", { class: "wrap" }, d.message))));
  $("no-dead-letters").hidden = state.dead_letters.length > 0;
}

function draw(state) {
  const now = Date.now();
  document.title = `sluice · ${state.pipeline} · ${state.status}`;
  $("pipeline").textContent = state.pipeline;
  $("run-id").textContent = state.run_id;
  $("status").textContent = state.status;
  $("status").className = `status ${state.status}`;
  $("elapsed").textContent = duration(now - state.started_ms);
  $("epoch-failures").textContent = fmt.format(state.epoch_failures);
  $("error").hidden = !state.error;
  $("error").textContent = state.error ?? "";
  if (!graphDrawn) {
    drawGraph(state.graph);
    graphDrawn = true;
  }
  drawComponents(state, now);
  drawCommits(state);
  drawDeadLetters(state);
  document.body.dataset.status = state.status;
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}

async function poll() {
  try {
    const r = await fetch("api/state", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const state = await r.json();
    lastStatus = state.status;
    draw(state);
  } catch (e) {
    // the process ended (or lingers no more): keep the last numbers
    if (lastStatus !== null) {
      $("status").textContent = lastStatus === "running" ? "gone" : `${lastStatus} (ended)`;
      $("status").className = `status ${lastStatus === "running" ? "gone" : lastStatus}`;
    }
  }
  setTimeout(poll, POLL_MS);
}

poll();
