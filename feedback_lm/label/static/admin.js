// The researcher's page: progress per person, time per item, agreement. Text only (textContent).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "feedback_lm_admin_token";
let token = sessionStorage.getItem(KEY) || "";

const fmt = (v, digits) => (v === null || v === undefined ? "-" : typeof v === "number" && digits !== undefined
  ? v.toFixed(digits) : String(v));

function table(element, head, rows) {
  const tr = (cells, tag) => {
    const row = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement(tag);
      td.textContent = cell;
      row.append(td);
    }
    return row;
  };
  element.replaceChildren(tr(head, "th"), ...rows.map((r) => tr(r, "td")));
}

function show(section) {
  $("signin").hidden = section !== "signin";
  $("report").hidden = section !== "report";
  $("who").hidden = section !== "report";
}

async function load() {
  const response = await fetch("/api/admin/stats", { headers: { Authorization: "Bearer " + token } });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.detail || String(response.status));
    error.status = response.status;
    throw error;
  }
  return data;
}

function render(r) {
  const c = r.campaign, cc = r.chance_corrected;
  $("campaign-name").textContent = "· " + r.mode + ", overlap " + r.overlap;
  $("summary").textContent = `${c.items_complete} of ${c.items - c.gold_items} items complete · ${c.labels} labels`
    + ` · ${c.gold_items} gold items · ${c.active_leases} held now · ${c.skips} skips`;
  const names = { rank_alpha: "ranks: Krippendorff's alpha (ordinal)", likert_alpha: "1-7 ratings: Krippendorff's alpha (ordinal)",
                  best_fleiss_kappa: "best pick: Fleiss' kappa", best_fleiss_items: "items in Fleiss' kappa" };
  $("between").textContent = Object.entries(cc.between).map(([k, v]) => `${names[k] || k}: ${fmt(v, Number.isInteger(v) ? undefined : 3)}`).join(" · ");
  const stat = r.mode === "best" ? "kappa" : "alpha";
  table($("pairs"), ["person", "person", "shared items", stat === "kappa" ? "Cohen's kappa" : "alpha (ordinal)"],
    cc.pairs.map((p) => [p.a, p.b, fmt(p.items), fmt(p[stat], 3)]));
  table($("people"), ["person", "token", "labels", "skipped", "holding", "sec/item (median)", "sec/item (mean)",
    "gold items", `gold ${stat}`, "gold agreement", "peer agreement", "late", "flagged"],
  r.people.map((p) => [p.name, p.active ? "active" : "revoked", fmt(p.labels), fmt(p.skipped), fmt(p.holding),
    fmt(p.seconds_median, 1), fmt(p.seconds_mean, 1), fmt(p.gold_items), fmt(cc.with_gold[p.name], 3),
    fmt(p.gold_agreement, 2), fmt(p.peer_agreement, 2), fmt(p.late), fmt(p.flagged_responses)]));
  table($("items"), ["item", "gold", "labels", "skipped", "sec (median)"],
    r.items.map((i) => [fmt(i.item), i.gold ? "gold" : "", fmt(i.labels), fmt(i.skipped), fmt(i.seconds_median, 1)]));
}

async function signIn(value) {
  token = value.trim();
  try {
    render(await load());
    sessionStorage.setItem(KEY, token);
    show("report");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    show("signin");
    $("signin-error").textContent = error.status === 401 ? "That is not this campaign's admin token." : error.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-btn").addEventListener("click", () => signIn($("token").value));
  $("token").addEventListener("keydown", (e) => { if (e.key === "Enter") signIn($("token").value); });
  $("refresh").addEventListener("click", () => signIn(token));
  $("signout").addEventListener("click", () => { sessionStorage.removeItem(KEY); token = ""; show("signin"); });
  if (token) signIn(token); else show("signin");
});
