// feedback_lm labeling page: plain JavaScript, no build step.
// Model output is untrusted: every text from the server goes in with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const FLAG_KEYS = "qwert";

const state = {
  token: sessionStorage.getItem("feedback_lm_token") || "",
  campaign: null,   // {name, mode, likert, likert_range, flags, instructions}
  item: null,       // {assignment_id, prompt, responses: [{index, text}], draft}
  draft: null,      // {key, best, ranks: {index: rank}, likert: {index: 1..7}, flags: {index: [names]}}
  focus: 0,         // display position of the selected response
  submitting: false,
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

// -------------------------------------------------------------------------------------- sign in
async function signIn(token) {
  state.token = token.trim();
  try {
    const me = await api("GET", "/api/me");
    sessionStorage.setItem("feedback_lm_token", state.token);
    state.campaign = me.campaign;
    $("labeler-name").textContent = me.labeler;
    $("campaign-name").textContent = "· " + me.campaign.name;
    $("instructions").textContent = me.campaign.instructions;
    await loadNext();
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
  $("token").value = "";
  show("signin");
}

// ---------------------------------------------------------------------------------------- items
async function loadNext() {
  const next = await api("POST", "/api/next");
  if (next.done) {
    state.item = null;
    show("done");
    return;
  }
  state.item = next;
  const saved = next.draft || {};
  state.draft = {
    key: saved.key || newKey(),
    best: Number.isInteger(saved.best) ? saved.best : null,
    ranks: saved.ranks || {},
    likert: saved.likert || {},
    flags: saved.flags || {},
  };
  state.focus = 0;
  show("work");
  render();
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

function render() {
  const { item, draft, campaign } = state;
  const k = item.responses.length;
  $("prompt").textContent = item.prompt;
  $("task-line").textContent = campaign.mode === "best"
    ? `Pick the best of the ${k} responses`
    : `Rank the ${k} responses (1 = best; give two responses the same rank for a tie)`;
  const cards = item.responses.map((response, pos) => {
    const i = response.index;
    const card = document.createElement("div");
    card.className = "card" + (pos === state.focus ? " focused" : "")
      + ((campaign.mode === "best" ? draft.best === i : draft.ranks[i] === 1) ? " chosen" : "");
    card.dataset.index = i;
    card.dataset.position = pos;
    card.addEventListener("click", () => { if (state.focus !== pos) { state.focus = pos; render(); } });
    const title = document.createElement("h3");
    title.textContent = "Response " + LETTERS[pos];
    const text = document.createElement("div");
    text.className = "text response-text";
    text.textContent = response.text;  // untrusted model output: text only
    card.append(title, text);
    if (campaign.mode === "best") {
      card.append(row("Choice", [button(`Best (${pos + 1})`, draft.best === i, () => change(() => { draft.best = i; }), "best")]));
    } else {
      const ranks = [];
      for (let r = 1; r <= k; r++) {
        ranks.push(button(String(r), draft.ranks[i] === r, () => change(() => { draft.ranks[i] = r; }), "rank"));
      }
      card.append(row("Rank", ranks));
    }
    if (campaign.likert) {
      const [lo, hi] = campaign.likert_range;
      const stars = [];
      for (let v = lo; v <= hi; v++) {
        stars.push(button(String(v), draft.likert[i] === v, () => change(() => { draft.likert[i] = v; }), "likert"));
      }
      card.append(row("Quality", stars));
    }
    if (campaign.flags.length) {
      const on = draft.flags[i] || [];
      card.append(row("Flags", campaign.flags.map((name, f) => button(
        name.replace(/_/g, " ") + (f < FLAG_KEYS.length ? ` (${FLAG_KEYS[f]})` : ""), on.includes(name),
        () => change(() => toggleFlag(i, name)), "flag"))));
    }
    return card;
  });
  $("responses").replaceChildren(...cards);
  $("submit").disabled = state.submitting || !complete();
  $("hint").textContent = complete() ? "" : "To submit: " + missing().join(" and ") + ".";
}

function missing() {
  const { item, draft, campaign } = state;
  const indices = item.responses.map((r) => r.index);
  const out = [];
  if (campaign.mode === "best" && draft.best === null) out.push("pick the best response");
  if (campaign.mode === "rank" && !indices.every((i) => draft.ranks[i] !== undefined)) out.push("rank every response");
  if (campaign.likert && !indices.every((i) => draft.likert[i] !== undefined)) out.push("rate every response");
  return out;
}

function toggleFlag(i, name) {
  const on = state.draft.flags[i] || [];
  state.draft.flags[i] = on.includes(name) ? on.filter((n) => n !== name) : on.concat([name]);
}

function complete() {
  return missing().length === 0;
}

// -------------------------------------------------------------------------------------- drafts
function change(mutate) {
  mutate();
  render();
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
  const indices = item.responses.map((r) => r.index).sort((a, b) => a - b);
  const body = { idempotency_key: draft.key };
  if (campaign.mode === "best") {
    body.best = draft.best;
  } else {
    const tiers = new Map();
    for (const i of indices) {
      const r = draft.ranks[i];
      if (!tiers.has(r)) tiers.set(r, []);
      tiers.get(r).push(i);
    }
    body.ranking = [...tiers.keys()].sort((a, b) => a - b).map((r) => {
      const tier = tiers.get(r);
      return tier.length === 1 ? tier[0] : tier;
    });
  }
  if (campaign.likert) body.likert = indices.map((i) => draft.likert[i]);
  if (campaign.flags.length) body.flags = indices.map((i) => draft.flags[i] || []);
  return body;
}

async function submit() {
  if (state.submitting || !state.item || !complete()) return;
  state.submitting = true;
  $("submit").disabled = true;
  clearTimeout(state.saveTimer);
  state.saveTimer = null;
  const item = state.item;
  try {
    // A retry after a lost answer sends the same idempotency key, so the store keeps one label.
    const result = await api("POST", `/api/assignments/${item.assignment_id}/label`, payload());
    setStatus(result.late ? "Saved (your lease had run out; the label was kept)." : "Saved.", "ok");
    $("draft-status").textContent = "";
    await loadNext();
  } catch (error) {
    setStatus("Not saved: " + error.message, "error");
  } finally {
    state.submitting = false;
    if (state.item) $("submit").disabled = !complete();
  }
}

// ------------------------------------------------------------------------------------ keyboard
function onKey(event) {
  if (!state.item || $("work").hidden || event.target.tagName === "INPUT") return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const k = state.item.responses.length;
  const focused = state.item.responses[state.focus].index;
  const digit = /^Digit([1-9])$/.exec(event.code);
  if (event.key === "ArrowDown" || event.key === "j") {
    state.focus = (state.focus + 1) % k;
    render();
  } else if (event.key === "ArrowUp" || event.key === "k") {
    state.focus = (state.focus + k - 1) % k;
    render();
  } else if (digit && event.shiftKey) {
    const v = Number(digit[1]);
    const [lo, hi] = state.campaign.likert_range;
    if (state.campaign.likert && v >= lo && v <= hi) change(() => { state.draft.likert[focused] = v; });
  } else if (digit) {
    const n = Number(digit[1]);
    if (n > k) return;
    if (state.campaign.mode === "best") {
      state.focus = n - 1;
      change(() => { state.draft.best = state.item.responses[n - 1].index; });
    } else {
      change(() => { state.draft.ranks[focused] = n; state.focus = (state.focus + 1) % k; });
    }
  } else if (FLAG_KEYS.includes(event.key) && FLAG_KEYS.indexOf(event.key) < state.campaign.flags.length) {
    change(() => toggleFlag(focused, state.campaign.flags[FLAG_KEYS.indexOf(event.key)]));
  } else if (event.key === "Enter") {
    submit();
  } else if (event.key === "?") {
    $("help").open = !$("help").open;
  } else {
    return;
  }
  event.preventDefault();
}

// ----------------------------------------------------------------------------------------- boot
document.addEventListener("DOMContentLoaded", () => {
  $("signin-btn").addEventListener("click", () => signIn($("token").value));
  $("token").addEventListener("keydown", (e) => { if (e.key === "Enter") signIn($("token").value); });
  $("signout").addEventListener("click", signOut);
  $("submit").addEventListener("click", submit);
  document.addEventListener("keydown", onKey);
  window.addEventListener("pagehide", flushDraft);
  if (state.token) signIn(state.token); else show("signin");
});
