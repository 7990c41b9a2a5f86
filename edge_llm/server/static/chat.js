"use strict";
// The kiosk chat: streams tokens over SSE, Stop aborts the request (the server cancels the
// sequence when the connection closes), the conversation lives in localStorage.
const KEY = "edge-llm.chat";
const $ = (id) => document.getElementById(id);
let state = JSON.parse(localStorage.getItem(KEY) || "null") || { system: "", messages: [] };
let controller = null;
let retryTimer = null;  // a reply waiting to be retried after a 503/429
let modelId = null;

function save() { localStorage.setItem(KEY, JSON.stringify(state)); }

function bubble(role, content) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.setAttribute("data-role", role);
  if (role === "assistant") div.innerHTML = Markdown.render(content);
  else div.textContent = content;
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function redraw() {
  $("messages").replaceChildren();
  state.messages.forEach((m) => bubble(m.role, m.content));
  $("system").value = state.system;
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

async function model() {
  if (!modelId) modelId = (await (await fetch("/v1/models")).json()).data[0].id;
  return modelId;
}

async function send(text) {
  state.messages.push({ role: "user", content: text });
  save();
  bubble("user", text);
  await reply();
}

async function reply() {
  const messages = (state.system.trim() ? [{ role: "system", content: state.system }] : []).concat(state.messages);
  const out = bubble("assistant", "");
  out.setAttribute("aria-busy", "true");
  controller = new AbortController();
  busy(true);
  EdgeLLM.show("");
  const t0 = performance.now();
  let first = null, text = "", usage = null, finish = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", signal: controller.signal, headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: await model(), messages, stream: true, stream_options: { include_usage: true } }),
    });
    if (!resp.ok) {
      out.remove();
      EdgeLLM.show(await EdgeLLM.explain(resp), resp.status !== 503 && resp.status !== 429);
      if (resp.status === 503 || resp.status === 429) {
        const wait = 1000 * Number(resp.headers.get("Retry-After") || 3);
        retryTimer = setTimeout(() => { retryTimer = null; reply(); }, wait);
        return;
      }
      state.messages.pop();
      save();
      return;
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
        const data = JSON.parse(event.slice(6));
        if (data.error) throw new Error(data.error.message);
        if (data.usage) usage = data.usage;
        const choice = data.choices && data.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) {
          first = first || performance.now();
          text += choice.delta.content;
          out.innerHTML = Markdown.render(text);
          out.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") EdgeLLM.show(`The reply failed: ${e.message}`, true);
  } finally {
    out.removeAttribute("aria-busy");
    busy(retryTimer !== null);  // Stop stays on while a retry is pending
    const stopped = controller && controller.signal.aborted;
    controller = null;
    if (text) {
      state.messages.push({ role: "assistant", content: text });
      save();
    }
    if (stopped) $("speed").textContent = "stopped";
    else if (first && usage) {
      const secs = (performance.now() - first) / 1000;
      const rate = usage.completion_tokens > 1 && secs > 0 ? (usage.completion_tokens - 1) / secs : 0;
      $("speed").textContent = `first token ${Math.round(first - t0)} ms · ${rate.toFixed(1)} tokens/s` +
        (finish === "length" ? " · cut at the length limit" : "");
    }
  }
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller || retryTimer) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
function stop() {
  if (retryTimer !== null) {
    clearTimeout(retryTimer);
    retryTimer = null;
    busy(false);
    EdgeLLM.show("");
    $("speed").textContent = "stopped";
  }
  if (controller) controller.abort();
}
document.addEventListener("keydown", (e) => { if (e.key === "Escape") stop(); });
$("stop").addEventListener("click", stop);
$("new").addEventListener("click", () => {
  stop();
  state.messages = [];
  save();
  redraw();
  $("speed").textContent = "";
  $("prompt").focus();
});
$("system").addEventListener("change", () => { state.system = $("system").value; save(); });
redraw();
$("prompt").focus();
