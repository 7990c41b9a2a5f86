"use strict";
// The dashboard: the daemon's own data (/metrics, /api/telemetry, /api/plan, /api/summaries),
// polled every 2 s and drawn as SVG line charts of the last 5 minutes. Nothing leaves the device.
// Energy and heat (issue 24): joules by priority, tokens per joule and the thermal admission state
// from /metrics; each temperature from /api/telemetry with its throttle limit from /api/plan.
const $ = (id) => document.getElementById(id);
const POINTS = 150;
const COLORS = ["#5cb3ff", "#ffb454", "#7ee787", "#ff7b72", "#d2a8ff", "#f2cc60"];
const series = {};  // chart id -> {name -> [values]}
let prev = null;  // the last /metrics reading, for rates
let plan = null;  // the last /api/plan: the planned batch and the thermal rule's limits
const PRIORITIES = ["interactive", "background"];
const J = (m, p) => m[`edge_llm_energy_joules_total{priority="${p}"}`];
const SVG = "http://www.w3.org/2000/svg";

// Prometheus text format -> {name: total over every label set, 'name{labels}': that series}
function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m) continue;
    out[m[1]] = (out[m[1]] || 0) + Number(m[3]);
    if (m[2]) out[m[1] + m[2]] = Number(m[3]);
  }
  return out;
}

function push(chart, name, value) {
  const s = (series[chart] = series[chart] || {});
  const v = (s[name] = s[name] || []);
  v.push(value);
  if (v.length > POINTS) v.shift();
}

function draw(chart, unit) {
  const el = $(`c-${chart}`), s = series[chart] || {};
  const W = 300, H = 110, all = Object.values(s).flat().filter((x) => x !== null && Number.isFinite(x));
  const hi = Math.max(1e-9, ...all) * 1.1;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 16}`);
  svg.setAttribute("role", "img");
  const latest = Object.entries(s).map(([n, v]) => `${n} ${fmt(v[v.length - 1])}${unit}`).join(", ");
  svg.setAttribute("aria-label", latest || "no data yet");
  for (const [y, label] of [[11, fmt(hi)], [H - 2, "0"]]) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", 2); t.setAttribute("y", y); t.setAttribute("class", "axis");
    t.textContent = label;
    svg.appendChild(t);
  }
  Object.entries(s).forEach(([name, values], k) => {
    const pts = values.map((v, i) => (v === null || !Number.isFinite(v) ? null
      : `${(W * (i + POINTS - values.length)) / (POINTS - 1)},${H - (H * v) / hi}`)).filter(Boolean);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[k % COLORS.length]);
    line.setAttribute("stroke-width", "2");
    svg.appendChild(line);
    if (pts.length) {  // the newest reading, visible even when it is the only one
      const [x, y] = pts[pts.length - 1].split(",");
      const dot = document.createElementNS(SVG, "circle");
      dot.setAttribute("cx", x); dot.setAttribute("cy", y); dot.setAttribute("r", "3");
      dot.setAttribute("fill", COLORS[k % COLORS.length]);
      svg.appendChild(dot);
    }
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", 4 + 100 * k); t.setAttribute("y", H + 14); t.setAttribute("class", "legend");
    t.setAttribute("fill", COLORS[k % COLORS.length]);
    t.textContent = name;
    svg.appendChild(t);
  });
  el.replaceChildren(svg);
}

const fmt = (x) => (x === null || x === undefined || !Number.isFinite(x) ? "–"
  : Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(2));
const mib = (b) => b / 1048576;

async function json(url) {
  const r = await fetch(url);
  return r.ok ? r.json() : null;
}

async function pollMetrics() {
  const r = await fetch("/metrics");
  if (!r.ok) return;
  const m = parseMetrics(await r.text()), t = performance.now() / 1000;
  if (prev) {
    const dt = t - prev.t, d = (k) => (m[k] || 0) - (prev.m[k] || 0);
    const tps = d("edge_llm_generated_tokens_total") / dt;
    const n = d("edge_llm_time_to_first_token_seconds_count");
    const ttft = n > 0 ? d("edge_llm_time_to_first_token_seconds_sum") / n : null;
    push("tps", "generated", tps);
    push("ttft", "mean TTFT", ttft);
    $("v-tps").textContent = `${fmt(tps)} tokens/s`;
    if (ttft !== null) $("v-ttft").textContent = `${fmt(ttft)} s`;
    draw("tps", " tokens/s");
    draw("ttft", " s");
    energyRates(m, dt);
  }
  prev = { m, t };
  energyTable(m);
  thermalState(m);
  const budget = m.edge_llm_kv_tokens_budget || 0;
  push("kv", "reserved", m.edge_llm_kv_tokens_reserved || 0);
  push("kv", "prefix cache", m.edge_llm_kv_tokens_cached || 0);
  $("v-kv").textContent = `${Math.round(m.edge_llm_kv_tokens_reserved || 0)} of ${budget} tokens`;
  draw("kv", " tokens");
  push("queue", "running", m.edge_llm_requests_running || 0);
  push("queue", "waiting", m.edge_llm_requests_waiting || 0);
  $("v-queue").textContent = `${m.edge_llm_requests_running || 0} running, ${m.edge_llm_requests_waiting || 0} waiting`;
  draw("queue", "");
}

async function pollTelemetry() {
  const s = await json("/api/telemetry");
  if (!s) return;
  const used = mib(s.ram_total_bytes - s.ram_available_bytes);
  push("mem", "RAM used MiB", used);
  push("mem", "swap MiB", mib(s.swap_used_bytes || 0));
  if (s.gpu_mem_total_bytes) push("mem", "GPU MiB", mib(s.gpu_mem_used_bytes));
  $("v-mem").textContent = `${fmt(used)} of ${fmt(mib(s.ram_total_bytes))} MiB RAM`;
  draw("mem", " MiB");
  const temps = Object.entries(s.temperatures_c || {});
  for (const [name, c] of temps.slice(0, 4)) push("heat", `${name} °C`, c);
  if (s.power_total_mw !== null && s.power_total_mw !== undefined) push("heat", "power W", s.power_total_mw / 1000);
  const hottest = temps.length ? Math.max(...temps.map(([, c]) => c)) : null;
  const power = s.power_total_mw != null ? `${fmt(s.power_total_mw / 1000)} W` : null;
  $("v-heat").textContent = hottest === null && power === null ? "no sensor here"
    : [hottest !== null ? `${fmt(hottest)} °C` : "no temperature sensor", power || "no power reading"].join(", ");
  draw("heat", "");
  temperatureTable(temps, s.power_total_mw);
}

function energySource(m) {
  const key = Object.keys(m).find((k) => k.startsWith("edge_llm_energy_source_info{") && m[k] === 1);
  return key ? key.match(/source="([^"]*)"/)[1] : "unavailable";
}

// Power of the engine's steps by priority: the change of each priority's joules over the poll.
function energyRates(m, dt) {
  if (energySource(m) === "unavailable") return;
  for (const p of PRIORITIES) push("energy", `${p} W`, ((J(m, p) || 0) - (J(prev.m, p) || 0)) / dt);
  draw("energy", " W");
}

function energyTable(m) {
  const source = energySource(m), tpj = m.edge_llm_tokens_per_joule;
  if (source === "unavailable") {
    $("v-energy").textContent = "unavailable";
    draw("energy", " W");  // an empty chart: the card keeps its shape
    $("energy").replaceChildren(row(["Source", "unavailable: no NVML energy counter, readable RAPL or jtop power here"]));
    return;
  }
  const tokens = (p) => m[`edge_llm_energy_tokens_total{priority="${p}"}`] || 0;
  $("v-energy").textContent = tpj > 0 ? `${fmt(tpj)} tokens/J` : "idle";
  $("energy").replaceChildren(row(["Source", source]),
    ...PRIORITIES.map((p) => row([`${p[0].toUpperCase()}${p.slice(1)} requests`,
      `${fmt(J(m, p) || 0)} J, ${Math.round(tokens(p))} tokens`])),
    row(["Steps with no request (KV copies)", `${fmt(m.edge_llm_energy_unattributed_joules_total || 0)} J`]),
    row(["Tokens per joule, last minute", tpj > 0 ? fmt(tpj) : "– (no step in the last minute)"]));
}

const LEVELS = ["normal", "warm", "hot"];
function thermalState(m) {
  const el = $("thermal"), th = plan && plan.thermal;
  if (th && !th.enabled) { el.textContent = `Thermal admission: off (${th.why})`; el.className = "thermal"; return; }
  if (m.edge_llm_thermal_batch_cap === undefined) { el.textContent = "Thermal admission: no engine yet"; return; }
  const level = LEVELS[m.edge_llm_thermal_level] || "normal", cap = m.edge_llm_thermal_batch_cap;
  const planned = plan ? plan.max_batch_size : cap, headroom = m.edge_llm_thermal_headroom_celsius;
  const near = Number.isFinite(headroom) ? `${fmt(headroom)} °C below the nearest throttle point` : "no reading yet";
  el.className = `thermal ${level}`;
  el.textContent = `Thermal admission: ${level}, ${near}. ` + (level === "normal"
    ? `Batch cap ${cap} (the plan's); background work admitted.`
    : `Batch cap lowered to ${cap} of ${planned}; background work deferred until it cools.`);
}

function temperatureTable(temps, power) {
  const limits = (plan && plan.thermal && plan.thermal.throttle_c) || {};
  const rows = temps.map(([name, c]) => {
    const limit = limits[name] ?? limits["*"];
    return row([name, `${fmt(c)} °C`, limit != null ? `${fmt(limit)} °C` : "not known",
      limit != null ? `${fmt(limit - c)} °C` : "–"]);
  });
  if (!temps.length) rows.push(row(["no temperature sensor", "", "", ""]));
  rows.push(row(["Power", power != null ? `${fmt(power / 1000)} W` : "no power reading", "", ""]));
  $("temps").replaceChildren(...rows);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
  return tr;
}

async function pollJobs() {
  const j = await json("/api/summaries?limit=10");
  if (!j) return;
  $("jobs").replaceChildren(...j.data.map((job) => {
    const p = job.progress;
    const finished = job.status === "done" || job.status === "error";
    return row([job.filename, job.status, p.chunks_total ? `${p.chunks_done} of ${p.chunks_total} parts, round ${job.level}` : "–",
      job.energy_joules != null ? `${fmt(job.energy_joules)} J` : finished ? "unavailable" : "–",
      new Date(job.created * 1000).toLocaleTimeString()]);
  }));
  if (!j.data.length) $("jobs").replaceChildren(row(["no summary jobs", "", "", "", ""]));
}

async function pollPlan() {
  const p = await json("/api/plan");
  if (!p) return;
  plan = p;
  $("plan").replaceChildren(...Object.entries(p.reasons || {}).map(([k, why]) => row([k, String(p[k]), why])));
  $("plan-memory").textContent = `Planned for ${fmt(mib(p.available_bytes))} MiB available (${p.memory}):` +
    ` ${fmt(mib(p.weights_bytes))} MiB weights, ${fmt(mib(p.kv_cache_bytes))} MiB KV cache, ` +
    `${fmt(mib(p.reserve_bytes))} MiB kept in reserve.`;
  const c = p.calibration;
  $("calibration").textContent = c
    ? `Speed choices measured on this device in ${fmt(c.measured_s)} s (${(c.key && (c.key.gpu || c.key.cpu)) || "this CPU"})` +
      (p.calibration_current === false ? "; the power mode has changed since: a restart measures again." : ".")
    : "No calibration: speed choices are the defaults.";
}

async function poll() {
  await Promise.all([pollMetrics(), pollTelemetry(), pollJobs()].map((x) => x.catch(() => null)));
}
pollPlan().catch(() => null);
poll();
setInterval(poll, 2000);
setInterval(() => pollPlan().catch(() => null), 30000);
