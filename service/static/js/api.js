// The HTTP API as the studio uses it: the key in the browser session, sent as a bearer
// header; JSON calls that throw an ApiError carrying the server's error code; artifacts as
// object URLs (an <img src> cannot send the header); the event stream read with fetch so
// that it can send the header and Last-Event-ID, which EventSource cannot.

const KEY = "convoy.key";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() { return `${this.code}: ${this.message}`; }
}

export const key = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (value) => value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY),
};

function headers(extra = {}) {
  const k = key.get();
  return k ? {Authorization: `Bearer ${k}`, ...extra} : extra;
}

async function failure(r) {
  let body = null;
  try { body = await r.json(); } catch { /* not JSON */ }
  const err = body && body.error;
  return new ApiError(r.status, err ? err.code : `http_${r.status}`,
                      err ? err.message : r.statusText || "request failed");
}

export async function call(path, {method = "GET", body} = {}) {
  let r;
  try {
    r = await fetch(path, {method, headers: headers(body ? {"Content-Type": "application/json"} : {}),
                           body: body ? JSON.stringify(body) : undefined});
  } catch (e) {
    throw new ApiError(0, "unreachable", `the service does not answer (${e.message})`);
  }
  if (!r.ok) throw await failure(r);
  return r.json();
}

const blobs = new Map();  // artifact url -> object URL, so a picture is fetched once

export async function blobUrl(url) {
  if (!blobs.has(url)) {
    blobs.set(url, (async () => {
      const r = await fetch(url, {headers: headers()});
      if (!r.ok) { blobs.delete(url); throw await failure(r); }
      return URL.createObjectURL(await r.blob());
    })());
  }
  return blobs.get(url);
}

// One server-sent event block ("id: 3\r\nevent: progress\r\ndata: {...}") as an object.
export function parseEvent(block) {
  const ev = {data: ""};
  for (const line of block.split(/\r\n|\r|\n/)) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") ev.data += (ev.data ? "\n" : "") + value;
    else ev[field] = value;
  }
  return ev.event || ev.data ? ev : null;
}

// Follow a job's events, calling onEvent({id, event, data}) for each; resumes after the
// last event seen when the connection drops; returns when the job ends or `signal` aborts.
export async function follow(jobId, onEvent, {after = 0, signal} = {}) {
  let last = after;
  for (let attempt = 0; !signal?.aborted; attempt++) {
    const extra = last ? {"Last-Event-ID": String(last)} : {};
    let r;
    try {
      r = await fetch(`/v1/jobs/${jobId}/events`, {headers: headers(extra), signal});
    } catch (e) {
      if (signal?.aborted) return;
      await new Promise((ok) => setTimeout(ok, Math.min(5000, 250 * 2 ** attempt)));
      continue;
    }
    if (!r.ok) throw await failure(r);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    let ended = false;
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += value;
        const blocks = buf.split(/\r\n\r\n|\n\n|\r\r/);
        buf = blocks.pop();
        for (const block of blocks) {
          const ev = parseEvent(block);
          if (!ev || !ev.event) continue;
          if (ev.id) last = Number(ev.id);
          const data = ev.data ? JSON.parse(ev.data) : {};
          onEvent({id: last, event: ev.event, data});
          if (ev.event === "status" && ["succeeded", "failed", "canceled"].includes(data.status)) {
            ended = true;
          }
        }
      }
    } catch (e) {
      if (signal?.aborted) return;
    }
    if (ended) return;
    // The stream closed without a final status: ask the record, then resume or stop.
    const job = await call(`/v1/jobs/${jobId}`);
    if (["succeeded", "failed", "canceled"].includes(job.status)) {
      onEvent({id: last, event: "record", data: job});
      return;
    }
  }
}

// A file to POST /v1/uploads (multipart); its id, for an input's {"upload": id}.
export async function upload(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  let r;
  try {
    r = await fetch("/v1/uploads", {method: "POST", headers: headers(), body: form});
  } catch (e) {
    throw new ApiError(0, "unreachable", `the service does not answer (${e.message})`);
  }
  if (!r.ok) throw await failure(r);
  return (await r.json()).id;
}

export function fileToDataUrl(file) {
  return new Promise((ok, fail) => {
    const r = new FileReader();
    r.onload = () => ok(r.result);
    r.onerror = () => fail(r.error);
    r.readAsDataURL(file);
  });
}
