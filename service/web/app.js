// lookalike web page: search by image, compare as a heat map, add to the gallery.
// Plain JS against the service's own HTTP API; no build step. Every request carries the API
// key, when one is given; the DOM is built node by node, never from HTML text.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "lookalike-api-key";
let info = null;
let galleryCursor = null;
let galleryLoads = 0; // each reset starts a new load; an older one's answer is dropped

// The collection chosen in the switcher: its routes live under /collections/{name}/.
function base() {
  const name = $("collection").value || "default";
  return name === "default" ? "" : `/collections/${encodeURIComponent(name)}`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The message for an error answer (`body`: its JSON, or null). A 401 also asks for a key and
// puts the cursor in its field; a 403 (a key that may not do this) keeps the server's words.
function failure(status, body) {
  const error = body && body.error;
  const said = error ? `${error.message} (${status} ${error.code})` : `the server answered ${status}`;
  if (status !== 401) return said;
  $("api-key-field").hidden = false;
  $("api-key").focus();
  return `This needs an API key: enter it in the "API key" field. The server said: ${said}`;
}

// Every request of the page but uploads (XMLHttpRequest, for its progress), with the key.
async function request(path, options = {}) {
  try {
    return await fetch(path, { ...options, headers: { ...authHeaders(), ...options.headers } });
  } catch (err) {
    throw new Error(`cannot reach the service: ${err.message}`);
  }
}

async function api(path, options) {
  const response = await request(path, options);
  if (!response.ok) throw new Error(failure(response.status, await response.json().catch(() => null)));
  return response.status === 204 ? null : response.json();
}

// An <img src> cannot send the key: fetch the image with it and show it from an object URL.
// A failure leaves the alt text in its place.
async function loadImage(img, path) {
  try {
    const response = await request(path);
    if (!response.ok) return;
    const blob = await response.blob();
    if (img.isConnected) img.src = URL.createObjectURL(blob);  // else its tile is gone already
  } catch (_) { /* the alt text stands in */ }
}

// Replace what a container shows, and free the object URLs of the images it showed.
function replaceContent(container, ...nodes) {
  container.querySelectorAll("img[src^='blob:']").forEach((img) => URL.revokeObjectURL(img.src));
  container.replaceChildren(...nodes);
}

function image(src, alt) {
  const img = document.createElement("img");
  img.src = src;
  img.alt = alt;
  return img;
}

function metadataText(metadata) {
  return Object.entries(metadata || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
}

function tile({ id, score, metadata }) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "tile";
  button.title = `Search for images like ${id}`;
  button.setAttribute("aria-label", `${id}${score === undefined ? "" : `, score ${score.toFixed(3)}`}: search by it`);
  const img = document.createElement("img");
  img.alt = metadataText(metadata) || id;
  loadImage(img, `${base()}/images/${encodeURIComponent(id)}/content`);
  button.append(img);
  if (score !== undefined) {
    const s = document.createElement("span");
    s.className = "score";
    s.textContent = score.toFixed(3);
    button.append(s);
  }
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = metadataText(metadata) || id;
  button.append(meta);
  button.addEventListener("click", () => searchById(id));
  return button;
}

function showResults(results) {
  const grid = $("results");
  replaceContent(grid, ...results.map(tile));
  if (!results.length) grid.textContent = "The gallery is empty: add images below.";
}

function k() {
  return Math.max(1, Math.min(Number($("k").value) || 12, info ? info.limits.max_k : 100));
}

async function searchByFile(file) {
  if (!file) return;
  showError("");
  replaceContent($("query-preview"), "Query: ", image(URL.createObjectURL(file), "your query image"));
  const form = new FormData();
  form.append("file", file);
  form.append("k", String(k()));
  try {
    showResults((await api(`${base()}/nearest`, { method: "POST", body: form })).results);
  } catch (err) {
    showError(err.message);
  }
}

async function searchById(id) {
  showError("");
  replaceContent($("query-preview"), `Query: ${id}`);
  try {
    const body = JSON.stringify({ id, k: k() });
    showResults((await api(`${base()}/nearest`, { method: "POST", body, headers: { "Content-Type": "application/json" } })).results);
    $("search-title").scrollIntoView({ behavior: "smooth" });
  } catch (err) {
    showError(err.message);
  }
}

function heatColour(score) {
  const t = Math.max(0, Math.min(1, (score + 1) / 2));  // score in [-1, 1]
  return `hsl(${Math.round(230 - 230 * t)}, 70%, ${Math.round(30 + 18 * t)}%)`;
}

async function compare(files) {
  showError("");
  if (files.length < 2 || files.length > 8) {
    showError(`choose 2 to 8 images to compare (you chose ${files.length})`);
    return;
  }
  const form = new FormData();
  files.forEach((f) => form.append("files", f));
  try {
    const { scores } = await api("/similarity", { method: "POST", body: form });
    const urls = files.map((f) => URL.createObjectURL(f));
    const thumbnail = (i) => {
      const th = document.createElement("th");
      th.append(image(urls[i], files[i].name));
      return th;
    };
    const table = document.createElement("table");
    table.className = "heatmap";
    table.setAttribute("aria-label", "cosine score of every pair of images");
    table.insertRow().append(document.createElement("th"), ...files.map((_, i) => thumbnail(i)));
    scores.forEach((row, i) => {
      const tr = table.insertRow();
      tr.append(thumbnail(i));
      row.forEach((score) => {
        const td = tr.insertCell();
        td.textContent = score.toFixed(2);
        td.style.background = heatColour(score);
        td.title = `score ${score.toFixed(4)}`;
      });
    });
    replaceContent($("heatmap"), table);
  } catch (err) {
    showError(err.message);
  }
}

function upload(files) {
  showError("");
  if (!files.length) return;
  const form = new FormData();
  files.forEach((f) => {
    form.append("files", f);
    form.append("metadata", JSON.stringify({ name: f.name }));
  });
  const progress = $("upload-progress");
  progress.hidden = false;
  progress.value = 0;
  $("upload-status").textContent = `uploading ${files.length} image(s)…`;
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `${base()}/images`);
  Object.entries(authHeaders()).forEach(([name, value]) => xhr.setRequestHeader(name, value));
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress.value = (100 * e.loaded) / e.total; };
  xhr.onerror = () => { progress.hidden = true; showError("cannot reach the service"); };
  xhr.onload = () => {
    progress.hidden = true;
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status === 201) {
      $("upload-status").textContent = `added ${body.items.length} image(s)`;
      loadGallery(true);
      loadCollections().catch((err) => showError(err.message));
    } else {
      $("upload-status").textContent = "";
      showError(failure(xhr.status, body));
    }
  };
  xhr.send(form);
}

async function loadGallery(reset) {
  if (reset) {
    galleryLoads += 1;
    galleryCursor = null;
    replaceContent($("gallery"));
  }
  const thisLoad = galleryLoads;
  const params = new URLSearchParams({ limit: "48" });
  if (galleryCursor) params.set("cursor", galleryCursor);
  try {
    const page = await api(`${base()}/images?${params}`);
    // Two loads at once (a new key, then an upload) would otherwise both append their page.
    if (thisLoad !== galleryLoads) return;
    $("gallery").append(...page.items.map(tile));
    galleryCursor = page.next_cursor;
    $("more").hidden = !galleryCursor;
  } catch (err) {
    if (thisLoad === galleryLoads) showError(err.message);
  }
}

async function loadCollections() {
  const select = $("collection");
  const chosen = select.value || "default";
  const { items } = await api("/collections");
  select.replaceChildren(...items.map(({ name, count }) => {
    const option = new Option(`${name} (${count})`, name);
    option.selected = name === chosen;
    return option;
  }));
}

// Who may use this service, as /info tells: anyone (no keys), anyone for reads, or key holders.
function showAccess() {
  let notice = "";
  if (!info.auth_required) {
    notice = "This service is open: it has no API keys configured, so anyone who can reach it can search, add and delete images.";
  } else if (info.public_reads) {
    notice = "Reads on this service are public: anyone who can reach it can search and download its images without a key. Adding and deleting images need one.";
  }
  $("access").textContent = notice;
  $("access").hidden = !notice;
  $("api-key-field").hidden = !info.auth_required;
}

// A model kept beside the serving one (python -m service model add): its vectors' progress.
function keptModelsNote(kept) {
  return kept.filter((m) => !m.serving).map((m) => {
    const share = m.images ? Math.floor((100 * m.vectors) / m.images) : 100;
    const state = m.vectors < m.images ? `building its vectors: ${share} % (${m.vectors} of ${m.images})` : "ready to activate";
    return ` · next model ${m.name} ${m.version.slice(0, 12)}: ${state}`;
  }).join("");
}

// What the page shows from the service: at start, and again with a new key.
async function load() {
  showError("");
  try {
    info = await api("/info");
    $("model-info").textContent = `model ${info.model.name} · ${info.model.dim}-d · version ${info.model.version.slice(0, 12)}${keptModelsNote(info.kept_models)}`;
    showAccess();
    await loadCollections();
  } catch (err) {
    showError(err.message);
    return;
  }
  loadGallery(true);
}

function start() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("input", () => {
    const value = key.value.trim();
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
  });
  $("api-key-field").addEventListener("submit", (e) => {
    e.preventDefault();
    load();
  });
  const drop = $("dropzone");
  // Each handler empties its input afterwards, so choosing the same file again still fires.
  const onFiles = (id, handle) => $(id).addEventListener("change", (e) => {
    const files = [...e.target.files];
    e.target.value = "";
    handle(files);
  });
  onFiles("query-file", (files) => searchByFile(files[0]));
  onFiles("compare-files", compare);
  onFiles("upload-files", upload);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    searchByFile(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("query-file").click(); }
  });
  $("more").addEventListener("click", () => loadGallery(false));
  $("collection").addEventListener("change", () => {
    replaceContent($("results"));
    loadGallery(true);
  });
  load();
}

start();
