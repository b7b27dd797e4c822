// A finished job's output, drawn for its kind: labelled bars for predictions, a mask
// overlay with legend and opacity, input and reconstruction side by side, image grids,
// a slider over an interpolation path. Images open large; each can be downloaded.

import {blobUrl} from "./api.js";
import {el} from "./form.js";

const pct = (x) => `${(100 * x).toFixed(1)}%`;

export function openLarge(src, caption) {
  const box = document.getElementById("lightbox");
  box.querySelector("img").src = src;
  box.querySelector("figcaption").textContent = caption || "";
  box.hidden = false;
  box.focus();
}

// An artifact as an <img>, fetched with the key; click opens it large.
export function artImage(art, {caption = "", cls = "art"} = {}) {
  const img = el("img", {class: cls, alt: caption || art.name, "data-artifact": art.name,
                         width: art.width, height: art.height});
  blobUrl(art.url).then((src) => { img.src = src; }).catch(() => { img.alt = "could not load"; });
  img.addEventListener("click", () => openLarge(img.src, caption || art.name));
  return img;
}

export function downloadLink(art, label, filename) {
  const a = el("a", {class: "download", download: filename || art.name, href: "#"}, label || "download");
  blobUrl(art.url).then((src) => { a.href = src; });
  return a;
}

function figure(art, caption, filename) {
  return el("figure", {class: "tile"}, artImage(art, {caption}),
            el("figcaption", {}, caption, " ", downloadLink(art, "⬇", filename)));
}

function classify(out, inputSrc) {
  const preds = out.predictions || [];
  const bars = el("div", {class: "bars"}, preds.map((p) =>
    el("div", {class: "bar-row"},
       el("span", {class: "bar-label"}, p.label),
       el("span", {class: "bar-track"}, el("span", {class: "bar-fill", style: `width:${pct(p.score)}`})),
       el("span", {class: "bar-value"}, pct(p.score)))));
  const input = inputSrc ? el("figure", {class: "tile"}, el("img", {class: "art small", src: inputSrc, alt: "input"}),
                              el("figcaption", {}, "input")) : null;
  return el("div", {class: "pair", "data-result": "classify"}, input, bars);
}

// A finetune job: the new model (served now, under classify), its figures, its weights.
function finetune(out) {
  const m = out.metrics || {};
  const resumed = out.resumed_from_epoch ? ` (resumed after epoch ${out.resumed_from_epoch})` : "";
  const rows = [["model", out.model.name], ["base", `${out.model.base_model} · ${out.model.mode}`],
                ["classes", out.model.labels.join(", ")], ["validation accuracy", m.val_accuracy ?? "—"],
                ["training accuracy", m.train_accuracy], ["epochs", m.epochs_run],
                ["trainable parameters", m.trainable_parameters], ["steps", `${out.steps}${resumed}`]];
  return el("div", {class: "finetune", "data-result": "finetune"},
    el("table", {class: "table"}, rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, String(v))))),
    el("p", {class: "note"}, `${out.model.name} is served now: pick it under classify. `,
       downloadLink(out.weights, "weights", "model.safetensors")));
}

function loadImage(src) {
  return new Promise((ok, fail) => {
    const img = new Image();
    img.onload = () => ok(img);
    img.onerror = fail;
    img.src = src;
  });
}

// The input with each class's pixels tinted by its colour at the slider's opacity,
// composed here from the raw mask so the opacity can change without another job.
function segment(out, inputSrc) {
  const classes = out.classes || [];
  const canvas = el("canvas", {class: "art", "data-artifact": "overlay"});
  const slider = el("input", {type: "range", min: 0, max: 100, value: 50, id: "opacity", "aria-label": "overlay opacity"});
  const draw = async () => {
    const [mask, base] = await Promise.all([
      blobUrl(out.mask.url).then(loadImage),
      inputSrc ? loadImage(inputSrc) : blobUrl(out.overlay.url).then(loadImage),
    ]);
    const w = mask.naturalWidth, h = mask.naturalHeight;
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d", {willReadFrequently: true});
    ctx.drawImage(mask, 0, 0);
    const m = ctx.getImageData(0, 0, w, h).data;
    ctx.drawImage(base, 0, 0, w, h);
    const px = ctx.getImageData(0, 0, w, h);
    const rgb = classes.map((c) => (c.colour || "#000000").match(/\w\w/g).map((x) => parseInt(x, 16)));
    const alpha = slider.value / 100;
    for (let i = 0; i < m.length; i += 4) {
      const k = m[i];
      if (!k || !rgb[k]) continue;
      for (let c = 0; c < 3; c++) px.data[i + c] = (1 - alpha) * px.data[i + c] + alpha * rgb[k][c];
    }
    ctx.putImageData(px, 0, 0);
  };
  slider.addEventListener("input", draw);
  draw();
  canvas.addEventListener("click", () => openLarge(canvas.toDataURL(), "overlay"));
  const legend = el("table", {class: "legend"},
    el("tr", {}, el("th", {}, ""), el("th", {}, "class"), el("th", {}, "pixels"), el("th", {}, "share")),
    classes.map((c) => el("tr", {"data-class": c.label},
      el("td", {}, el("span", {class: "swatch", style: `background:${c.index ? c.colour : "transparent"}`})),
      el("td", {}, c.label), el("td", {}, String(c.pixels)), el("td", {}, pct(c.fraction)))));
  return el("div", {class: "segment", "data-result": "segment"},
    el("div", {class: "pair"}, canvas,
       el("div", {}, legend,
          el("label", {class: "inline"}, "Opacity ", slider),
          el("p", {}, downloadLink(out.mask, "Raw mask (PNG, class index per pixel)", "mask.png"), " · ",
             downloadLink(out.overlay, "Server overlay", "overlay.png")))));
}

function reconstruct(out, inputSrc) {
  const input = inputSrc ? el("img", {class: "art", src: inputSrc, alt: "input"})
                         : el("div", {class: "art missing"}, "input not kept");
  return el("div", {class: "reconstruct", "data-result": "reconstruct"},
    el("div", {class: "pair"},
       el("figure", {class: "tile"}, input, el("figcaption", {}, "input")),
       figure(out.reconstruction, "reconstruction", "reconstruction.png")),
    el("p", {class: "metric"}, el("strong", {}, `PSNR ${out.psnr.toFixed(2)} dB`),
       ` · MSE ${out.mse.toFixed(5)} · latent of ${out.latent.length}`));
}

// Frames along a path: a slider shows one frame large, the strip shows all.
function path(images) {
  const big = el("div", {class: "frame"});
  const slider = el("input", {type: "range", min: 0, max: images.length - 1, value: 0, id: "frame", "aria-label": "frame"});
  const label = el("span", {});
  const show = () => {
    const a = images[slider.value];
    big.replaceChildren(artImage(a, {caption: `t = ${a.t}`, cls: "art big"}));
    label.textContent = `frame ${Number(slider.value) + 1} of ${images.length} · t = ${a.t}`;
  };
  slider.addEventListener("input", show);
  show();
  return el("div", {class: "path", "data-result": "path"}, big,
            el("label", {class: "inline"}, slider, " ", label),
            el("div", {class: "strip"}, images.map((a) => artImage(a, {caption: `t = ${a.t}`, cls: "thumb"}))));
}

function images(out) {
  const list = out.images || [];
  if (list.length && list[0].t !== undefined) return path(list);
  return el("div", {class: "grid", "data-result": "images"},
            list.map((a, i) => figure(a, a.seed !== undefined ? `seed ${a.seed}` : `#${i + 1}`,
                                      `${a.seed ?? i}.png`)));
}

export function renderOutput(kind, out, {inputSrc} = {}) {
  if (!out) return el("p", {}, "no output");
  if (kind === "classify") return classify(out, inputSrc);
  if (kind === "segment") return segment(out, inputSrc);
  if (kind === "reconstruct") return reconstruct(out, inputSrc);
  if (kind === "finetune") return finetune(out);
  if (out.images) return images(out);
  return el("pre", {}, JSON.stringify(out, null, 2));
}

// The picture a history card shows for a job (none for predictions).
export function thumbnailOf(job) {
  const out = job.output || {};
  return (out.images && out.images[0]) || out.overlay || out.reconstruction || null;
}
