// The panels around the job: the caller's history as a gallery, the model cards, and the
// operations view (live workers, their devices and loaded models, queue depth).

import {call} from "./api.js";
import {el} from "./form.js";
import {artImage, thumbnailOf} from "./results.js";

const placeholder = (v) => typeof v === "string" && /^<\d+ characters>$/.test(v);

function params(input) {
  return Object.entries(input || {}).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => {
    const shown = placeholder(v) ? "image" : Array.isArray(v) ? v.map((x) => placeholder(x) ? "image" : x).join(", ")
      : typeof v === "object" ? Object.values(v).join(" ") : String(v);  // {upload: id}, {builtin, per_class}
    return el("span", {class: "chip"}, `${k}: ${shown}`);
  });
}

function when(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString();
}

function card(job, {onOpen, onReuse}) {
  const thumb = thumbnailOf(job);
  const out = job.output || {};
  let picture;
  if (thumb) picture = artImage(thumb, {caption: `${job.model} · ${job.id}`, cls: "thumb"});
  else if (out.predictions && out.predictions.length) {
    const top = out.predictions[0];
    picture = el("div", {class: "thumb text"}, el("strong", {}, top.label), el("small", {}, `${(100 * top.score).toFixed(1)}%`));
  } else {
    picture = el("div", {class: "thumb text"}, job.status);
  }
  return el("article", {class: "job-card", "data-job": job.id, "data-status": job.status},
    picture,
    el("div", {class: "job-meta"},
       el("div", {}, el("span", {class: `badge ${job.status}`}, job.status), " ",
          el("strong", {}, job.kind), " · ", job.model),
       el("small", {class: "note"}, `${when(job.created_at)} · ${job.id}`),
       el("div", {class: "chips"}, params(job.input)),
       el("div", {class: "card-actions"},
          el("button", {type: "button", class: "open", onclick: () => onOpen(job)},
             ["queued", "running"].includes(job.status) ? "Watch" : "Open"),
          el("button", {type: "button", class: "reuse", onclick: () => onReuse(job)}, "Use these parameters again"))));
}

export async function renderHistory(gallery, {onOpen, onReuse, onError}) {
  try {
    const {jobs} = await call("/v1/jobs?limit=40");
    onError(null);
    gallery.replaceChildren(...(jobs.length ? jobs.map((j) => card(j, {onOpen, onReuse}))
                                            : [el("p", {class: "empty"}, "No jobs yet.")]));
  } catch (e) {
    onError(e);
  }
}

function metricRows(metrics, prefix = "") {
  const rows = [];
  for (const [k, v] of Object.entries(metrics || {})) {
    if (v && typeof v === "object") rows.push(...metricRows(v, `${prefix}${k}.`));
    else rows.push([`${prefix}${k}`, typeof v === "number" && !Number.isInteger(v) ? v.toPrecision(4) : String(v)]);
  }
  return rows;
}

export function renderCards(box, models) {
  box.replaceChildren(...models.map((m) => {
    const labels = m.labels.length > 24 ? [...m.labels.slice(0, 24), `… ${m.labels.length - 24} more`] : m.labels;
    return el("article", {class: "model-card", "data-model": m.name},
      el("h3", {}, m.name, " ", el("small", {class: "note"}, m.family)),
      el("p", {}, m.description || ""),
      el("p", {class: "chips"}, m.kinds.map((k) => el("span", {class: "chip kind"}, k))),
      el("dl", {},
         el("dt", {}, "input"), el("dd", {}, `${m.input.width}×${m.input.height}×${m.input.channels}`),
         el("dt", {}, "limits"), el("dd", {}, limitsOf(m)),
         el("dt", {}, "batching"), el("dd", {}, `up to ${m.max_batch} per pass, queue ${m.queue}`),
         labels.length ? [el("dt", {}, "labels"), el("dd", {}, labels.join(", "))] : []),
      el("details", {}, el("summary", {}, "Held-out metrics"),
         el("table", {class: "table"}, metricRows(m.metrics).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v))))));
  }));
}

// "n ≤ 16, steps ≤ 1000": the bounds of the model's own input schemas, kind by kind.
function limitsOf(m) {
  const out = [];
  for (const schema of Object.values(m.inputs || {})) {
    for (const [name, p] of Object.entries(schema.properties || {})) {
      const max = p.maximum ?? p.maxLength;
      const text = `${p.title || name} ≤ ${max}`;
      if (max !== undefined && max < 1e5 && !out.includes(text)) out.push(text);
    }
  }
  return out.join(", ") || "none";
}

function mb(bytes) { return bytes ? `${(bytes / 2 ** 20).toFixed(1)} MB` : "–"; }

async function refreshOps(onError) {
  try {
    const [{workers, queued}, mine] = await Promise.all([
      call("/v1/workers"),
      Promise.all(["queued", "running"].map((s) => call(`/v1/jobs?status=${s}&limit=200`))),
    ]);
    onError(null);
    document.getElementById("queue").textContent =
      `${workers.length} live worker${workers.length === 1 ? "" : "s"} · ${queued ?? "?"} job${queued === 1 ? "" : "s"} queued in all`;
    document.getElementById("workers").replaceChildren(
      el("tr", {}, ["worker", "device", "loaded models", "jobs done", "batches", "memory"].map((h) => el("th", {}, h))),
      ...workers.map((w) => el("tr", {"data-worker": w.id},
        el("td", {class: "mono"}, `${w.host || ""}:${w.pid || ""}`), el("td", {}, w.device || ""),
        el("td", {}, (w.models || []).join(", ") || "none yet"), el("td", {}, String(w.jobs_done ?? 0)),
        el("td", {}, String(w.batches ?? 0)), el("td", {}, mb(w.memory_bytes)))));
    const byModel = {};
    mine.forEach(({jobs}, i) => jobs.forEach((j) => {
      byModel[j.model] = byModel[j.model] || [0, 0];
      byModel[j.model][i] += 1;
    }));
    const rows = Object.entries(byModel);
    document.getElementById("mine").replaceChildren(...(rows.length ? [
      el("tr", {}, ["your jobs by model", "queued", "running"].map((h) => el("th", {}, h))),
      ...rows.map(([m, [q, r]]) => el("tr", {}, el("td", {}, m), el("td", {}, String(q)), el("td", {}, String(r))))] : []));
    document.getElementById("ops-time").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    onError(e);
  }
}

export function startOps({onError}) {
  const refresh = () => refreshOps(onError);
  refresh();
  window.addEventListener("convoy:key", refresh);
  window.addEventListener("convoy:job-ended", refresh);
  setInterval(() => { if (!document.hidden) refreshOps(onError); }, 5000);
}
