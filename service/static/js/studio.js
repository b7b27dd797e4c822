// The studio: pick a kind and a model, fill the form the model's schema describes, run,
// watch status, progress and previews, cancel; a reload reattaches to the job it was
// following (resuming its event stream after the last event seen).

import {ApiError, blobUrl, call, follow, key, upload} from "./api.js";
import {buildForm, el} from "./form.js";
import {renderOutput} from "./results.js";
import {renderCards, renderHistory, startOps} from "./panels.js";

const $ = (id) => document.getElementById(id);
const TERMINAL = ["succeeded", "failed", "canceled"];
const CURRENT = "convoy.current";
const PAGE_DEFAULTS = {preview_every: 2};  // the studio wants to see previews

const state = {models: [], kind: null, model: null, form: null, job: null, abort: null};

export function showError(id, err) {
  const box = $(id);
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : (err.message || String(err));
  box.hidden = false;
}

// --- kinds, models, form -----------------------------------------------------------

function kindsOf(models) {
  const seen = [];
  for (const m of models) for (const k of Object.keys(m.inputs || {})) if (!seen.includes(k)) seen.push(k);
  return seen;
}

function selectKind(kind, modelName) {
  state.kind = kind;
  sessionStorage.setItem("convoy.kind", kind);
  for (const tab of $("kinds").children) tab.setAttribute("aria-selected", String(tab.dataset.kind === kind));
  const models = state.models.filter((m) => m.inputs && m.inputs[kind]);
  $("model").replaceChildren(...models.map((m) => el("option", {value: m.name}, m.name)));
  const wanted = modelName || sessionStorage.getItem(`convoy.model.${kind}`);
  if (wanted && models.some((m) => m.name === wanted)) $("model").value = wanted;
  selectModel($("model").value);
}

function selectModel(name) {
  state.model = state.models.find((m) => m.name === name) || null;
  if (!state.model) return;
  sessionStorage.setItem(`convoy.model.${state.kind}`, name);
  const m = state.model;
  const size = `${m.input.width}×${m.input.height}, ${m.input.channels === 1 ? "grayscale" : "RGB"}`;
  $("model-summary").textContent = `${m.description || m.family} · input ${size}` +
    (m.labels.length ? ` · ${m.labels.length} classes` : "");
  const schema = m.inputs[state.kind];
  const initial = Object.fromEntries(Object.entries(PAGE_DEFAULTS).filter(([k]) => k in schema.properties));
  state.form = buildForm($("form"), schema, {initial});
  showError("form-error", null);
}

async function loadModels() {
  try {
    const {models} = await call("/v1/models");
    showError("key-error", null);
    state.models = models;
  } catch (e) {
    state.models = [];
    showError("key-error", e);
    $("kinds").replaceChildren();
    $("model").replaceChildren();
    $("form").replaceChildren();
    $("cards").replaceChildren();
    return false;
  }
  const kinds = kindsOf(state.models);
  $("kinds").replaceChildren(...kinds.map((k) => el("button", {
    type: "button", role: "tab", class: "tab", "data-kind": k, onclick: () => selectKind(k)}, k)));
  const saved = sessionStorage.getItem("convoy.kind");
  selectKind(kinds.includes(saved) ? saved : kinds[0]);
  renderCards($("cards"), state.models);
  return true;
}

export function useAgain(job) {
  if (!state.models.some((m) => m.name === job.model && m.inputs[job.kind])) {
    showError("form-error", new Error(`model ${job.model} is no longer served for ${job.kind}`));
    return;
  }
  selectKind(job.kind, job.model);
  state.form.set(job.input || {});
  $("compose").scrollIntoView({behavior: "smooth"});
}

// --- one job -----------------------------------------------------------------------

function setStatus(status) {
  $("status").textContent = status;
  $("status").className = `badge ${status}`;
  $("cancel").disabled = TERMINAL.includes(status) || status === "idle";
}

function setProgress(step, total) {
  $("progress").max = total || 1;
  $("progress").value = step || 0;
  $("progress-text").textContent = total ? `step ${step} / ${total}` : "";
}

function setTraining(event, d) {
  // a finetune job: the step's loss and accuracy, or the epoch's validation accuracy
  const acc = event === "epoch" && d.val_accuracy != null ? ` · val acc ${d.val_accuracy}`
    : ` · train acc ${d.train_accuracy}`;
  const eta = d.eta_s != null ? ` · ETA ${Math.round(d.eta_s)} s` : "";
  $("progress-text").textContent = `epoch ${d.epoch}/${d.epochs} · step ${d.step}/${d.steps} · loss ${d.loss}${acc}${eta}`;
}

function setQueue(queue) {
  // where a queued job stands: position on its queue and, once workers have run times, an ETA
  if (!queue || $("status").textContent !== "queued") return;
  const eta = queue.eta_start_s == null ? "" : ` · starts in ~${Math.max(0, Math.round(queue.eta_start_s))} s`;
  $("progress-text").textContent = `queued · position ${queue.position}${eta}`;
}

function remember() {
  const j = state.job;
  try {
    sessionStorage.setItem(CURRENT, JSON.stringify(j ? {id: j.id, last: j.last, inputSrc: j.inputSrc} : null));
  } catch {  // an input image too large for the session store: keep the rest
    sessionStorage.setItem(CURRENT, JSON.stringify({id: j.id, last: j.last}));
  }
}

function showJob(job, inputSrc) {
  $("job-id").textContent = job.id;
  setStatus(job.status);
  if (job.progress) setProgress(job.progress.step, job.progress.total);
  setQueue(job.queue);
  $("params").textContent = JSON.stringify({kind: job.kind, model: job.model, input: job.input}, null, 2);
  $("params-box").hidden = false;
  if (job.status === "succeeded") {
    if (!job.progress) { setProgress(1, 1); $("progress-text").textContent = "done"; }
    $("preview").replaceChildren();
    $("result").replaceChildren(renderOutput(job.kind, job.output, {inputSrc}));
  }
  if (job.error) showError("run-error", new ApiError(0, job.error.code, job.error.message));
}

async function showPreview(jobId, art) {
  const src = await blobUrl(art.url);
  // a preview that arrives after the job ended (or another job began) is not shown
  if (state.job?.id !== jobId || TERMINAL.includes($("status").textContent)) return;
  const img = el("img", {class: "art big", src, alt: "preview", "data-artifact": art.name});
  $("preview").replaceChildren(img, el("small", {class: "note"}, `preview · ${art.name}`));
}

export async function attach(job, {after = 0, inputSrc = null} = {}) {
  state.abort?.abort();
  const abort = new AbortController();
  state.abort = abort;
  state.job = {id: job.id, last: after, inputSrc, kind: job.kind};
  remember();
  showError("run-error", null);
  $("result").replaceChildren();
  $("preview").replaceChildren();
  setProgress(0, 0);
  showJob(job, inputSrc);
  if (TERMINAL.includes(job.status)) return;
  try {
    await follow(job.id, ({id, event, data}) => {
      if (state.job?.id !== job.id) return;
      state.job.last = id;
      if (event === "status") setStatus(data.status);
      else if (event === "progress") setProgress(data.step, data.total);
      else if (event === "train" || event === "epoch") setTraining(event, data);
      else if (event === "queue") setQueue(data);
      else if (event === "preview") showPreview(job.id, data);
      else if (event === "error") showError("run-error", new ApiError(0, data.code, data.message));
      remember();
    }, {after, signal: abort.signal});
  } catch (e) {
    if (!abort.signal.aborted) showError("run-error", e);
    return;
  }
  if (abort.signal.aborted) return;
  const final = await call(`/v1/jobs/${job.id}`);
  showJob(final, inputSrc);
  if (final.kind === "finetune" && final.status === "succeeded") {  // the new model: try it
    await loadModels();
    if (state.kind === final.kind) state.form.set(final.input || {});
  }
  refreshHistory();
  window.dispatchEvent(new Event("convoy:job-ended"));
}

async function run() {
  showError("form-error", null);
  showError("run-error", null);
  if (!state.model) { showError("form-error", new Error("no model to run: check the API key")); return; }
  let input;
  try { input = state.form.values(); } catch (e) { showError("form-error", e); return; }
  $("run").disabled = true;
  try {
    for (const [name, v] of Object.entries(input)) {  // files (a finetune archive) go first
      if (v && v.file instanceof File) {
        $("form-note").textContent = `uploading ${v.file.name}…`;
        input[name] = {upload: await upload(v.file)};
      }
    }
    const job = await call("/v1/jobs", {method: "POST", body: {kind: state.kind, model: state.model.name, input}});
    $("form-note").textContent = `submitted ${job.id}`;
    refreshHistory();
    attach(job, {inputSrc: input.image || null});
  } catch (e) {
    showError("form-error", e);
  } finally {
    $("run").disabled = false;
  }
}

async function cancel() {
  if (!state.job) return;
  showError("run-error", null);
  try {
    const job = await call(`/v1/jobs/${state.job.id}/cancel`, {method: "POST"});
    setStatus(job.status);
  } catch (e) {
    showError("run-error", e);
  }
}

async function reattach() {
  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem(CURRENT) || "null"); } catch { saved = null; }
  if (!saved) return;
  try {
    const job = await call(`/v1/jobs/${saved.id}`);
    attach(job, {after: TERMINAL.includes(job.status) ? 0 : saved.last || 0, inputSrc: saved.inputSrc});
  } catch {
    sessionStorage.removeItem(CURRENT);
  }
}

function refreshHistory() {
  return renderHistory($("gallery"), {onOpen: (job) => attach(job), onReuse: useAgain,
                                      onError: (e) => showError("history-error", e)});
}

async function start() {
  $("key").value = key.get();
  $("key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    key.set($("key").value.trim());
    window.dispatchEvent(new Event("convoy:key"));
    if (await loadModels()) { refreshHistory(); reattach(); }
  });
  $("model").addEventListener("change", () => selectModel($("model").value));
  $("run").addEventListener("click", run);
  $("form").addEventListener("keydown", (e) => {  // Ctrl+Enter runs, as in a notebook
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); }
  });
  $("cancel").addEventListener("click", cancel);
  $("history-refresh").addEventListener("click", refreshHistory);
  $("lightbox").addEventListener("click", () => { $("lightbox").hidden = true; });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("lightbox").hidden = true; });
  if (await loadModels()) {
    refreshHistory();
    reattach();
  }
  startOps({onError: (e) => showError("ops-error", e)});
}

start();
