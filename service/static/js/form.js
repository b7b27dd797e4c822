// A form built from a JSON schema (a kind's input as one model takes it, from
// GET /v1/models): one control per property, chosen by its type, bounds and media type.
// Nothing here names a kind's fields; the schema says what there is.

import {fileToDataUrl} from "./api.js";

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
};
export {el};

// A die drawn inline (no emoji font is needed, nothing is fetched).
const DICE = '<svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true"><rect x="3" y="3" ' +
  'width="18" height="18" rx="4" fill="none" stroke="currentColor" stroke-width="2"/>' +
  [[8, 8], [16, 8], [12, 12], [8, 16], [16, 16]].map(([x, y]) => `<circle cx="${x}" cy="${y}" r="1.6" fill="currentColor"/>`).join("") +
  "</svg>";

const isImage = (p) => p.type === "string" && (p.contentMediaType || "").startsWith("image/");
const isImageList = (p) => p.type === "array" && p.items && isImage(p.items);
const isArchive = (p) => p.format === "convoy-dataset";
const placeholder = (v) => typeof v === "string" && /^<\d+ characters>$/.test(v);

function range(p) {
  const lo = p.minimum ?? p.exclusiveMinimum;
  const hi = p.maximum ?? p.exclusiveMaximum;
  if (lo === undefined || hi === undefined || hi > 1e12) return "";
  return `${lo}–${hi}`;
}

// A drop zone for one image: click to pick, drop a file, see it.
function imageInput(name, title, onChange) {
  let value = null;
  const preview = el("img", {class: "drop-preview", alt: "", hidden: true});
  const hint = el("span", {class: "drop-hint"}, `Drop an image or click to pick`);
  const file = el("input", {type: "file", accept: "image/*", hidden: true, "data-field": name});
  const zone = el("div", {class: "drop", tabindex: "0", role: "button", "aria-label": title},
                  preview, hint, file);
  const take = async (f) => {
    if (!f) return;
    value = await fileToDataUrl(f);
    preview.src = value;
    preview.hidden = false;
    hint.textContent = f.name;
    onChange?.();
  };
  zone.addEventListener("click", () => file.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") file.click(); });
  file.addEventListener("change", () => take(file.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    take(e.dataTransfer.files[0]);
  });
  return {
    node: zone,
    get: () => value,
    set: (v) => {
      if (!v || placeholder(v)) return;
      value = v.startsWith("data:") ? v : `data:image/png;base64,${v}`;
      preview.src = value;
      preview.hidden = false;
      hint.textContent = "image";
    },
  };
}

// A training set: a built-in one by name (with images per class), or an archive file of
// one folder per class, which the studio uploads before it submits ({file} until then).
function datasetInput(name, p) {
  const ARCHIVE = "(archive file)";
  const select = el("select", {name, id: `f-${name}`, style: "flex: 1; min-width: 0"},
                    [ARCHIVE, ...p.builtins].map((v) => el("option", {value: v}, v)));
  const file = el("input", {type: "file", accept: ".zip,.tar,.tgz,.tar.gz,.tar.bz2,.tar.xz",
                            "data-field": name});
  const perClass = el("input", {type: "number", min: 1, max: 500, value: 20, title: "images per class",
                                style: "flex: 0 0 4.5em"});
  const show = () => { file.hidden = select.value !== ARCHIVE; perClass.hidden = !file.hidden; };
  select.addEventListener("change", show);
  select.value = p.builtins[0];
  show();
  return {
    node: el("span", {class: "with-button"}, select, file, perClass),
    get: () => {
      if (select.value !== ARCHIVE) return {builtin: select.value, per_class: parseInt(perClass.value, 10)};
      if (!file.files[0]) throw new Error("Dataset: pick an archive, or a built-in set");
      return {file: file.files[0]};
    },
    set: (v) => {
      if (v && v.builtin) { select.value = v.builtin; perClass.value = v.per_class ?? 20; }
      else select.value = ARCHIVE;
      show();
    },
  };
}

function scalarInput(name, p, initial) {
  const nullable = p.nullable || p.default === null;
  if (p.enum) {
    const options = [...(nullable ? [el("option", {value: ""}, "(any)")] : []),
                     ...p.enum.map((v) => el("option", {value: v}, String(v)))];
    const select = el("select", {name, id: `f-${name}`}, options);
    select.value = initial ?? p.default ?? (nullable ? "" : p.enum[0]);
    return {node: select, get: () => select.value === "" ? null : select.value,
            set: (v) => { select.value = v ?? ""; }};
  }
  if (p.type === "integer" || p.type === "number") {
    const input = el("input", {
      type: "number", name, id: `f-${name}`,
      min: p.minimum ?? (p.exclusiveMinimum !== undefined ? (p.type === "integer" ? p.exclusiveMinimum + 1 : p.exclusiveMinimum) : undefined),
      max: p.maximum !== undefined && p.maximum < 1e12 ? p.maximum : undefined,
      step: p.type === "integer" ? 1 : "any",
      placeholder: nullable ? "auto" : undefined,
    });
    const start = initial ?? p.default;
    input.value = start === null || start === undefined ? "" : start;
    const get = () => input.value === "" ? null : (p.type === "integer" ? parseInt(input.value, 10) : parseFloat(input.value));
    const set = (v) => { input.value = v ?? ""; };
    if (name === "seed") {
      const dice = el("button", {type: "button", class: "dice", title: "a random seed",
                                 "aria-label": "random seed", onclick: () => {
        input.value = Math.floor(Math.random() * 2 ** 31);
      }});
      dice.innerHTML = DICE;
      return {node: el("span", {class: "with-button"}, input, dice), get, set};
    }
    return {node: input, get, set};
  }
  if (p.type === "boolean") {
    const box = el("input", {type: "checkbox", name, id: `f-${name}`});
    box.checked = Boolean(initial ?? p.default);
    return {node: box, get: () => box.checked, set: (v) => { box.checked = Boolean(v); }};
  }
  const long = (p.maxLength ?? 0) > 200;
  const input = long ? el("textarea", {name, id: `f-${name}`, rows: 3, maxlength: p.maxLength})
                     : el("input", {type: "text", name, id: `f-${name}`, maxlength: p.maxLength});
  input.value = initial ?? p.default ?? "";
  return {node: input, get: () => input.value === "" ? null : input.value,
          set: (v) => { input.value = v ?? ""; }};
}

// Build the form into `container`; returns {values(), set(values), images()}.
export function buildForm(container, schema, {initial = {}, onImage} = {}) {
  container.replaceChildren();
  const fields = {};
  const required = new Set(schema.required || []);
  for (const [name, p] of Object.entries(schema.properties || {})) {
    const title = p.title || name;
    let control;
    if (isImage(p)) {
      control = imageInput(name, title, onImage);
    } else if (isImageList(p)) {
      const count = p.maxItems || p.minItems || 2;
      const parts = Array.from({length: count}, (_, i) => imageInput(`${name}.${i}`, `${title} ${i + 1}`, onImage));
      control = {
        node: el("div", {class: "drop-row"}, parts.map((x) => x.node)),
        get: () => {
          const got = parts.map((x) => x.get());
          if (got.every((v) => !v)) return null;
          if (got.some((v) => !v)) throw new Error(`${title}: give all ${count} images, or none`);
          return got;
        },
        set: (v) => (v || []).forEach((x, i) => parts[i]?.set(x)),
      };
    } else if (isArchive(p)) {
      control = datasetInput(name, p);
    } else {
      control = scalarInput(name, p, initial[name]);
    }
    const bounds = range(p);
    // the description's first clause under the field, all of it on hover
    const short = (p.description || "").split(/[:;(]/)[0].trim();
    const hint = [short, bounds && `range ${bounds}`].filter(Boolean).join(" · ");
    container.append(el("div", {class: `field ${isImage(p) || isImageList(p) ? "wide" : ""}`, "data-name": name},
      el("label", {for: `f-${name}`, title: p.description}, title,
         required.has(name) ? el("span", {class: "req"}, " *") : null),
      control.node,
      hint ? el("small", {class: "hint", title: p.description}, hint) : null));
    fields[name] = {control, p};
  }
  return {
    values() {
      const out = {};
      for (const [name, {control, p}] of Object.entries(fields)) {
        const v = control.get();
        if (v === null || v === undefined) {
          if (required.has(name)) throw new Error(`${p.title || name} is required`);
          continue;
        }
        out[name] = v;
      }
      return out;
    },
    set(values) {
      for (const [name, v] of Object.entries(values || {})) fields[name]?.control.set(v);
    },
    image(name = "image") { return fields[name]?.control.get() ?? null; },
  };
}
