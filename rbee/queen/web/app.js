// rbee's dashboard: plain JavaScript, no dependencies. Everything it shows comes from the queen's API,
// with the credential the user gave (or none, on the queen's own machine while it has no API keys).
// Data from the API is only ever put on the page as text (textContent), never as HTML.
"use strict";

const POLL_MS = 2000;
const CHART_POINTS = 90; // three minutes at one sample per poll
const TOKEN_KEY = "rbee.token";
const TABS = ["overview", "models", "playground", "keys"];

const $ = (selector) => document.querySelector(selector);

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) node.append(child);
  }
  return node;
}

const svg = (tag, attrs) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
};

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
}

const rate = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");

function ago(t) {
  if (!t) return "never";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
}

function meter(used, total) {
  const share = total > 0 ? Math.min(1, used / total) : 0;
  const fill = h("span");
  fill.style.width = `${(share * 100).toFixed(1)}%`; // through the CSSOM: the page's CSP forbids style attributes
  return h("div", { class: `meter${share >= 0.9 ? " bad" : share >= 0.7 ? " warn" : ""}`, role: "meter",
    "aria-valuemin": 0, "aria-valuemax": total, "aria-valuenow": used }, fill);
}

// ---- the API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}

const auth = {
  token: sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || "",
  save(token, remember) {
    this.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    if (remember) localStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    this.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
  },
};

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (auth.token) headers.authorization = `Bearer ${auth.token}`;
  if (options.json !== undefined) {
    headers["content-type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.json) };
  }
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    let code;
    try {
      const body = await response.json();
      message = body.error?.message || message;
      code = body.error?.code;
    } catch { /* not JSON: keep the status line */ }
    throw new ApiError(response.status, message, code);
  }
  return options.raw ? response : response.json();
}

// ---- what the page knows ---------------------------------------------------------------------------

const view = {
  mode: "unknown", // "admin" (token or trusted local), "client" (an API key: playground only), "signin"
  status: null,
  hives: [],
  jobs: [],
  catalog: [],
  disks: [],
  samples: [], // {t, requests, tokens} from the queen's running totals
  keysLoaded: false,
};

function showSignin(reason) {
  view.mode = "signin";
  $("#signin").hidden = false;
  $("#signin-why").textContent = reason;
  for (const tab of TABS) $(`#${tab}`).hidden = true;
  $("#tabs").hidden = true;
  setConn("signed out", "bad");
}

function setConn(text, kind) {
  const conn = $("#conn");
  conn.textContent = text;
  conn.className = `pill ${kind}`;
}

function currentTab() {
  const tab = location.hash.slice(1);
  if (view.mode === "client") return "playground";
  return TABS.includes(tab) ? tab : "overview";
}

function showTab() {
  if (view.mode === "signin" || view.mode === "unknown") return;
  const tab = currentTab();
  $("#signin").hidden = true;
  $("#tabs").hidden = false;
  for (const name of TABS) {
    $(`#${name}`).hidden = name !== tab;
    const link = $(`#tabs a[data-tab="${name}"]`);
    link.classList.toggle("active", name === tab);
    link.hidden = view.mode === "client" && name !== "playground";
  }
  $("#signout").hidden = !auth.token;
  if (tab === "keys") loadKeys();
  if (tab === "playground") { loadChatModels(); loadSpeechModels(); loadImageModels(); }
}

// ---- polling -----------------------------------------------------------------------------------------

let pollTimer = null;

async function poll() {
  clearTimeout(pollTimer);
  try {
    if (view.mode !== "client") await refreshColony();
    if (view.mode === "unknown") view.mode = "admin";
    setConn("live", "ok");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      // Without a token: a queen with keys, or another Unix user than the queen's (the admin token is needed).
      showSignin(auth.token ? "That token is not valid (any more)." : err.message);
      return;
    }
    if (err instanceof ApiError && err.status === 403 && auth.token) {
      view.mode = "client"; // an API key: it may use the OpenAI routes only
      showTab();
      setConn("API key", "ok");
    } else if (err instanceof ApiError && err.status === 403) {
      showSignin(err.message);
      return;
    } else {
      setConn("queen unreachable", "bad");
    }
  }
  showTab();
  if (!document.hidden) pollTimer = setTimeout(poll, POLL_MS);
}

document.addEventListener("visibilitychange", () => { if (!document.hidden && view.mode !== "signin") poll(); });

let keysFetchedAt = 0;
const keysStale = () => performance.now() - keysFetchedAt > 10000;

async function refreshColony() {
  const [status, hives, jobs] = await Promise.all([api("/v1/status"), api("/v1/hives"), api("/v1/jobs")]);
  view.status = status;
  view.hives = hives;
  view.jobs = jobs;
  const t = status.traffic;
  view.samples.push({ t: performance.now() / 1000, requests: t.requests, tokens: t.completion_tokens });
  if (view.samples.length > CHART_POINTS + 1) view.samples.shift();
  renderOverview();
  if (currentTab() === "models") {
    [view.catalog, view.disks] = await Promise.all([api("/v1/catalog"), api("/v1/storage")]);
    renderModels();
  }
  if (currentTab() === "keys" && keysStale()) loadKeys();
}

// ---- overview ------------------------------------------------------------------------------------

function rates() {
  const out = [];
  for (let i = 1; i < view.samples.length; i++) {
    const a = view.samples[i - 1], b = view.samples[i];
    const dt = Math.max(0.001, b.t - a.t);
    out.push({ requests: Math.max(0, b.requests - a.requests) / dt, tokens: Math.max(0, b.tokens - a.tokens) / dt });
  }
  return out;
}

function drawChart(node, label, values) {
  const W = 300, H = 80, top = Math.max(1, ...values) * 1.15;
  const x = (i) => W - (values.length - 1 - i) * (W / (CHART_POINTS - 1)); // the newest on the right
  const y = (v) => H - (v / top) * (H - 4);
  const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  node.replaceChildren();
  if (values.length) {
    node.append(svg("polygon", { class: "area", points: `${x(0).toFixed(1)},${H} ${points} ${W},${H}` }));
    node.append(svg("polyline", { class: "line", points }));
  }
  label.textContent = values.length ? `(peak ${rate(Math.max(...values))})` : "";
}

function renderOverview() {
  const { status } = view;
  const series = rates();
  const last = series[series.length - 1];
  $("#rate-requests").textContent = last ? rate(last.requests) : "–";
  $("#rate-tokens").textContent = last ? rate(last.tokens) : "–";
  drawChart($("#chart-requests"), $("#max-requests"), series.map((s) => s.requests));
  drawChart($("#chart-tokens"), $("#max-tokens"), series.map((s) => s.tokens));
  const waiting = Object.values(status.traffic.waiting).reduce((a, b) => a + b, 0);
  $("#waiting").textContent = String(waiting);
  $("#ready").textContent = String(status.workers.filter((w) => w.state === "ready").length);
  const up = Date.now() / 1000 - status.queen.started_at;
  $("#queen-info").textContent = `v${status.queen.version} · up ${Math.floor(up / 3600)}h${String(Math.floor(up % 3600 / 60)).padStart(2, "0")}m`;

  const policy = status.policy;
  $("#policy").hidden = !policy.path;
  $("#policy").textContent = !policy.path ? "" : policy.error ? `Policy ${policy.path}: ${policy.error}`
    : `Policy ${policy.path} is in use.`;
  $("#policy").classList.toggle("error", Boolean(policy.error));
  $("#hives").replaceChildren(...view.hives.map(renderHive));
  if (!view.hives.length) $("#hives").append(h("p", { class: "hint" }, "No hives."));

  const rows = status.workers.map((w) => h("tr", { "data-worker": w.id },
    h("td", {}, h("code", {}, w.id)),
    h("td", {}, w.model),
    h("td", {}, w.hive),
    h("td", {}, w.offload || w.device),
    h("td", {}, h("span", { class: `pill ${w.state}`, title: w.error || "" }, w.state)),
    h("td", {}, `${w.in_flight} / ${w.slots}`),
    h("td", {}, bytes(w.memory_bytes)),
    h("td", {}, w.idle_unload_in_s == null ? "–" : `${Math.round(w.idle_unload_in_s)} s`),
    h("td", {}, ["ready", "starting", "unreachable"].includes(w.state)
      ? h("button", { class: "quiet", type: "button", onclick: () => unload(w.id) }, "Unload") : "")));
  $("#workers tbody").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { class: "empty", colspan: 9 },
    "No workers: one starts when a request names a model, or from Models → Load."))]));
  const hiveSelect = $("#pull-hive");
  const aliases = view.hives.filter((x) => x.state === "ready").map((x) => x.alias);
  if (hiveSelect.options.length !== aliases.length || [...hiveSelect.options].some((o, i) => o.value !== aliases[i])) {
    hiveSelect.replaceChildren(...aliases.map((a) => h("option", { value: a }, a)));
  }
}

// What a worker holds on each device of a hive: its own hive's, or a spread's share on a helper (its parts).
function heldOn(w, alias) {
  if (w.hive === alias) return w.device_memory || {};
  return Object.fromEntries((w.parts || []).filter((p) => p.hive === alias).map((p) => [p.device, p.memory_bytes]));
}

function renderHive(hive) {
  const workers = view.status.workers.filter((w) => !["stopped", "error"].includes(w.state));
  return h("div", { class: "hive", "data-hive": hive.alias },
    h("h3", {}, hive.alias, h("span", { class: `pill ${hive.state}` }, hive.state)),
    h("div", { class: "sub" }, [hive.address, hive.version && `v${hive.version}`,
      hive.last_seen_s != null && hive.alias !== "localhost" ? `seen ${hive.last_seen_s} s ago` : null].filter(Boolean).join(" · ")),
    hive.problem ? h("p", { class: "error" }, hive.problem) : null,
    hive.devices.map((d) => {
      const on = workers.filter((w) => d.id in heldOn(w, hive.alias));
      const used = on.reduce((sum, w) => sum + heldOn(w, hive.alias)[d.id], 0);
      const live = [d.free_bytes != null && `${bytes(d.free_bytes)} free now`,
        d.utilization != null && `${d.utilization.toFixed(0)}% busy`, d.temperature_c != null && `${d.temperature_c.toFixed(0)}°C`];
      return h("div", { class: "device", "data-device": d.id },
        h("div", {}, h("strong", {}, d.name), h("span", { class: "sub" }, ` ${d.id}`),
          d.failed ? h("span", { class: "pill error", title: d.failed }, "failed") : null),
        meter(used, d.total_bytes),
        h("div", { class: "sub" }, [`workers hold ${bytes(used)} of ${bytes(d.total_bytes)}`, ...live].filter(Boolean).join(" · ")),
        d.failed ? h("div", { class: "error" }, d.failed) : null,
        h("div", { class: "sub" }, `${on.length} worker${on.length === 1 ? "" : "s"}: `
          + (on.map((w) => `${w.model} (${w.state}${w.offload ? `, ${w.offload}` : ""})`).join(", ") || "none")));
    }));
}

async function unload(id) {
  try { await api(`/v1/workers/${encodeURIComponent(id)}`, { method: "DELETE" }); } catch (err) { alertIn("#models-error", err); }
  poll();
}

// ---- models and jobs --------------------------------------------------------------------------------

function alertIn(selector, err) { $(selector).textContent = err ? err.message : ""; }

function renderModels() {
  const jobs = [...view.jobs].sort((a, b) => b.created_at - a.created_at).slice(0, 8);
  $("#jobs").replaceChildren(...jobs.map((job) => {
    const last = job.last || {};
    const running = !["done", "error", "cancelled"].includes(job.state);
    const hasTotal = last.total > 0 && last.current != null;
    const label = hasTotal && last.unit === "bytes" ? `${bytes(last.current)} / ${bytes(last.total)}`
      : hasTotal ? `${last.current} / ${last.total} ${last.unit || ""}` : "";
    return h("div", { class: "job", "data-job": job.job_id },
      h("div", {}, h("strong", {}, job.subject || job.kind), h("span", { class: "sub" }, ` ${job.kind} · ${ago(job.created_at)}`)),
      h("div", {}, h("span", { class: `pill ${job.state}` }, job.state),
        running ? h("button", { class: "quiet", type: "button", onclick: () => cancelJob(job.job_id) }, "Cancel") : null),
      hasTotal && running ? meter(last.current, last.total) : null,
      h("div", { class: "sub" }, [last.message !== job.state ? last.message : "", label].filter(Boolean).join(" · ")));
  }));
  const loaded = new Set(view.status.workers.filter((w) => w.state === "ready").map((w) => `${w.hive}\n${w.model}`));
  const rows = view.catalog.map((m) => {
    const isLoaded = loaded.has(`${m.hive}\n${m.name}`);
    return h("tr", { "data-model": m.name },
      h("td", {}, h("strong", {}, m.name), m.repo ? h("div", { class: "sub" }, m.repo) : null),
      h("td", {}, m.hive),
      h("td", {}, bytes(m.size_bytes)),
      h("td", {}, [m.architecture, m.quantization].filter(Boolean).join(" · ") || "–"),
      h("td", {}, m.context_length ? String(m.context_length) : "–"),
      h("td", {}, m.missing ? h("span", { class: "pill error" }, "file missing")
        : h("span", { class: `pill ${isLoaded ? "ready" : ""}` }, isLoaded ? "loaded" : "on disk")),
      h("td", {}, isLoaded || m.missing ? "" : h("button", { type: "button", onclick: () => load(m) }, "Load"),
        " ", confirmButton("Remove", () => removeModel(m))));
  });
  $("#catalog tbody").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { class: "empty", colspan: 7 },
    "No models yet: pull one above, or `rbee model pull NAME -a HIVE`."))]));
  $("#disks").textContent = view.disks.map((d) => `${d.hive}: ${d.models} model${d.models === 1 ? "" : "s"}, `
    + `${bytes(d.models_bytes)}` + (d.free_bytes == null ? "" : ` · ${bytes(d.free_bytes)} free`)).join("  —  ");
}

// A button that asks "Sure?" on the first click and acts on the second (no blocking dialogs).
function confirmButton(label, action) {
  const button = h("button", { type: "button", class: "quiet" }, label);
  let armed = null;
  button.addEventListener("click", () => {
    if (armed) { clearTimeout(armed); armed = null; action(); return; }
    button.textContent = `Sure? ${label}`;
    button.className = "danger";
    armed = setTimeout(() => { armed = null; button.textContent = label; button.className = "quiet"; }, 4000);
  });
  return button;
}

async function startJob(spec) {
  alertIn("#models-error", null);
  try { await api("/v1/jobs", { method: "POST", json: spec }); } catch (err) { alertIn("#models-error", err); }
  poll();
}

const load = (m) => startJob({ kind: "worker.spawn", hive: m.hive, model: m.name });
const cancelJob = (id) => api(`/v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE" }).catch((err) => alertIn("#models-error", err)).then(poll);

async function removeModel(m) {
  alertIn("#models-error", null);
  try {
    await api(`/v1/catalog/${encodeURIComponent(m.name)}?hive=${encodeURIComponent(m.hive)}`, { method: "DELETE" });
  } catch (err) { alertIn("#models-error", err); }
  poll();
}

$("#pull-form").addEventListener("submit", (event) => {
  event.preventDefault();
  startJob({ kind: "model.pull", hive: $("#pull-hive").value || "localhost", model: $("#pull-model").value.trim() });
  $("#pull-model").value = "";
});

// ---- playground ---------------------------------------------------------------------------------

const chat = { messages: [], controller: null };

async function loadChatModels() {
  const select = $("#chat-model");
  if (select.dataset.loaded && performance.now() - Number(select.dataset.loaded) < 10000) return;
  select.dataset.loaded = String(performance.now());
  try {
    const { data } = await api("/v1/models");
    const chosen = select.value;
    const ids = data.filter((m) => (m.kind ?? "text") === "text").map((m) => m.id); // speech, image: their own forms
    select.replaceChildren(...ids.map((id) => h("option", { value: id }, id)));
    if (ids.includes(chosen)) select.value = chosen;
    if (!ids.length) alertIn("#chat-error", { message: "No text models yet: pull one under Models first." });
  } catch (err) { alertIn("#chat-error", err); }
}

function addMessage(role, text) {
  const node = h("div", { class: `msg ${role}` }, text);
  $("#chat-log").append(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

// Reads an OpenAI stream (server-sent events): calls onData with each parsed `data:` payload.
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = frame.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data || data === "[DONE]") continue;
      onData(JSON.parse(data));
    }
  }
}

async function send(event) {
  event.preventDefault();
  const input = $("#chat-input");
  const text = input.value.trim();
  if (!text || chat.controller) return;
  alertIn("#chat-error", null);
  input.value = "";
  chat.messages.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  reply.classList.add("streaming");
  chat.controller = new AbortController();
  $("#chat-send").hidden = true;
  $("#chat-stop").hidden = false;
  const started = performance.now();
  let first = null, pieces = 0, answer = "";
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST", raw: true, signal: chat.controller.signal,
      json: { model: $("#chat-model").value, messages: chat.messages, stream: true,
        max_tokens: Number($("#chat-max").value) || 256 },
    });
    $("#chat-stats").textContent = `served by ${response.headers.get("x-rbee-worker") || "?"} on ${response.headers.get("x-rbee-hive") || "?"}`;
    await readEvents(response, (data) => {
      if (data.error) throw new ApiError(0, data.error.message || "the worker failed", data.error.code);
      const piece = data.choices?.[0]?.delta?.content;
      if (piece) {
        first ??= performance.now();
        pieces += 1;
        answer += piece;
        reply.textContent = answer;
        reply.scrollIntoView({ block: "end" });
      }
    });
    chat.messages.push({ role: "assistant", content: answer });
    const secs = first ? (performance.now() - first) / 1000 : 0;
    $("#chat-stats").textContent += ` · first token ${first ? ((first - started) / 1000).toFixed(2) : "–"} s`
      + ` · ${pieces} tokens${secs > 0 && pieces > 1 ? ` at ${((pieces - 1) / secs).toFixed(1)}/s` : ""}`;
  } catch (err) {
    if (err.name === "AbortError") {
      chat.messages.push({ role: "assistant", content: answer });
      $("#chat-stats").textContent += " · stopped";
    } else {
      chat.messages.pop(); // the question was not answered: let the user send it again
      alertIn("#chat-error", err);
      if (!answer) reply.remove();
    }
  } finally {
    reply.classList.remove("streaming");
    chat.controller = null;
    $("#chat-send").hidden = false;
    $("#chat-stop").hidden = true;
  }
}

$("#chat-form").addEventListener("submit", send);

// ---- playground: images (an image model's PNG, shown inline) -------------------------------------

async function loadImageModels() {
  try {
    const { data } = await api("/v1/models");
    const ids = data.filter((m) => m.kind === "image").map((m) => m.id);
    const select = $("#image-model");
    const chosen = select.value;
    select.replaceChildren(...ids.map((id) => h("option", { value: id }, id)));
    if (ids.includes(chosen)) select.value = chosen;
    $("#image-form").hidden = !ids.length;
  } catch (err) { alertIn("#image-error", err); }
}

async function draw(event) {
  event.preventDefault();
  alertIn("#image-error", null);
  $("#image-send").disabled = true;
  const started = performance.now();
  try {
    const response = await api("/v1/images/generations", {
      method: "POST", raw: true,
      json: { model: $("#image-model").value, prompt: $("#image-prompt").value, size: $("#image-size").value,
        steps: Number($("#image-steps").value) || 20 },
    });
    const { data } = await response.json();
    const out = $("#image-out");
    out.src = `data:image/png;base64,${data[0].b64_json}`;
    out.hidden = false;
    $("#image-stats").textContent = `drawn by ${response.headers.get("x-rbee-worker") || "?"} on `
      + `${response.headers.get("x-rbee-hive") || "?"} in ${((performance.now() - started) / 1000).toFixed(1)} s`;
  } catch (err) { alertIn("#image-error", err); } finally { $("#image-send").disabled = false; }
}

$("#image-form").addEventListener("submit", draw);
$("#chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("#chat-form").requestSubmit(); }
});
$("#chat-stop").addEventListener("click", () => chat.controller?.abort());
$("#chat-clear").addEventListener("click", () => { chat.messages = []; $("#chat-log").replaceChildren(); $("#chat-stats").textContent = ""; });

// ---- playground: transcribe ------------------------------------------------------------------------

async function loadSpeechModels() {
  const select = $("#transcribe-model");
  if (select.dataset.loaded && performance.now() - Number(select.dataset.loaded) < 10000) return;
  select.dataset.loaded = String(performance.now());
  try {
    const { data } = await api("/v1/models");
    const chosen = select.value;
    const ids = data.filter((m) => m.kind === "speech").map((m) => m.id);
    select.replaceChildren(...ids.map((id) => h("option", { value: id }, id)));
    if (ids.includes(chosen)) select.value = chosen;
    $("#transcribe-send").disabled = !ids.length;
    alertIn("#transcribe-error", ids.length ? null : { message: "No speech models yet: pull a whisper.cpp model (e.g. ggerganov/whisper.cpp/ggml-base.en.bin) under Models first." });
  } catch (err) { alertIn("#transcribe-error", err); }
}

async function transcribe(event) {
  event.preventDefault();
  const file = $("#transcribe-file").files[0];
  if (!file) return;
  alertIn("#transcribe-error", null);
  $("#transcribe-text").textContent = "";
  $("#transcribe-stats").textContent = `sending ${file.name} (${bytes(file.size)})…`;
  $("#transcribe-send").disabled = true;
  const form = new FormData();
  form.append("model", $("#transcribe-model").value);
  form.append("file", file, file.name);
  const path = $("#transcribe-translate").checked ? "/v1/audio/translations" : "/v1/audio/transcriptions";
  const started = performance.now();
  try {
    const response = await api(path, { method: "POST", body: form, raw: true }); // the browser sets the boundary
    const { text } = await response.json();
    $("#transcribe-text").textContent = text.trim();
    $("#transcribe-stats").textContent = `served by ${response.headers.get("x-rbee-worker") || "?"} on `
      + `${response.headers.get("x-rbee-hive") || "?"} · ${((performance.now() - started) / 1000).toFixed(2)} s`;
  } catch (err) {
    $("#transcribe-stats").textContent = "";
    alertIn("#transcribe-error", err);
  } finally {
    $("#transcribe-send").disabled = false;
  }
}

$("#transcribe-form").addEventListener("submit", transcribe);

// ---- keys ---------------------------------------------------------------------------------------

async function loadKeys() {
  keysFetchedAt = performance.now();
  try {
    const [keys, usage] = await Promise.all([api("/v1/keys"), api("/v1/usage")]);
    renderKeys(keys, usage);
    alertIn("#keys-error", null);
  } catch (err) { alertIn("#keys-error", err); }
}

function keyState(k) {
  if (k.revoked_at) return "revoked";
  if (k.expires_at && k.expires_at <= Date.now() / 1000) return "expired";
  return "active";
}

function renderKeys(keys, usage) {
  const totals = {};
  for (const u of usage) {
    const t = (totals[u.name] ??= { requests: 0, tokens: 0 });
    t.requests += u.requests;
    t.tokens += u.prompt_tokens + u.completion_tokens;
  }
  $("#key-first").hidden = keys.some((k) => keyState(k) === "active") || Boolean(auth.token);
  const rows = keys.map((k) => {
    const state = keyState(k);
    const limits = [k.rpm && `${k.rpm} req/min`, k.tpm && `${k.tpm} tok/min`, k.expires_at && `until ${when(k.expires_at)}`];
    return h("tr", { "data-key": k.name },
      h("td", {}, h("strong", {}, k.name)),
      h("td", {}, h("code", {}, `${k.prefix}…`)),
      h("td", {}, h("span", { class: `pill ${state}` }, state)),
      h("td", {}, k.models ? k.models.join(", ") : "all"),
      h("td", {}, limits.filter(Boolean).join(" · ") || "none"),
      h("td", {}, String(totals[k.name]?.requests || 0)),
      h("td", {}, String(totals[k.name]?.tokens || 0)),
      h("td", {}, ago(k.last_used_at)),
      h("td", {}, state === "revoked" ? "" : confirmButton("Revoke", () => revokeKey(k.name))));
  });
  $("#key-table tbody").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { class: "empty", colspan: 9 },
    "No API keys: while there are none, only this machine may use the queen."))]));
}

async function revokeKey(name) {
  try { await api(`/v1/keys/${encodeURIComponent(name)}`, { method: "DELETE" }); } catch (err) { alertIn("#keys-error", err); }
  loadKeys();
}

$("#key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const number = (id) => ($(id).value ? Number($(id).value) : undefined);
  const models = $("#key-models").value.split(",").map((m) => m.trim()).filter(Boolean);
  const days = number("#key-days");
  const spec = { name: $("#key-name").value.trim(), models: models.length ? models : undefined,
    rpm: number("#key-rpm"), tpm: number("#key-tpm"), expires_at: days ? Date.now() / 1000 + days * 86400 : undefined };
  alertIn("#keys-error", null);
  try {
    const created = await api("/v1/keys", { method: "POST", json: spec });
    $("#key-secret-name").textContent = created.name;
    $("#key-secret-value").textContent = created.secret;
    $("#key-secret").hidden = false;
    $("#key-form").reset();
  } catch (err) { alertIn("#keys-error", err); }
  loadKeys();
});

$("#key-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("#key-secret-value").textContent);
    $("#key-copy").textContent = "Copied";
  } catch {
    getSelection().selectAllChildren($("#key-secret-value")); // no clipboard access: select it for the user
  }
});

// ---- sign in and out --------------------------------------------------------------------------------

$("#signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  auth.save($("#signin-token").value.trim(), $("#signin-remember").checked);
  $("#signin-token").value = "";
  $("#signin-error").textContent = "";
  view.mode = "unknown";
  await poll();
  if (view.mode === "signin") $("#signin-error").textContent = "That token was refused.";
});

$("#signout").addEventListener("click", () => { auth.clear(); location.hash = ""; location.reload(); });

window.addEventListener("hashchange", () => { showTab(); if (currentTab() === "models") poll(); });

// `rbee dashboard` opens the page as /#token=...: keep the token, drop it from the address bar and history.
(function start() {
  const match = location.hash.match(/^#token=(.+)$/);
  if (match) {
    auth.save(decodeURIComponent(match[1]), false);
    history.replaceState(null, "", `${location.pathname}#overview`);
  }
  poll();
})();
