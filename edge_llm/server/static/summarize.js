"use strict";
// Upload a document, follow the job's progress over SSE, show and copy the result.
const $ = (id) => document.getElementById(id);
let source = null;

async function upload(file) {
  EdgeLLM.show("");
  const form = new FormData();
  form.append("file", file, file.name);
  const resp = await fetch("/api/summaries", { method: "POST", body: form });
  if (!resp.ok) { EdgeLLM.show(await EdgeLLM.explain(resp), true); return; }
  follow((await resp.json()).id);
  list();
}

function show(job) {
  $("job").hidden = false;
  $("job-name").textContent = job.filename;
  const p = job.progress;
  $("progress").max = Math.max(1, p.chunks_total);
  $("progress").value = p.chunks_done;
  const stage = job.level === 0 ? "summarizing parts" : `combining (round ${job.level})`;
  $("progress-text").textContent = job.status === "done" ? "done"
    : job.status === "error" ? `failed: ${job.error}` : `${stage}: ${p.chunks_done} of ${p.chunks_total}`;
  $("result").textContent = job.result || "";
  $("copy").hidden = !job.result;
}

function follow(id) {
  if (source) source.close();
  source = new EventSource(`/api/summaries/${id}/events`);
  const onEvent = (e) => show(JSON.parse(e.data));
  source.addEventListener("progress", onEvent);
  source.addEventListener("done", (e) => { onEvent(e); source.close(); source = null; list(); });
  source.onerror = () => { EdgeLLM.show("Lost the connection to the appliance; retrying…", false); };
}

async function open(id) {  // the list has no results: fetch the job itself
  const resp = await fetch(`/api/summaries/${id}`);
  if (!resp.ok) { EdgeLLM.show(await EdgeLLM.explain(resp), true); list(); return; }
  const job = await resp.json();
  show(job);
  if (job.status !== "done" && job.status !== "error") follow(job.id);
}

async function list() {
  const resp = await fetch("/api/summaries");
  if (!resp.ok) return;
  const ul = $("jobs");
  ul.replaceChildren();
  for (const job of (await resp.json()).data) {  // newest first, without results
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `${job.filename} — ${job.status}`;
    b.addEventListener("click", () => open(job.id));
    li.appendChild(b);
    ul.appendChild(li);
  }
}

$("file").addEventListener("change", () => { if ($("file").files[0]) upload($("file").files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
$("copy").addEventListener("click", async () => {
  try { await navigator.clipboard.writeText($("result").textContent); EdgeLLM.show("Copied."); }
  catch (e) { getSelection().selectAllChildren($("result")); EdgeLLM.show("Press Ctrl+C to copy the selected summary."); }
});
list();
