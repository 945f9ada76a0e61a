"use strict";
// The labelling page. The server owns the truth: it writes each answer into the label
// file at once and says which questions of an image are open, answered or skipped (the
// chain order and its skips live in hbr/labelling/page.py). This script shows one image
// at a time and moves through its questions; keys are handled one after another, so fast
// typing never answers a question the page has not shown yet.

const state = { session: null, index: 0, active: null, queue: Promise.resolve(), shown: null };
const $ = (id) => document.getElementById(id);
const HEAD_SHARE = 0.2; // the head zoom shows the top fifth of the image

async function call(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

const stageOf = (number) => state.session.stages.find((s) => s.number === number);
const current = () => state.session.items[state.index];
const questionOf = (item, stage) => item.questions.find((q) => q.stage === stage);
const isDone = (item) => !item.questions.some((q) => q.state === "open");
const yesNo = (label) => (label === 1 ? "yes" : "no");

function firstActive(item) {
  const open = item.questions.find((q) => q.state === "open");
  const answerable = item.questions.find((q) => q.state !== "skipped");
  return (open || answerable || { stage: null }).stage;
}

function say(text, isError) {
  $("message").textContent = text || "";
  $("message").className = isError ? "error" : "";
}

function replaceItem(item) {
  const index = state.session.items.findIndex((it) => it.image === item.image);
  state.session.items[index] = item;
  return index;
}

function go(index, active) {
  const count = state.session.items.length;
  if (!count) { render(); return; }
  state.index = Math.max(0, Math.min(count - 1, index));
  state.active = active === undefined || active === null ? firstActive(current()) : active;
  render();
}

function drawHead() {
  const image = $("full");
  const canvas = $("head");
  const height = Math.max(1, Math.round(image.naturalHeight * HEAD_SHARE));
  canvas.width = image.naturalWidth;
  canvas.height = height;
  canvas.getContext("2d").drawImage(image, 0, 0, image.naturalWidth, height, 0, 0, image.naturalWidth, height);
}

function questionLine(item, q) {
  const stage = stageOf(q.stage);
  const li = document.createElement("li");
  li.dataset.stage = q.stage;
  li.dataset.state = q.state;
  li.className = q.stage === state.active ? "active" : "";
  li.append(`${stage.question}`);
  const answer = document.createElement("span");
  answer.className = "answer";
  if (q.label !== null && q.label !== undefined) {
    answer.textContent = `${yesNo(q.label)} (${stage.meaning[q.label]})`;
  } else if (q.state === "open") {
    answer.textContent = "?";
  }
  li.append(answer);
  if (q.state === "open" && q.prefill !== null && q.prefill !== undefined) {
    const hint = document.createElement("span");
    hint.className = "suggest";
    hint.textContent = `suggested: ${yesNo(q.prefill)} (InstanceNumber); Enter accepts`;
    li.append(hint);
  }
  const why = document.createElement("span");
  why.className = q.state === "skipped" ? "why" : "file";
  why.textContent = q.state === "skipped" ? `skipped: ${q.why}` : `→ ${q.file}`;
  li.append(why);
  li.addEventListener("click", () => { if (q.state !== "skipped") { state.active = q.stage; render(); } });
  return li;
}

function render() {
  const items = state.session.items;
  if (!items.length) {
    $("progress").textContent = "nothing to label";
    return;
  }
  const item = current();
  const done = items.filter(isDone).length;
  $("progress").textContent = `${done} of ${items.length} answered`;
  $("position").textContent = `image ${state.index + 1} of ${items.length}`;
  $("image-id").textContent = item.image;
  const meta = [item.background ? `${item.background} background` : item.background_note];
  if (item.reason) meta.push(`picked: ${item.reason}`);
  $("image-meta").textContent = meta.filter(Boolean).join(" · ");
  if (item.prob !== null && item.prob !== undefined) {
    const stage = stageOf(item.pick_stage);
    const what = stage ? `"${stage.meaning[1]}"` : "label 1";
    const which = item.pick_stage ? `stage ${item.pick_stage} model` : "model";
    $("prob").textContent = `${which}: probability of ${what} = ${item.prob.toFixed(3)}`;
  } else {
    $("prob").textContent = "";
  }
  if (state.shown !== item.image) {
    state.shown = item.image;
    $("full").src = `/image/${encodeURIComponent(item.image)}.png`;
  }
  $("questions").replaceChildren(...item.questions.map((q) => questionLine(item, q)));
  const active = questionOf(item, state.active);
  const suggestion = active && active.state === "open" ? active.prefill : null;
  $("btn-yes").classList.toggle("suggested", suggestion === 1);
  $("btn-no").classList.toggle("suggested", suggestion === 0);
  document.body.dataset.done = String(done === items.length);
}

async function answer(label) {
  const item = current();
  const q = questionOf(item, state.active);
  if (!q) { say("no question applies to this image", true); return; }
  if (q.state === "skipped") { say(`does not apply: ${q.why}`, true); return; }
  const data = await call("/api/answer", { image: item.image, stage: q.stage, label });
  replaceItem(data.item);
  say(`${item.image}: ${stageOf(q.stage).meaning[label]} → ${q.file}`);
  const open = data.item.questions.find((x) => x.state === "open");
  if (open) go(state.index, open.stage);
  else if (state.index < state.session.items.length - 1) go(state.index + 1);
  else go(state.index, q.stage);
  if (state.session.items.every(isDone)) say("All images answered; the label files are saved.");
}

async function accept() {
  const q = questionOf(current(), state.active);
  if (q && q.state === "open" && q.prefill !== null && q.prefill !== undefined) await answer(q.prefill);
  else go(state.index + 1);
}

async function undo() {
  const data = await call("/api/undo", {});
  if (!data.item) { say("nothing to undo"); return; }
  go(replaceItem(data.item), data.stage);
  say(`undone: ${data.image}, ${stageOf(data.stage).question}`);
}

function moveQuestion(step) {
  const usable = current().questions.filter((q) => q.state !== "skipped");
  if (!usable.length) return;
  const at = usable.findIndex((q) => q.stage === state.active);
  state.active = usable[Math.max(0, Math.min(usable.length - 1, at + step))].stage;
  render();
}

const next = () => go(state.index + 1);
const previous = () => go(state.index - 1);
const KEYS = {
  ArrowRight: next, j: next, ArrowLeft: previous, k: previous,
  1: () => answer(1), 0: () => answer(0), Enter: accept,
  u: undo, Backspace: undo, ArrowDown: () => moveQuestion(1), ArrowUp: () => moveQuestion(-1),
};
const BUTTONS = {
  "btn-yes": KEYS[1], "btn-no": KEYS[0], "btn-accept": accept,
  "btn-prev": previous, "btn-next": next, "btn-undo": undo,
};

function queue(action) {
  state.queue = state.queue.then(action).catch((error) => say(error.message, true));
}

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || !state.session || !state.session.items.length) return;
  const action = KEYS[event.key];
  if (!action) return;
  event.preventDefault(); // Backspace must not navigate back, arrows must not scroll
  queue(action);
});

for (const [id, action] of Object.entries(BUTTONS)) {
  $(id).addEventListener("click", (event) => {
    event.currentTarget.blur(); // a focused button would also react to the next Enter
    if (state.session && state.session.items.length) queue(action);
  });
}

$("full").addEventListener("load", drawHead);

async function start() {
  state.session = await call("/api/session");
  $("notes").replaceChildren(...state.session.notes.map((note) => {
    const li = document.createElement("li");
    li.textContent = note;
    return li;
  }));
  $("files").replaceChildren("download:", ...state.session.files.map((file) => {
    const a = document.createElement("a");
    a.href = file.url;
    a.textContent = file.name;
    return a;
  }));
  go(0);
  document.body.dataset.ready = "true";
}

queue(start);
