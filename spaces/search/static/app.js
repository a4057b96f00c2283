// hubkit search page: every URL is relative, so the page works at / (alone) and at /spaces/search/ (hubkit serve).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { stream: null, busy: false };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setBusy(busy, text) {
  state.busy = busy;
  $("progress").hidden = !busy;
  $("progress-text").textContent = text || "Searching…";
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `The server answered ${response.status} ${response.statusText}`;
}

async function checkHealth() {
  const status = $("status");
  try {
    const response = await fetch("api/health", { cache: "no-store" });
    const body = await response.json();
    if (response.status === 503) {
      status.className = body.error ? "status bad" : "status";
      status.textContent = body.error ? `Not available: ${body.error}` : "Loading the model and the catalogue…";
      setTimeout(checkHealth, body.error ? 5000 : 1000);
      return;
    }
    const versions = Object.entries(body.versions || {});
    const parts = versions.map(([name, v]) => `${name}: ${v.model.repo} (${v.index.size} items${v.model.fallback ? ", fallback features" : ""})`);
    status.className = body.status === "ok" ? "status ok" : "status warn";
    status.textContent = (body.status === "degraded" ? "Degraded: the fallback serves. " : "Ready. ") + parts.join(" · ");
    loadExamples();
  } catch (err) {
    status.className = "status bad";
    status.textContent = `The server does not answer (${err.message}); retrying…`;
    setTimeout(checkHealth, 3000);
  }
}

async function loadExamples() {
  const list = $("examples");
  if (list.childElementCount) return;
  try {
    const response = await fetch("api/examples");
    if (!response.ok) return;
    const body = await response.json();
    for (const example of body.examples) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "example";
      button.dataset.id = example.id;
      button.title = example.metadata.name || example.id;
      const img = document.createElement("img");
      img.src = example.thumbnail;
      img.alt = example.metadata.name || example.id;
      button.append(img);
      button.addEventListener("click", async () => {
        const blob = await (await fetch(example.thumbnail)).blob();
        search(blob, `example ${example.id}`);
      });
      item.append(button);
      list.append(item);
    }
  } catch (_) { /* examples are optional */ }
}

async function search(blob, label) {
  if (state.busy) return;
  if (!blob) return;
  if (blob.type && !blob.type.startsWith("image/")) {
    showError(`"${label}" is not an image (${blob.type}); choose a PNG, JPEG or WebP photo.`);
    return;
  }
  showError("");
  clearResults();
  setBusy(true, "Uploading…");
  $("query").src = URL.createObjectURL(blob);
  $("query-section").hidden = false;
  const form = new FormData();
  form.append("file", blob, label || "photo");
  try {
    setBusy(true, "Searching the catalogue…");
    const response = await fetch("api/predict?k=8", { method: "POST", body: form });
    if (!response.ok) {
      $("query-section").hidden = true;
      showError(await errorMessage(response));
      return;
    }
    render(await response.json());
  } catch (err) {
    showError(`The search failed: ${err.message}. Check the connection and try again.`);
  } finally {
    setBusy(false);
  }
}

function clearResults() {
  $("results").replaceChildren();
  $("categories").replaceChildren();
  $("timings").textContent = "";
  $("results-title").hidden = true;
}

function render(body) {
  const cats = $("categories");
  cats.replaceChildren(...body.categories.slice(0, 3).map((c) => {
    const li = document.createElement("li");
    li.textContent = `${c.label} ${(100 * c.score).toFixed(0)}%`;
    return li;
  }));
  const t = body.timings_ms;
  $("timings").textContent = `${t.total.toFixed(0)} ms (decode ${t.decode.toFixed(0)}, queue ${t.queue.toFixed(0)}, ` +
    `embed ${t.embed.toFixed(0)}, search ${t.search.toFixed(1)}) · version ${body.version}: ${body.model.repo}` +
    `${body.model.fallback ? " (fallback)" : ""} · index ${body.index.version}`;
  $("results-title").hidden = false;
  $("results").replaceChildren(...body.results.map((r, i) => {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.id = r.id;
    li.dataset.rank = String(i + 1);
    const img = document.createElement("img");
    img.src = r.thumbnail;
    img.alt = r.metadata.name || r.id;
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = r.score.toFixed(3);
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = [r.metadata.name || r.id, r.metadata.category].filter(Boolean).join(" · ");
    const id = document.createElement("div");
    id.className = "meta item-id";
    id.textContent = r.id;
    li.append(img, score, meta, id);
    return li;
  }));
}

// -- inputs: file, phone capture, drag and drop, camera ------------------------------------------------------
for (const id of ["file", "capture-input"]) {
  $(id).addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) search(file, file.name);
    event.target.value = "";
  });
}

const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) search(file, file.name);
  else showError("Drop an image file (a PNG, JPEG or WebP photo).");
});

$("camera-start").addEventListener("click", async () => {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("This browser gives no camera access here (it needs HTTPS or localhost); use \"Take a photo\" or upload a file.");
    return;
  }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    $("video").srcObject = state.stream;
    $("camera").hidden = false;
    showError("");
  } catch (err) {
    showError(`The camera could not start (${err.name}): allow camera access, or upload a photo instead.`);
  }
});

function stopCamera() {
  if (state.stream) state.stream.getTracks().forEach((track) => track.stop());
  state.stream = null;
  $("camera").hidden = true;
}
$("camera-stop").addEventListener("click", stopCamera);

$("camera-capture").addEventListener("click", () => {
  const video = $("video");
  if (!video.videoWidth) {
    showError("The camera has no picture yet; wait a moment and capture again.");
    return;
  }
  const canvas = $("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => search(blob, "camera.jpg"), "image/jpeg", 0.92);
});

checkHealth();
