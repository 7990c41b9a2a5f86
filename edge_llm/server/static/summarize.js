"use strict";
// Upload a document, follow the job's progress over SSE (with progress inside the parts and a
// time-left estimate), cancel it, and read earlier jobs' results.
const $ = (id) => document.getElementById(id);
let source = null;
let current = null;  // the job shown
let pace = null;  // {level, t, done}: where progress stood when this round was first seen running

async function upload(file) {
  EdgeLLM.show("");
  const form = new FormData();
  form.append("file", file, file.name);
  const resp = await fetch("/api/summaries", { method: "POST", body: form });
  if (!resp.ok) { EdgeLLM.show(await EdgeLLM.explain(resp), true); return; }
  const job = await resp.json();
  show(job);
  follow(job.id);
  list();
}

// A job's energy (issue 24): the joules of every request run for it, or why there is no figure.
function energy(job) {
  if (job.energy_joules != null) return `${job.energy_joules >= 100 ? job.energy_joules.toFixed(0) : job.energy_joules.toPrecision(3)} J`;
  return job.status === "done" || job.status === "error" ? "energy unavailable on this device" : "";
}

const clock = (s) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`;

// Time left in this round, from the pace since it was first seen running (null until known).
function timeLeft(job, done, total) {
  const now = Date.now() / 1000;
  if (!pace || pace.id !== job.id || pace.level !== job.level) pace = { id: job.id, level: job.level, t: now, done };
  const rate = (done - pace.done) / (now - pace.t);
  return now - pace.t > 3 && rate > 0 ? (total - done) / rate : null;
}

function describe(job) {
  const p = job.progress;
  if (job.status === "done") return "done";
  if (job.status === "error") return `failed: ${job.error}`;
  if (job.status === "queued" || !p.chunks_total) return "waiting for its turn…";
  const done = p.chunks_done + (p.chunks_partial || 0);
  const stage = job.level === 0 ? `summarizing parts: ${done.toFixed(1)} of ${p.chunks_total}`
    : `combining the summaries (round ${job.level}): ${done.toFixed(1)} of ${p.chunks_total}`;
  const elapsed = Math.max(0, Date.now() / 1000 - job.created);
  const left = timeLeft(job, done, p.chunks_total);
  return `${stage} · ${clock(elapsed)} elapsed · ` + (left === null ? "estimating time left…" : `about ${clock(left)} left`);
}

function show(job) {
  current = job;
  $("job").hidden = false;
  $("job-name").textContent = job.filename;
  const p = job.progress;
  $("progress").max = Math.max(1, p.chunks_total);
  $("progress").value = job.status === "done" ? $("progress").max : p.chunks_done + (p.chunks_partial || 0);
  $("progress-text").textContent = describe(job);
  $("cancel").hidden = job.status === "done" || job.status === "error";
  const used = energy(job);
  $("job-energy").hidden = !used;
  const finished = job.status === "done" || job.status === "error";
  $("job-energy").textContent = job.energy_joules == null ? used : `${finished ? "Energy used" : "Energy so far"}: ${used}`;
  $("result").textContent = job.result || "";
  $("result").hidden = !job.result;
  $("copy").hidden = !job.result;
}

function follow(id) {
  if (source) source.close();
  source = new EventSource(`/api/summaries/${id}/events`);
  const onEvent = (e) => show(JSON.parse(e.data));
  source.addEventListener("progress", onEvent);
  source.addEventListener("done", (e) => { onEvent(e); source.close(); source = null; list(); });
  source.onerror = () => { EdgeLLM.show("Lost the connection to the appliance; retrying…", false); };
  source.onopen = () => EdgeLLM.show("");
}

async function cancel() {
  if (!current) return;
  if (source) { source.close(); source = null; }
  const resp = await fetch(`/api/summaries/${current.id}`, { method: "DELETE" });
  if (!resp.ok && resp.status !== 404) { EdgeLLM.show(await EdgeLLM.explain(resp), true); return; }
  $("progress-text").textContent = `cancelled: ${current.filename}`;
  $("cancel").hidden = true;
  current = null;
  list();
}

async function open(id) {  // the list has no results: fetch the job itself
  const resp = await fetch(`/api/summaries/${id}`);
  if (!resp.ok) { EdgeLLM.show(await EdgeLLM.explain(resp), true); list(); return null; }
  const job = await resp.json();
  if (job.status !== "done" && job.status !== "error") { show(job); follow(job.id); }
  return job;
}

function jobItem(job) {
  const li = document.createElement("li");
  const when = new Date(job.created * 1000).toLocaleString();
  if (job.status === "done" || job.status === "error") {  // the result opens in place
    const d = document.createElement("details");
    const s = document.createElement("summary");
    s.textContent = `${job.filename} — ${job.status} · ${when}` + (job.energy_joules != null ? ` · ${energy(job)}` : "");
    const body = document.createElement("div");
    body.className = "result";
    d.append(s, body);
    d.addEventListener("toggle", async () => {
      if (!d.open || body.textContent) return;
      const full = await open(job.id);
      if (full) body.textContent = full.result || `failed: ${full.error}`;
    });
    li.appendChild(d);
  } else {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `${job.filename} — ${job.status} · ${when}`;
    b.addEventListener("click", () => open(job.id));
    li.appendChild(b);
  }
  return li;
}

async function list() {
  const resp = await fetch("/api/summaries?limit=20");
  if (!resp.ok) return;
  const jobs = (await resp.json()).data;  // newest first, without results
  const ul = $("jobs");
  const openIds = new Set([...ul.querySelectorAll("details[open]")].map((d) => d.dataset.id));
  ul.replaceChildren(...jobs.map((job) => {
    const li = jobItem(job);
    const d = li.querySelector("details");
    if (d) { d.dataset.id = job.id; if (openIds.has(job.id)) d.open = true; }
    return li;
  }));
  if (!jobs.length) { const li = document.createElement("li"); li.className = "hint"; li.textContent = "None yet."; ul.appendChild(li); }
}

$("choose").addEventListener("click", () => $("file").click());
$("file").addEventListener("change", () => { if ($("file").files[0]) upload($("file").files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]);
});
$("cancel").addEventListener("click", cancel);
$("copy").addEventListener("click", async () => {
  try { await navigator.clipboard.writeText($("result").textContent); EdgeLLM.show("Copied."); }
  catch (e) { getSelection().selectAllChildren($("result")); EdgeLLM.show("Press Ctrl+C to copy the selected summary."); }
});
setInterval(() => { if (current && source) $("progress-text").textContent = describe(current); }, 1000);
list();
