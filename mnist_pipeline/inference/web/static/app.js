// Draw a digit: pointer events (mouse, pen, finger) draw on the canvas; the picture goes to
// POST /api/predict while you draw (debounced) and when a stroke ends. Only the newest answer is shown.
// The result is aria-busy from the first touch of the pad until the answer for the picture as it now
// stands has arrived: answers for earlier states of the drawing may show meanwhile, but never end it.
"use strict";

const DEBOUNCE_MS = 120;
const LINE_WIDTH = 18; // in canvas pixels (280 wide): about MNIST's stroke once the digit is scaled to 20 px

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const topList = document.getElementById("top");
const statusLine = document.getElementById("status");
const result = document.getElementById("result");
const seen = document.getElementById("seen");

let drawn = false;     // anything on the canvas worth sending
let version = 0;       // changes with every change of the picture
let last = null;       // the previous point of the stroke in progress, per pointer
let timer = null;
let sent = 0;          // requests sent; an answer older than the newest is dropped

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  drawn = false;
  version += 1;
}

function point(event) {
  // The canvas may be shown smaller or larger than its 280x280 pixels.
  const box = pad.getBoundingClientRect();
  return {
    x: (event.clientX - box.left) * (pad.width / box.width),
    y: (event.clientY - box.top) * (pad.height / box.height),
  };
}

function dot(p) {
  version += 1;
  ctx.beginPath();
  ctx.arc(p.x, p.y, LINE_WIDTH / 2, 0, 2 * Math.PI);
  ctx.fillStyle = "#000";
  ctx.fill();
}

function line(a, b) {
  version += 1;
  ctx.beginPath();
  ctx.moveTo(a.x, a.y);
  ctx.lineTo(b.x, b.y);
  ctx.strokeStyle = "#000";
  ctx.lineWidth = LINE_WIDTH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.stroke();
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  last = { id: event.pointerId, p: point(event) };
  result.setAttribute("aria-busy", "true");
  dot(last.p);
  drawn = true;
});

pad.addEventListener("pointermove", (event) => {
  if (!last || last.id !== event.pointerId) return;
  event.preventDefault();
  // Coalesced events: every point the pen or finger passed, not only one per frame.
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of events.length ? events : [event]) {
    const p = point(e);
    line(last.p, p);
    last.p = p;
  }
  schedule();
});

function endStroke(event) {
  if (!last || last.id !== event.pointerId) return;
  last = null;
  clearTimeout(timer);
  sendCanvas();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(sendCanvas, DEBOUNCE_MS);
}

function sendCanvas() {
  if (!drawn) return;
  const picture = version; // the picture as it is now; toBlob answers later
  pad.toBlob((blob) => send(blob, { "Content-Type": "image/png" }, picture), "image/png");
}

async function send(body, headers, picture) {
  const id = ++sent;
  result.setAttribute("aria-busy", "true");
  try {
    const answer = await fetch("/api/predict", { method: "POST", body, headers });
    const data = await answer.json();
    if (id !== sent) return;
    if (answer.ok) show(data);
    else showError(data.error || `HTTP ${answer.status}`);
  } catch (err) {
    if (id === sent) showError(`no answer from the server (${err.message})`);
  }
  if (id === sent && picture === version && !last) result.setAttribute("aria-busy", "false");
}

function show(data) {
  topList.replaceChildren(...data.top.map((entry) => {
    const item = document.createElement("li");
    item.dataset.class = String(entry.class);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = entry.name;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * entry.probability).toFixed(1)}%`;
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(100 * entry.probability).toFixed(1)}%`;
    item.append(name, bar, pct);
    return item;
  }));
  seen.src = data.image;
  statusLine.className = data.warnings.length ? "status warning" : "status";
  statusLine.textContent = [`${data.predicted_name}, ${(100 * data.probability).toFixed(1)}% sure`, ...data.warnings]
    .join(". Warning: ");
}

function showError(message) {
  topList.replaceChildren();
  seen.removeAttribute("src");
  statusLine.className = "status error";
  statusLine.textContent = message;
}

document.getElementById("clear").addEventListener("click", () => {
  clearTimeout(timer);
  sent += 1; // answers still on their way are for the old drawing
  clearPad();
  result.setAttribute("aria-busy", "false");
  topList.replaceChildren();
  seen.removeAttribute("src");
  statusLine.className = "status";
  statusLine.textContent = "Draw something to begin.";
});

document.getElementById("upload").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  // Show the picture on the pad; the server gets the file itself, as uploaded.
  clearPad();
  const shown = version;
  const url = URL.createObjectURL(file);
  const picture = new Image();
  picture.onload = () => {
    URL.revokeObjectURL(url);
    if (version !== shown) return; // cleared or drawn on meanwhile
    const scale = Math.min(pad.width / picture.width, pad.height / picture.height);
    const w = picture.width * scale;
    const h = picture.height * scale;
    ctx.drawImage(picture, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    drawn = true;
  };
  picture.src = url;
  const form = new FormData();
  form.append("file", file, file.name);
  send(form, {}, version);
  event.target.value = "";
});

function fact(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  if (value instanceof Node) dd.append(value);
  else dd.textContent = value;
  list.append(dt, dd);
}

async function loadCard() {
  const list = document.getElementById("card-facts");
  let card;
  try {
    card = await (await fetch("/api/model")).json();
  } catch (err) {
    fact(list, "model", `card unavailable (${err.message})`);
    return;
  }
  fact(list, "model", card.model.path);
  const md5 = document.createElement("code");
  md5.id = "card-md5";
  md5.textContent = card.model.md5;
  fact(list, "md5", md5);
  fact(list, "recorded", card.model.dvc_lock_stage
    ? `in dvc.lock (stage ${card.model.dvc_lock_stage})` : "not in dvc.lock (md5 of the file)");
  fact(list, "data set", `${card.dataset}: ${card.class_names.join(", ")}`);
  const accuracy = document.createElement("span");
  accuracy.id = "card-accuracy";
  accuracy.textContent = card.test_accuracy === null
    ? "not recorded for this model" : `${(100 * card.test_accuracy).toFixed(2)}%`;
  fact(list, "test accuracy", accuracy);
  if (card.metrics_source) fact(list, "from", card.metrics_source);

  const table = document.getElementById("card-params");
  const keys = Object.keys(card.params);
  for (const key of keys) {
    const row = table.insertRow();
    row.insertCell().textContent = key;
    row.insertCell().textContent = JSON.stringify(card.params[key]);
  }
  const box = document.getElementById("card-params-box");
  if (keys.length) {
    box.querySelector("summary").textContent = `Training params (${card.params_source})`;
  } else {
    box.hidden = true;
  }
  if (card.confusion_matrix) {
    document.getElementById("confusion").src = card.confusion_matrix;
    document.getElementById("confusion-box").hidden = false;
  }
  if (card.dataset !== "mnist") {
    document.querySelector("h1").textContent = "Draw a picture";
    document.getElementById("hint").textContent =
      `This model knows ${card.dataset}: ${card.class_names.join(", ")}. Draw one, or upload a picture.`;
  }
}

clearPad();
loadCard();
