// The page of `uqa serve` (GET /): ask the served model, see the answer marked in its context, and the
// registry's history. It calls the server's public JSON API (POST / with the Hugging Face
// question-answering payload, GET /v1/model, GET /v1/versions), as any client does. No framework, no
// network beyond this server; text from the server or the user is only ever set as text, never as HTML.
"use strict";

const KEY_STORE = "uqa-api-key"; // sessionStorage: the key lives as long as this tab
const TOP_K = 3;
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

let pendingRetry = null; // what to do again once the user gives the API key

async function api(path, body) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method: body === undefined ? "GET" : "POST", headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "the server did not answer (is `uqa serve` still running?)", null);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.error ? data.error : `HTTP ${response.status}`;
    throw new ApiError(response.status, message, data ? data.field : null);
  }
  return data;
}

function needKey(retry, wrong) {
  pendingRetry = retry;
  const form = $("key-form");
  form.hidden = false;
  form.querySelector("label").textContent = wrong
    ? "The API key was refused: enter it again. It is kept for this tab only."
    : "This server needs an API key. It is kept for this tab only.";
  $("api-key").focus();
}

function showError(target, err) {
  const where = err.field ? ` (${err.field})` : "";
  target.textContent = err.status ? `${err.message}${where} [HTTP ${err.status}]` : err.message;
  target.hidden = false;
}

// ---- the served model ------------------------------------------------------------------------------

async function loadModel() {
  try {
    const info = await api("/v1/model");
    $("version").textContent = info.version;
    $("stage").textContent = info.stage ? `(${info.name}, stage ${info.stage})` : info.name ? `(${info.name})` : "";
  } catch (err) {
    if (err.status === 401) return needKey(loadAll, Boolean(sessionStorage.getItem(KEY_STORE)));
    $("version").textContent = err.status === 503 ? "not loaded yet" : "unknown";
    if (err.status === 503) setTimeout(loadModel, 3000);
  }
}

// ---- asking ----------------------------------------------------------------------------------------

function markedPassage(context, start, end) {
  const passage = $("answer");
  passage.replaceChildren();
  if (start < 0 || end <= start) {
    passage.append(document.createTextNode(context));
    return;
  }
  const mark = el("mark", context.slice(start, end));
  passage.append(document.createTextNode(context.slice(0, start)), mark, document.createTextNode(context.slice(end)));
  mark.scrollIntoView({ block: "nearest" });
}

function showAnswers(context, answers) {
  const best = answers[0];
  $("answer-text").textContent = best.no_answer ? "(no answer in this context)" : best.answer;
  $("score").textContent = best.score.toFixed(4);
  $("answer-version").textContent = best.model_version;
  $("version").textContent = best.model_version;
  markedPassage(context, best.no_answer ? -1 : best.start, best.no_answer ? -1 : best.end);
  const list = $("alternatives");
  list.replaceChildren();
  for (const a of answers.slice(1)) {
    const item = el("li");
    item.append(el("span", a.no_answer ? "(no answer)" : a.answer, "alt-text"), el("span", ` ${a.score.toFixed(4)}`, "alt-score"));
    item.querySelector(".alt-text").dir = "auto";
    list.append(item);
  }
  if (answers.length < 2) list.append(el("li", "none", "muted"));
  $("result").hidden = false;
}

async function ask(event) {
  if (event) event.preventDefault();
  const question = $("question").value;
  const context = $("context").value;
  const error = $("error");
  error.hidden = true;
  if (!question.trim() || !context.trim()) {
    showError(error, new ApiError(0, !question.trim() ? "write a question" : "paste a context", null));
    return;
  }
  const button = $("ask");
  button.disabled = true;
  button.textContent = "Asking…";
  try {
    const answers = await api("/", { inputs: { question, context }, parameters: { top_k: TOP_K } });
    showAnswers(context, Array.isArray(answers) ? answers : [answers]);
  } catch (err) {
    if (err.status === 401) needKey(() => ask(), Boolean(sessionStorage.getItem(KEY_STORE)));
    else showError(error, err);
  } finally {
    button.disabled = false;
    button.textContent = "Ask";
  }
}

// ---- history ---------------------------------------------------------------------------------------

function chart(versions, prod) {
  const box = $("history-chart");
  box.replaceChildren();
  const scored = versions.filter((v) => typeof v.f1 === "number");
  if (!scored.length) {
    box.append(el("p", "No version has an F1 yet.", "muted"));
    return;
  }
  const W = 720, H = 260, L = 48, R = 16, T = 16, B = 48;
  const f1s = scored.map((v) => v.f1);
  let lo = Math.max(0, Math.floor(Math.min(...f1s) / 5) * 5 - 5);
  let hi = Math.min(100, Math.ceil(Math.max(...f1s) / 5) * 5 + 5);
  if (hi <= lo) hi = lo + 10;
  const x = (i) => L + (versions.length === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (versions.length - 1));
  const y = (f1) => T + ((hi - f1) * (H - T - B)) / (hi - lo);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", id: "history-svg", "aria-labelledby": "history-svg-title" });
  const title = svg("title", { id: "history-svg-title" });
  title.textContent = `F1 of each registered version (${versions.length}); prod is ${prod || "none"}`;
  root.append(title);
  const tick = [5, 10, 20, 25].find((step) => (hi - lo) / step <= 6) || 25; // lo and hi are multiples of 5
  for (let value = lo; value <= hi + 1e-9; value += tick) {
    root.append(svg("line", { x1: L, x2: W - R, y1: y(value), y2: y(value), class: "grid" }));
    const label = svg("text", { x: L - 6, y: y(value) + 4, class: "axis", "text-anchor": "end" });
    label.textContent = value.toFixed(0);
    root.append(label);
  }
  const yLabel = svg("text", { x: 12, y: T + (H - T - B) / 2, class: "axis", transform: `rotate(-90 12 ${T + (H - T - B) / 2})`, "text-anchor": "middle" });
  yLabel.textContent = "F1";
  root.append(yLabel);
  const points = versions.map((v, i) => ({ v, i })).filter((p) => typeof p.v.f1 === "number");
  root.append(svg("polyline", { points: points.map((p) => `${x(p.i)},${y(p.v.f1)}`).join(" "), class: "trend" }));
  const step = Math.max(1, Math.ceil(versions.length / 12)); // at most ~12 version labels
  versions.forEach((v, i) => {
    if (i % step && i !== versions.length - 1) return;
    const label = svg("text", { x: x(i), y: H - B + 18, class: "axis", "text-anchor": "middle" });
    label.textContent = v.version;
    root.append(label);
  });
  for (const { v, i } of points) {
    const cls = ["point", v.promoted ? "promoted" : "not-promoted", v.version === prod ? "prod" : ""].join(" ").trim();
    const g = svg("g", { class: cls, "data-version": v.version, "data-f1": v.f1, "data-promoted": v.promoted });
    if (v.version === prod) g.append(svg("circle", { cx: x(i), cy: y(v.f1), r: 10, class: "prod-ring" }));
    g.append(svg("circle", { cx: x(i), cy: y(v.f1), r: 5, class: "dot" }));
    const tip = svg("title");
    tip.textContent = `${v.version}: F1 ${v.f1.toFixed(2)}${v.promoted ? ", promoted" : ", not promoted"}${v.version === prod ? " (prod)" : ""}`;
    g.append(tip);
    root.append(g);
  }
  const legend = svg("text", { x: L, y: H - 8, class: "legend" });
  legend.textContent = "● promoted   ○ not promoted   ◎ prod now";
  root.append(legend);
  box.append(root);
}

function periodText(periods) {
  if (!periods || !periods.length) return "";
  return periods.map((p) => `${(p.from || "?").replace("T", " ")} → ${p.until ? p.until.replace("T", " ") : "now"}`).join("; ");
}

function table(versions, prod) {
  const body = $("history-table").querySelector("tbody");
  body.replaceChildren();
  for (const v of [...versions].reverse()) { // newest first
    const row = el("tr");
    row.dataset.version = v.version;
    if (v.version === prod) row.className = "prod";
    const cells = [
      v.version + (v.version === prod ? " (prod)" : ""),
      v.registered_at ? v.registered_at.replace("T", " ") : "unknown",
      typeof v.f1 === "number" ? v.f1.toFixed(2) : "n/a",
      typeof v.exact_match === "number" ? v.exact_match.toFixed(2) : "n/a",
      v.n_questions === null || v.n_questions === undefined ? "" : `${v.n_questions} (${v.mode || "?"})`,
      v.eval_set || "",
      v.promoted ? "yes" : "no",
      periodText(v.prod_periods),
      (v.reason || "") + (v.pruned ? ` (files pruned ${v.pruned})` : ""),
    ];
    for (const text of cells) row.append(el("td", text));
    body.append(row);
  }
}

async function loadHistory() {
  const error = $("history-error");
  error.hidden = true;
  try {
    const h = await api("/v1/versions");
    if (!h.name) {
      $("history-summary").textContent = h.note || "This server answers with a model directory, not a registry version.";
      $("history-chart").replaceChildren();
      table([], null);
      return;
    }
    $("history-summary").textContent =
      `${h.name}: ${h.versions.length} version(s)${h.truncated ? " (the newest)" : ""}, prod ${h.prod || "none"}; dates from ${h.dates_from}.`;
    chart(h.versions, h.prod);
    table(h.versions, h.prod);
  } catch (err) {
    if (err.status === 401) return; // loadModel asks for the key and reloads everything
    showError(error, err);
  }
}

function loadAll() {
  loadModel();
  loadHistory();
}

// ---- wiring ----------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("ask-form").addEventListener("submit", ask);
  $("context").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) ask(e);
  });
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    $("api-key").value = "";
    $("key-form").hidden = true;
    const retry = pendingRetry;
    pendingRetry = null;
    loadAll();
    if (retry && retry !== loadAll) retry();
  });
  loadAll();
});
