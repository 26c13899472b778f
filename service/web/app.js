// lookalike web page: search by image, compare as a heat map, add to the gallery.
// Plain JS against the service's own HTTP API; no build step.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let galleryCursor = null;

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

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error.message} (${response.status} ${body.error.code})`;
  } catch (_) { /* not JSON */ }
  return `the server answered ${response.status}`;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error(`cannot reach the service: ${err.message}`);
  }
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.status === 204 ? null : response.json();
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
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
  img.src = `${base()}/images/${encodeURIComponent(id)}/content`;
  img.alt = metadataText(metadata) || id;
  img.loading = "lazy";
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
  grid.replaceChildren(...results.map(tile));
  if (!results.length) grid.textContent = "The gallery is empty: add images below.";
}

function k() {
  return Math.max(1, Math.min(Number($("k").value) || 12, info ? info.limits.max_k : 100));
}

async function searchByFile(file) {
  if (!file) return;
  showError("");
  const preview = $("query-preview");
  const img = document.createElement("img");
  img.src = URL.createObjectURL(file);
  img.alt = "your query image";
  preview.replaceChildren("Query: ", img);
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
  $("query-preview").textContent = `Query: ${id}`;
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
    const table = document.createElement("table");
    table.className = "heatmap";
    table.setAttribute("aria-label", "cosine score of every pair of images");
    const head = table.insertRow();
    head.append(document.createElement("th"));
    urls.forEach((url, i) => {
      const th = document.createElement("th");
      th.innerHTML = `<img src="${url}" alt="${files[i].name.replace(/"/g, "")}">`;
      head.append(th);
    });
    scores.forEach((row, i) => {
      const tr = table.insertRow();
      const th = document.createElement("th");
      th.innerHTML = `<img src="${urls[i]}" alt="${files[i].name.replace(/"/g, "")}">`;
      tr.append(th);
      row.forEach((score) => {
        const td = tr.insertCell();
        td.textContent = score.toFixed(2);
        td.style.background = heatColour(score);
        td.title = `score ${score.toFixed(4)}`;
      });
    });
    $("heatmap").replaceChildren(table);
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
      if (xhr.status === 401) $("api-key-field").hidden = false;
      showError(body && body.error ? `${body.error.message} (${xhr.status} ${body.error.code})` : `upload failed: ${xhr.status}`);
    }
  };
  xhr.send(form);
}

async function loadGallery(reset) {
  if (reset) {
    galleryCursor = null;
    $("gallery").replaceChildren();
  }
  const params = new URLSearchParams({ limit: "48" });
  if (galleryCursor) params.set("cursor", galleryCursor);
  try {
    const page = await api(`${base()}/images?${params}`);
    $("gallery").append(...page.items.map(tile));
    galleryCursor = page.next_cursor;
    $("more").hidden = !galleryCursor;
  } catch (err) {
    showError(err.message);
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

async function start() {
  try {
    info = await api("/info");
    $("model-info").textContent = `model ${info.model.name} · ${info.model.dim}-d · version ${info.model.version.slice(0, 12)}`;
    $("api-key-field").hidden = !info.auth_required;
  } catch (err) {
    showError(err.message);
  }
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
    $("results").replaceChildren();
    loadGallery(true);
  });
  try {
    await loadCollections();
  } catch (err) {
    showError(err.message);
  }
  loadGallery(true);
}

start();
