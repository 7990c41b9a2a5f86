"use strict";
// The kiosk chat: streams tokens over SSE, Stop aborts the request (the server cancels the
// sequence when the connection closes). Conversations and settings live in localStorage.
// Model output is rendered by the server (/api/markdown: markdown-it-py, Pygments, nh3).
const KEY = "edge-llm.chats";
const MAX_CHATS = 50;
const $ = (id) => document.getElementById(id);
const newChat = () => ({ id: `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`,
  updated: Date.now(), system: "", messages: [] });
let store = load();
let controller = null;
let retryTimer = null;  // a reply waiting to be retried after a 503/429
let modelId = null;

function load() {
  let s = null;
  try { s = JSON.parse(localStorage.getItem(KEY) || "null"); } catch (e) { /* start afresh */ }
  if (!s || !s.chats) s = { current: null, chats: {}, settings: {} };
  const old = JSON.parse(localStorage.getItem("edge-llm.chat") || "null");  // the one-chat format before
  if (old && old.messages) {
    const c = { ...newChat(), system: old.system || "", messages: old.messages };
    s.chats[c.id] = c;
    s.current = c.id;
    localStorage.removeItem("edge-llm.chat");
  }
  if (!s.chats[s.current]) { const c = newChat(); s.chats[c.id] = c; s.current = c.id; }
  s.settings = s.settings || {};
  return s;
}
const chat = () => store.chats[store.current];
function save() {
  chat().updated = Date.now();
  const ids = Object.keys(store.chats).sort((a, b) => store.chats[b].updated - store.chats[a].updated);
  ids.slice(MAX_CHATS).forEach((id) => delete store.chats[id]);
  localStorage.setItem(KEY, JSON.stringify(store));
}

// ---- rendering ----
async function renderMarkdown(texts) {
  const r = await fetch("/api/markdown", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ texts }) });
  if (!r.ok) throw new Error(`render failed: ${r.status}`);
  return (await r.json()).html;
}

function fill(body, html, text) {
  if (html === null) { body.textContent = text; return; }  // the server could not render: plain text
  body.innerHTML = html;  // sanitized on the server (nh3)
  body.querySelectorAll(".code-head").forEach((head) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "small copy-code";
    b.textContent = "Copy";
    b.setAttribute("aria-label", `Copy ${head.textContent} code`);
    b.addEventListener("click", () => copy(head.nextElementSibling.textContent));
    head.appendChild(b);
  });
}

// Renders the newest text of a streaming reply: one request in flight, the latest text next.
function liveRenderer(body) {
  let pending = null, busy = false;
  async function pump() {
    busy = true;
    while (pending !== null) {
      const text = pending;
      pending = null;
      try { fill(body, (await renderMarkdown([text]))[0], text); } catch (e) { fill(body, null, text); }
    }
    busy = false;
  }
  return (text) => { pending = text; if (!busy) return pump(); return null; };
}

function action(label, onClick, name) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "small";
  b.textContent = label;
  if (name) b.setAttribute("aria-label", name);
  b.addEventListener("click", onClick);
  return b;
}

function bubble(role, msg, index) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.setAttribute("data-role", role);
  const body = document.createElement("div");
  body.className = "body";
  if (role === "user") body.textContent = msg.content;
  div.appendChild(body);
  if (msg && msg.stopped) div.classList.add("stopped");
  const bar = document.createElement("div");
  bar.className = "actions";
  if (msg && msg.stopped) {
    const note = document.createElement("span");
    note.className = "hint";
    note.textContent = "stopped (not sent with the next question)";
    bar.appendChild(note);
  }
  if (index !== undefined) {
    bar.appendChild(action("Copy", () => copy(msg.content), `Copy ${role === "user" ? "question" : "answer"}`));
    if (role === "user") bar.appendChild(action("Edit", () => edit(div, index), "Edit question"));
    if (role === "assistant" && index === chat().messages.length - 1) {
      bar.appendChild(action("Regenerate", regenerate, "Regenerate answer"));
    }
  }
  div.appendChild(bar);
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

async function redraw() {
  const msgs = chat().messages;
  $("messages").replaceChildren();
  const bubbles = msgs.map((m, i) => bubble(m.role, m, i));
  $("system").value = chat().system;
  const idx = msgs.map((m, i) => (m.role === "assistant" ? i : -1)).filter((i) => i >= 0);
  if (!idx.length) return;
  let html = null;
  try { html = await renderMarkdown(idx.map((i) => msgs[i].content)); } catch (e) { /* shown as text */ }
  idx.forEach((i, k) => fill(bubbles[i].querySelector(".body"), html ? html[k] : null, msgs[i].content));
  $("messages").scrollTop = $("messages").scrollHeight;
  listChats();
}

function listChats() {
  const ul = $("chats");
  ul.replaceChildren();
  const chats = Object.values(store.chats).filter((c) => c.messages.length).sort((a, b) => b.updated - a.updated);
  if (!chats.length) { const li = document.createElement("li"); li.className = "hint"; li.textContent = "No earlier chats."; ul.appendChild(li); }
  for (const c of chats) {
    const li = document.createElement("li");
    const title = (c.messages[0].content || "").slice(0, 60);
    const open = action(`${c.id === store.current ? "▸ " : ""}${title}`, () => { stop(); store.current = c.id; save(); redraw(); });
    open.className = "chat-title";
    const del = action("Delete", () => {
      delete store.chats[c.id];
      if (c.id === store.current) { const n = newChat(); store.chats[n.id] = n; store.current = n.id; }
      save(); redraw(); listChats();
    }, `Delete chat: ${title}`);
    li.append(open, del);
    ul.appendChild(li);
  }
}

// ---- actions ----
async function copy(text) {
  try { await navigator.clipboard.writeText(text); }
  catch (e) {  // no clipboard permission (an http page on another host): the old way
    const t = document.createElement("textarea");
    t.value = text;
    document.body.appendChild(t);
    t.select();
    document.execCommand("copy");
    t.remove();
  }
  EdgeLLM.show("Copied.");
  setTimeout(() => { if ($("notice").textContent === "Copied.") EdgeLLM.show(""); }, 1500);
}

function edit(div, index) {
  if (controller || retryTimer) return;
  const body = div.querySelector(".body");
  const box = document.createElement("textarea");
  box.value = chat().messages[index].content;
  box.setAttribute("aria-label", "Edit the question");
  box.rows = 3;
  body.replaceChildren(box);
  const bar = div.querySelector(".actions");
  bar.replaceChildren(action("Send edited", () => {
    const text = box.value.trim();
    if (!text) return;
    chat().messages.splice(index);  // the question and everything after it
    chat().messages.push({ role: "user", content: text });
    save();
    redraw().then(reply);
  }, "Send the edited question"), action("Cancel", () => redraw(), "Cancel editing"));
  box.focus();
}

function regenerate() {
  if (controller || retryTimer) return;
  const msgs = chat().messages;
  if (msgs.length && msgs[msgs.length - 1].role === "assistant") msgs.pop();
  save();
  redraw().then(reply);
}

function settings() {
  const s = store.settings, out = {};
  for (const k of ["temperature", "top_p", "max_tokens"]) if (s[k] !== undefined && s[k] !== null) out[k] = s[k];
  return out;
}

// What the model sees: a question counts only with a finished answer (a stopped or failed
// exchange is left out, so the next question does not continue it), plus the new question.
function context() {
  const msgs = chat().messages, out = [];
  for (let i = 0; i < msgs.length; i++) {
    const m = msgs[i], next = msgs[i + 1];
    if (m.role === "user" && (i === msgs.length - 1 || (next && next.role === "assistant" && !next.stopped))) {
      out.push({ role: "user", content: m.content });
    } else if (m.role === "assistant" && !m.stopped && out.length && out[out.length - 1].role === "user") {
      out.push({ role: "assistant", content: m.content });
    }
  }
  return (chat().system.trim() ? [{ role: "system", content: chat().system }] : []).concat(out);
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
  chat().messages.push({ role: "user", content: text });
  save();
  bubble("user", chat().messages[chat().messages.length - 1], chat().messages.length - 1);
  listChats();
  await reply();
}

function failed(out, message) {
  out.classList.add("failed");
  out.querySelector(".body").textContent = message;
  const bar = out.querySelector(".actions");
  bar.replaceChildren(action("Retry", () => { out.remove(); reply(); }, "Retry the answer"));
  bar.querySelector("button").focus();
}

async function reply() {
  const out = bubble("assistant", null);
  const body = out.querySelector(".body");
  const render = liveRenderer(body);
  out.setAttribute("aria-busy", "true");
  controller = new AbortController();
  busy(true);
  EdgeLLM.show("");
  const t0 = performance.now();
  let first = null, text = "", usage = null, finish = null, error = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", signal: controller.signal, headers: { "Content-Type": "application/json" },
      // a visitor's chat, however long its history (unmarked, a long prompt counts as a document)
      body: JSON.stringify({ model: await model(), messages: context(), stream: true, priority: "interactive",
        stream_options: { include_usage: true }, ...settings() }),
    });
    if (!resp.ok) {
      out.remove();
      EdgeLLM.show(await EdgeLLM.explain(resp), resp.status !== 503 && resp.status !== 429);
      if (resp.status === 503 || resp.status === 429) {
        const wait = 1000 * Number(resp.headers.get("Retry-After") || 3);
        retryTimer = setTimeout(() => { retryTimer = null; reply(); }, wait);
        return;
      }
      $("prompt").value = chat().messages.pop().content;  // a refused question (400): back in the box
      save();
      redraw();
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
          render(text);
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    if (!finish) throw new Error("the connection ended before the answer did");
  } catch (e) {
    if (e.name !== "AbortError") error = e.message === "Failed to fetch" ? "the appliance did not answer" : e.message;
  } finally {
    out.removeAttribute("aria-busy");
    busy(retryTimer !== null);  // Stop stays on while a retry is pending
    const stopped = controller && controller.signal.aborted;
    controller = null;
    if (error) {
      failed(out, `The reply failed: ${error}.`);
    } else if (text || stopped) {
      chat().messages.push({ role: "assistant", content: text, ...(stopped ? { stopped: true } : {}) });
      save();
      await redraw();
    } else if (out.isConnected) {
      out.remove();
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

// ---- settings: empty = the model's default (the server applies it) ----
async function showDefaults() {
  try {
    const d = await (await fetch("/api/sampling")).json();
    for (const k of ["temperature", "top_p"]) $(k).placeholder = String(d[k]);
    const src = [...new Set([d.sources.temperature, d.sources.top_p])].join("; ");
    $("defaults-text").textContent = `Model defaults: temperature ${d.temperature}, top p ${d.top_p} (${src}).`;
  } catch (e) { /* offline: the fields stay empty */ }
}
function showSettings() {
  for (const k of ["temperature", "top_p", "max_tokens"]) $(k).value = store.settings[k] ?? "";
}
for (const k of ["temperature", "top_p", "max_tokens"]) {
  $(k).addEventListener("change", () => {
    const v = $(k).value === "" ? null : Number($(k).value);
    store.settings[k] = v !== null && $(k).checkValidity() ? v : null;
    if (store.settings[k] === null) $(k).value = "";
    save();
  });
}
$("defaults").addEventListener("click", () => { store.settings = {}; save(); showSettings(); });

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
document.addEventListener("keydown", (e) => { if (e.key === "Escape") stop(); });
$("stop").addEventListener("click", stop);
$("new").addEventListener("click", () => {  // the old chat stays in History
  stop();
  if (chat().messages.length) { const c = newChat(); store.chats[c.id] = c; store.current = c.id; }
  save();
  redraw();
  listChats();
  $("speed").textContent = "";
  $("prompt").focus();
});
$("system").addEventListener("change", () => { chat().system = $("system").value; save(); });
showSettings();
showDefaults();
redraw();
listChats();
$("prompt").focus();
