// nsnet web page: upload images to POST /v1/detect?explain=true and show each verdict.
"use strict";

const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = sessionStorage.getItem("nsnet-token") || "";

function headers() {
  const token = tokenInput.value.trim();
  if (token) sessionStorage.setItem("nsnet-token", token);
  return token ? { Authorization: "Bearer " + token } : {};
}

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// A threshold as `nsnet predict` and `nsnet evaluate` print it: 4 decimals, no trailing zeros.
function thresholdText(t) {
  return String(Number(Number(t).toFixed(4)));
}

async function describeModel() {
  try {
    const res = await fetch("/v1/model", { headers: headers() });
    if (res.status === 401) {
      $("token-box").hidden = false;
      $("model").textContent = "enter the access token, then drop images";
      return;
    }
    if (res.status === 503) {
      $("model").textContent = "the model is loading…";
      setTimeout(describeModel, 1000);
      return;
    }
    const info = await res.json();
    $("model").textContent = `model: ${info.head} head, threshold ${thresholdText(info.threshold)}`;
  } catch (err) {
    $("model").textContent = "cannot reach the server: " + err;
  }
}

function card(result, file) {
  const box = el("article", { class: "card", "data-name": result.name });
  if (result.status === "ok" && file) {
    const thumb = el("img", { class: "thumb", alt: result.name });
    thumb.src = URL.createObjectURL(file);
    box.appendChild(thumb);
  } else {
    box.appendChild(el("div", { class: "thumb" }));
  }
  const info = el("div");
  info.appendChild(el("div", { class: "name muted" }, result.name));
  if (result.status !== "ok") {
    info.appendChild(el("div", { class: "verdict skipped" }, "not scored"));
    info.appendChild(el("p", { class: "error" }, `[${result.status}] ${result.error}`));
    box.appendChild(info);
    return box;
  }
  const verdict = result.verdict || "";
  const cls = verdict.startsWith("gen") ? "generated" : verdict === "real" ? "real" : "uncertain";
  info.appendChild(el("div", { class: "verdict " + cls }, verdict));
  info.appendChild(el("div", { class: "prob" },
    `P(generated) = ${result.prob.toFixed(3)}`));
  const bar = el("div", { class: "bar" });
  const mark = el("span");
  mark.style.left = `calc(${(100 * result.prob).toFixed(1)}% - 2px)`;
  bar.appendChild(mark);
  info.appendChild(bar);
  if (result.caption) {  // null when the head reads no caption (only the advanced head does)
    info.appendChild(el("p", { class: "caption" }, `caption: “${result.caption}”`));
  }
  if (result.semantic_share !== null) {
    info.appendChild(el("p", { class: "muted" },
      `semantic part removed: ${(100 * result.semantic_share).toFixed(1)}% of the image feature`));
  }
  box.appendChild(info);
  if (result.explanation) {
    const heat = el("img", { class: "heat", alt: "explanation heatmap of " + result.name });
    heat.src = "data:image/png;base64," + result.explanation.png_base64;
    box.appendChild(heat);
  }
  return box;
}

async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  $("status").textContent = `scoring ${files.length} image(s)…`;
  let res, body;
  try {
    res = await fetch("/v1/detect?explain=true", { method: "POST", body: form, headers: headers() });
    body = await res.json();
  } catch (err) {
    $("status").textContent = "request failed: " + err;
    return;
  }
  if (res.status === 401) $("token-box").hidden = false;
  const results = body.results || [];
  if (!res.ok && !results.length) {
    $("status").textContent = `error ${res.status}: ${body.detail || body.error}`;
    return;
  }
  $("status").textContent = res.ok ? `${results.length} image(s) scored`
                                   : `error ${res.status}: ${body.detail}`;
  if (res.ok && tokenInput.value.trim()) {  // the token was accepted: no more asking for it
    document.querySelector('label[for="token"]').textContent = "Access token (accepted):";
    if (!$("model").textContent.startsWith("model:")) describeModel();
  }
  const byName = new Map(files.map((f) => [f.name, f]));
  const batch = document.createDocumentFragment();  // newest request on top, in upload order
  results.forEach((r, i) => batch.appendChild(card(r, byName.get(r.name) || files[i])));
  $("results").prepend(batch);
}

const drop = $("drop");
["dragenter", "dragover"].forEach((ev) => drop.addEventListener(ev, (e) => {
  e.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((ev) => drop.addEventListener(ev, (e) => {
  e.preventDefault();
  drop.classList.remove("over");
}));
drop.addEventListener("drop", (e) => upload([...e.dataTransfer.files]));
$("files").addEventListener("change", (e) => {
  upload([...e.target.files]);
  e.target.value = "";
});
tokenInput.addEventListener("change", describeModel);
describeModel();
