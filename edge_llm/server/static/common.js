"use strict";
// Shared by the pages: the status panel and error wording.
const EdgeLLM = {
  mib: (b) => Math.round(b / 1048576),
  async status() {
    const el = document.getElementById("status");
    try {
      const r = await fetch("/api/status");
      const s = await r.json();
      const parts = [`${s.model} (${s.phase})`];
      if (s.plan) parts.push(`batch ${s.plan.max_batch_size}, context ${s.plan.max_seq_len}`);
      if (s.engine) parts.push(`${s.engine.running} running, ${s.engine.waiting} waiting`);
      const t = s.telemetry;
      if (t) {
        parts.push(`RAM ${EdgeLLM.mib(t.ram_available_bytes)}/${EdgeLLM.mib(t.ram_total_bytes)} MiB free`);
        if (t.swap_total_bytes) parts.push(`swap ${EdgeLLM.mib(t.swap_used_bytes)}/${EdgeLLM.mib(t.swap_total_bytes)} MiB`);
        const temps = Object.values(t.temperatures_c || {});
        if (temps.length) parts.push(`${Math.max(...temps).toFixed(0)} °C`);
        if (t.power_total_mw != null) parts.push(`${(t.power_total_mw / 1000).toFixed(1)} W`);
      }
      el.textContent = parts.join(" · ");
      EdgeLLM.phase = s.phase;
    } catch (e) {
      el.textContent = "the appliance is not answering";
      EdgeLLM.phase = "offline";
    }
  },
  // Words for an HTTP error, from the OpenAI-shaped body when there is one.
  async explain(resp) {
    let msg = "";
    try { msg = (await resp.json()).error.message; } catch (e) { /* not JSON */ }
    const retry = resp.headers.get("Retry-After");
    if (resp.status === 503) return `The model is not ready yet (${msg || "loading"}). Trying again in ${retry || 5} s.`;
    if (resp.status === 429) return `The appliance is busy. Trying again in ${retry || 2} s.`;
    return `Error ${resp.status}: ${msg || resp.statusText}`;
  },
  show(text, isError) {
    const n = document.getElementById("notice");
    n.hidden = !text;
    n.textContent = text || "";
    n.className = "notice" + (isError ? " error" : "");
  },
};
EdgeLLM.status();
setInterval(EdgeLLM.status, 2000);
