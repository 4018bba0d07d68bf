// feedback_lm labeling page: plain JavaScript, no build step.
// Model output is untrusted: every text from the server goes in with textContent, never as HTML.
// The page only knows display positions (0..K-1 as shown); the server maps them to stored responses.
"use strict";

const $ = (id) => document.getElementById(id);
const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const FLAG_KEYS = "qwert";
const LIKERT_ENDS = ["very poor", "excellent"];

const state = {
  token: sessionStorage.getItem("feedback_lm_token") || "",
  campaign: null,   // {name, mode, likert, likert_range, flags, instructions}
  item: null,       // {assignment_id, prompt, responses: [text, ...], draft, progress}
  editing: false,   // the item is one's last label, being changed (PUT instead of POST)
  draft: null,      // {key, best, ranks: {pos: rank}, likert: {pos: 1..7}, flags: {pos: [names]}, comments: {pos: {flag: text}}}
  focus: 0,         // display position of the selected response
  busy: false,      // a submit, skip or load is in flight: keys typed meanwhile wait in `queue`
  queue: [],
  saveTimer: null,
};

// ------------------------------------------------------------------------------------------ API
async function api(method, path, body, keepalive) {
  const headers = { Authorization: "Bearer " + state.token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, keepalive: Boolean(keepalive), body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    const error = new Error((data && data.detail) || response.status + " " + response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

function show(section) {
  for (const id of ["signin", "work", "done"]) $(id).hidden = id !== section;
  $("who").hidden = section === "signin";
}

function setStatus(text, kind) {
  $("status").textContent = text;
  $("status").className = kind || "";
}

// --------------------------------------------------------------------------- text with markers
// Characters that would hide or rearrange text are shown as labeled markers, never interpreted:
// bidi controls (a right-to-left override would reverse the card), invisible characters, control
// bytes, a carriage return (browsers drop a lone one) and lone surrogates.
const NAMED = {
  "\r": "CR", "\u061c": "ALM", "\u200e": "LRM", "\u200f": "RLM", "\u202a": "LRE", "\u202b": "RLE", "\u202c": "PDF",
  "\u202d": "LRO", "\u202e": "RLO", "\u2066": "LRI", "\u2067": "RLI", "\u2068": "FSI", "\u2069": "PDI",
  "\u200b": "ZWSP", "\u2060": "WJ", "\ufeff": "BOM", "\u00ad": "SHY", "\u0000": "NUL", "\u0007": "BEL",
  "\u0008": "BS", "\u001b": "ESC", "\u007f": "DEL",
};
const HIDDEN = /^[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u00ad\u061c\u200b\u200e\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff\ud800-\udfff]$/;

function codePoint(ch) {
  return "U+" + ch.codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
}

function marker(text, title) {
  const span = document.createElement("span");
  span.className = "marker";
  span.textContent = text;
  span.title = title;
  return span;
}

function fillText(element, text) {
  element.replaceChildren();
  element.dir = "ltr";
  if (text === "") {
    element.append(marker("empty", "this response is the empty string"));
    return;
  }
  if (text.trim() === "") {
    element.append(marker(`blank: ${text.length} whitespace character${text.length === 1 ? "" : "s"}`,
      "this response holds only whitespace"), document.createElement("br"));
  }
  let run = "";
  for (const ch of text) {
    if (!HIDDEN.test(ch) && ch !== "\r") { run += ch; continue; }
    if (run) { element.append(document.createTextNode(run)); run = ""; }
    element.append(marker(NAMED[ch] || codePoint(ch), codePoint(ch) + " (shown, not applied)"));
  }
  if (run) element.append(document.createTextNode(run));
}

// ---------------------------------------------------------------------------- safe Markdown
// Headings, paragraphs, lists, code blocks, **bold**, *italic*, `code` and http(s) links, built as DOM
// nodes: any HTML in the instructions shows as text.
const INLINE = /(`[^`]+`)|(\*\*[^*]+\*\*)|(\*[^*\s][^*]*\*|_[^_\s][^_]*_)|(\[[^\]]+\]\([^)\s]+\))/g;

function inline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    parent.append(document.createTextNode(text.slice(last, m.index)));
    const token = m[0];
    let node;
    if (m[1]) { node = document.createElement("code"); node.textContent = token.slice(1, -1); }
    else if (m[2]) { node = document.createElement("strong"); inline(node, token.slice(2, -2)); }
    else if (m[3]) { node = document.createElement("em"); inline(node, token.slice(1, -1)); }
    else {
      const [, label, url] = /^\[([^\]]+)\]\(([^)\s]+)\)$/.exec(token);
      if (/^https?:\/\//i.test(url)) {
        node = document.createElement("a");
        node.href = url;
        node.rel = "noopener noreferrer";
        node.target = "_blank";
        node.textContent = label;
      } else {
        node = document.createTextNode(token);
      }
    }
    parent.append(node);
    last = m.index + token.length;
  }
  parent.append(document.createTextNode(text.slice(last)));
}

function renderMarkdown(container, source) {
  container.replaceChildren();
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  let list = null, paragraph = null;
  const close = () => { list = null; paragraph = null; };
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n];
    if (/^```/.test(line)) {
      close();
      const pre = document.createElement("pre");
      const body = [];
      while (++n < lines.length && !/^```/.test(lines[n])) body.push(lines[n]);
      pre.textContent = body.join("\n");
      container.append(pre);
      continue;
    }
    const heading = /^(#{1,3})\s+(.*)$/.exec(line);
    const bullet = /^\s*[-*]\s+(.*)$/.exec(line);
    const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
    if (!line.trim()) { close(); continue; }
    if (heading) {
      close();
      const h = document.createElement("h" + (heading[1].length + 2));
      inline(h, heading[2]);
      container.append(h);
    } else if (bullet || numbered) {
      const tag = bullet ? "UL" : "OL";
      if (!list || list.tagName !== tag) { close(); list = document.createElement(tag); container.append(list); }
      const li = document.createElement("li");
      inline(li, (bullet || numbered)[1]);
      list.append(li);
    } else {
      list = null;
      if (!paragraph) { paragraph = document.createElement("p"); container.append(paragraph); }
      else paragraph.append(document.createElement("br"));
      inline(paragraph, line);
    }
  }
}

// -------------------------------------------------------------------------------------- sign in
async function signIn(token) {
  state.token = token.trim();
  try {
    const me = await api("GET", "/api/me");
    sessionStorage.setItem("feedback_lm_token", state.token);
    state.campaign = me.campaign;
    $("labeler-name").textContent = me.labeler;
    $("campaign-name").textContent = "· " + me.campaign.name;
    renderMarkdown($("instructions"), me.campaign.instructions);
    await busy(loadNext);
  } catch (error) {
    sessionStorage.removeItem("feedback_lm_token");
    show("signin");
    $("signin-error").textContent = error.status === 401 ? "That token is not valid." : error.message;
  }
}

function signOut() {
  sessionStorage.removeItem("feedback_lm_token");
  state.token = "";
  state.item = null;
  state.queue = [];
  $("token").value = "";
  show("signin");
}

// ---------------------------------------------------------------------------------------- items
function showProgress(p) {
  if (!p) return;
  const text = `You: ${p.done} of ${p.assigned} done` + (p.skipped ? ` · ${p.skipped} skipped` : "")
    + ` · Campaign: ${p.items_complete} of ${p.items} items complete`;
  $("progress").textContent = text;
  $("done-progress").textContent = text;
}

async function loadNext() {
  const next = await api("POST", "/api/next");
  showProgress(next.progress);
  state.editing = false;
  if (next.done) {
    state.item = null;
    show("done");
    return;
  }
  openItem(next, next.draft || {});
}

function openItem(item, saved) {
  state.item = item;
  state.draft = {
    key: saved.key || newKey(),
    best: Number.isInteger(saved.best) ? saved.best : null,
    ranks: saved.ranks || {},
    likert: saved.likert || {},
    flags: saved.flags || {},
    comments: saved.comments || {},
  };
  state.focus = 0;
  $("editing").hidden = !state.editing;
  show("work");
  render();
  window.scrollTo(0, 0);
}

// The last label, back on screen to be changed (until it is exported).
async function editLast() {
  const { last } = await api("GET", "/api/last");
  if (!last) {
    setStatus("Nothing to edit: you have no label yet, or your last one was exported.", "error");
    return;
  }
  clearTimeout(state.saveTimer);
  state.saveTimer = null;
  const label = last.label, ranks = {}, likert = {}, flags = {}, comments = {};
  let rank = 1;
  for (const entry of label.ranking) {
    const tier = Array.isArray(entry) ? entry : [entry];
    for (const pos of tier) ranks[pos] = rank;
    rank += tier.length;
  }
  last.responses.forEach((_, pos) => {
    if (label.likert) likert[pos] = label.likert[pos];
    flags[pos] = label.flags[pos];
    comments[pos] = label.comments[pos];
  });
  state.editing = true;
  openItem(last, { best: label.best, ranks: state.campaign.mode === "rank" ? ranks : {}, likert, flags, comments });
  setStatus("Editing your last label: change it and submit, or cancel.", "");
}

async function skip() {
  if (!state.item || state.editing) return;
  clearTimeout(state.saveTimer);
  state.saveTimer = null;
  await api("POST", `/api/assignments/${state.item.assignment_id}/skip`);
  setStatus("Skipped.", "ok");
  $("draft-status").textContent = "";
  await loadNext();
}

function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function button(text, pressed, onClick, className) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-pressed", pressed ? "true" : "false");
  if (className) b.className = className;
  b.addEventListener("click", onClick);
  return b;
}

function row(labelText, children) {
  const div = document.createElement("div");
  div.className = "row";
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = labelText;
  div.append(label, ...children);
  return div;
}

function span(text, className) {
  const s = document.createElement("span");
  s.className = className;
  s.textContent = text;
  return s;
}

function render() {
  const { item, draft, campaign } = state;
  const k = item.responses.length;
  // Keep where each long response was scrolled to: a rank key must not throw the reader back to the top.
  const scrolled = Array.from(document.querySelectorAll("#responses .response-text"), (el) => el.scrollTop);
  fillText($("prompt"), item.prompt);
  $("task-line").textContent = campaign.mode === "best"
    ? `Pick the best of the ${k} responses`
    : `Rank the ${k} responses (1 = best; give two responses the same rank for a tie)`;
  const cards = item.responses.map((text, pos) => {
    const card = document.createElement("div");
    card.className = "card" + (pos === state.focus ? " focused" : "")
      + ((campaign.mode === "best" ? draft.best === pos : draft.ranks[pos] === 1) ? " chosen" : "");
    card.dataset.position = pos;
    card.addEventListener("click", (e) => {
      if (state.focus !== pos && !["INPUT", "BUTTON"].includes(e.target.tagName)) { state.focus = pos; render(); }
    });
    const title = document.createElement("h3");
    title.textContent = "Response " + LETTERS[pos];
    const box = document.createElement("div");
    box.className = "text response-text";
    fillText(box, text);  // untrusted model output: text and markers only
    card.append(title, box);
    if (campaign.mode === "best") {
      card.append(row("Choice", [button(`Best (${pos + 1})`, draft.best === pos, () => change(() => { draft.best = pos; }), "best")]));
    } else {
      const ranks = [];
      for (let r = 1; r <= k; r++) {
        ranks.push(button(String(r), draft.ranks[pos] === r, () => change(() => { draft.ranks[pos] = r; }), "rank"));
      }
      card.append(row("Rank", ranks));
    }
    if (campaign.likert) {
      const [lo, hi] = campaign.likert_range;
      const scale = [span(`${lo} = ${LIKERT_ENDS[0]}`, "likert-end")];
      for (let v = lo; v <= hi; v++) {
        scale.push(button(String(v), draft.likert[pos] === v, () => change(() => { draft.likert[pos] = v; }), "likert"));
      }
      scale.push(span(`${hi} = ${LIKERT_ENDS[1]}`, "likert-end"));
      card.append(row("Overall quality", scale));
    }
    if (campaign.flags.length) {
      const on = draft.flags[pos] || [];
      card.append(row("Flags", campaign.flags.map((name, f) => button(
        name.replace(/_/g, " ") + (f < FLAG_KEYS.length ? ` (${FLAG_KEYS[f]})` : ""), on.includes(name),
        () => change(() => toggleFlag(pos, name)), "flag"))));
      for (const name of on) card.append(commentBox(pos, name));
    }
    return card;
  });
  $("responses").replaceChildren(...cards);
  document.querySelectorAll("#responses .response-text").forEach((el, pos) => {
    el.scrollTop = scrolled[pos] || 0;
    el.classList.toggle("long", el.scrollHeight > el.clientHeight + 1);
  });
  $("submit").disabled = state.busy || !complete();
  $("submit").textContent = state.editing ? "Save changes (Enter)" : "Submit (Enter)";
  $("skip").hidden = state.editing;
  $("hint").textContent = complete() ? "" : "To submit: " + missing().join(" and ") + ".";
}

function commentBox(pos, name) {
  const input = document.createElement("input");
  input.type = "text";
  input.className = "comment";
  input.maxLength = 2000;
  input.placeholder = `Why "${name.replace(/_/g, " ")}"? (optional)`;
  input.setAttribute("aria-label", `comment on flag ${name}, response ${LETTERS[pos]}`);
  input.value = ((state.draft.comments[pos] || {})[name]) || "";
  input.addEventListener("input", () => {
    state.draft.comments[pos] = { ...(state.draft.comments[pos] || {}), [name]: input.value };
    scheduleSave();
  });
  return input;
}

function missing() {
  const { item, draft, campaign } = state;
  const positions = item.responses.map((_, pos) => pos);
  const out = [];
  if (campaign.mode === "best" && draft.best === null) out.push("pick the best response");
  if (campaign.mode === "rank" && !positions.every((p) => draft.ranks[p] !== undefined)) out.push("rank every response");
  if (campaign.likert && !positions.every((p) => draft.likert[p] !== undefined)) out.push("rate every response");
  return out;
}

function toggleFlag(pos, name) {
  const on = state.draft.flags[pos] || [];
  state.draft.flags[pos] = on.includes(name) ? on.filter((n) => n !== name) : on.concat([name]);
}

function complete() {
  return missing().length === 0;
}

// -------------------------------------------------------------------------------------- drafts
function change(mutate) {
  mutate();
  render();
  scheduleSave();
}

function scheduleSave() {
  if (state.editing) return;  // an edit is not a lease: nothing to keep on the server until it is saved
  $("draft-status").textContent = "Saving draft…";
  clearTimeout(state.saveTimer);
  state.saveTimer = setTimeout(() => { state.saveTimer = null; saveDraft(false); }, 200);
}

// Leaving or reloading the page within the 200 ms: send the pending draft anyway.
function flushDraft() {
  if (state.saveTimer === null) return;
  clearTimeout(state.saveTimer);
  state.saveTimer = null;
  saveDraft(true);
}

async function saveDraft(keepalive) {
  const item = state.item;
  if (!item) return;
  try {
    await api("PUT", `/api/assignments/${item.assignment_id}/draft`, state.draft, keepalive);
    if (state.item === item) $("draft-status").textContent = "Draft saved";
  } catch (error) {
    if (state.item === item) $("draft-status").textContent = "Draft not saved: " + error.message;
  }
}

// -------------------------------------------------------------------------------------- submit
function payload() {
  const { item, draft, campaign } = state;
  const positions = item.responses.map((_, pos) => pos);
  const body = { idempotency_key: draft.key };
  if (campaign.mode === "best") {
    body.best = draft.best;
  } else {
    const tiers = new Map();
    for (const p of positions) {
      const r = draft.ranks[p];
      if (!tiers.has(r)) tiers.set(r, []);
      tiers.get(r).push(p);
    }
    body.ranking = [...tiers.keys()].sort((a, b) => a - b).map((r) => {
      const tier = tiers.get(r);
      return tier.length === 1 ? tier[0] : tier;
    });
  }
  if (campaign.likert) body.likert = positions.map((p) => draft.likert[p]);
  if (campaign.flags.length) {
    body.flags = positions.map((p) => draft.flags[p] || []);
    body.comments = positions.map((p) => Object.fromEntries(
      Object.entries(draft.comments[p] || {}).filter(([name]) => body.flags[p].includes(name))));
  }
  return body;
}

async function submit() {
  if (!state.item || !complete()) return;
  clearTimeout(state.saveTimer);
  state.saveTimer = null;
  const item = state.item;
  try {
    if (state.editing) {
      await api("PUT", `/api/assignments/${item.assignment_id}/label`, payload());
      setStatus("Changes saved.", "ok");
    } else {
      // A retry after a lost answer sends the same idempotency key, so the store keeps one label.
      const result = await api("POST", `/api/assignments/${item.assignment_id}/label`, payload());
      setStatus(result.late ? "Saved (your lease had run out; the label was kept)." : "Saved.", "ok");
    }
    $("draft-status").textContent = "";
    await loadNext();
  } catch (error) {
    setStatus("Not saved: " + error.message, "error");
  }
}

// One request at a time; keys typed meanwhile are queued and replayed on what comes next.
async function busy(action) {
  if (state.busy) return;
  state.busy = true;
  $("submit").disabled = true;
  try {
    await action();
  } catch (error) {
    setStatus(error.message, "error");
  } finally {
    state.busy = false;
    if (state.item && !$("work").hidden) $("submit").disabled = !complete();
  }
  while (!state.busy && state.queue.length) handleKey(state.queue.shift());
}

// ------------------------------------------------------------------------------------ keyboard
function onKey(event) {
  if (!state.item || $("work").hidden || ["INPUT", "TEXTAREA"].includes(event.target.tagName)) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = { key: event.key, code: event.code, shiftKey: event.shiftKey };
  if (state.busy) {
    state.queue.push(key);
    event.preventDefault();
  } else if (handleKey(key)) {
    event.preventDefault();
  }
}

function handleKey(event) {
  if (!state.item || $("work").hidden) return false;
  const k = state.item.responses.length;
  const focused = state.focus;
  const digit = /^Digit([1-9])$/.exec(event.code);
  if (event.key === "ArrowDown" || event.key === "j") {
    moveFocus((state.focus + 1) % k);
  } else if (event.key === "ArrowUp" || event.key === "k") {
    moveFocus((state.focus + k - 1) % k);
  } else if (digit && event.shiftKey) {
    const v = Number(digit[1]);
    const [lo, hi] = state.campaign.likert_range;
    if (state.campaign.likert && v >= lo && v <= hi) change(() => { state.draft.likert[focused] = v; });
  } else if (digit) {
    const n = Number(digit[1]);
    if (n > k) return true;
    if (state.campaign.mode === "best") {
      state.focus = n - 1;
      change(() => { state.draft.best = n - 1; });
    } else {
      change(() => { state.draft.ranks[focused] = n; state.focus = (state.focus + 1) % k; });
    }
  } else if (FLAG_KEYS.includes(event.key) && FLAG_KEYS.indexOf(event.key) < state.campaign.flags.length) {
    change(() => toggleFlag(focused, state.campaign.flags[FLAG_KEYS.indexOf(event.key)]));
  } else if (event.key === "Enter") {
    if (complete()) busy(submit);
  } else if (event.key === "s") {
    busy(skip);
  } else if (event.key === "b") {
    busy(editLast);
  } else if (event.key === "?") {
    $("help").open = !$("help").open;
  } else {
    return false;
  }
  return true;
}

function moveFocus(pos) {
  state.focus = pos;
  render();
  document.querySelectorAll("#responses .card")[pos].scrollIntoView({ block: "nearest" });
}

// ----------------------------------------------------------------------------------------- boot
document.addEventListener("DOMContentLoaded", () => {
  $("signin-btn").addEventListener("click", () => signIn($("token").value));
  $("token").addEventListener("keydown", (e) => { if (e.key === "Enter") signIn($("token").value); });
  $("signout").addEventListener("click", signOut);
  $("submit").addEventListener("click", () => busy(submit));
  $("skip").addEventListener("click", () => busy(skip));
  $("edit-last").addEventListener("click", () => busy(editLast));
  $("done-edit-last").addEventListener("click", () => busy(editLast));
  $("cancel-edit").addEventListener("click", () => { setStatus("", ""); busy(loadNext); });
  document.addEventListener("keydown", onKey);
  window.addEventListener("pagehide", flushDraft);
  if (state.token) signIn(state.token); else show("signin");
});
