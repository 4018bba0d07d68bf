"""Label quality: per-labeler agreement with gold items and with each other, and time per item.

Agreement between two labels of the same K responses is the fraction of the ``K(K-1)/2`` response
pairs on which they say the same thing: ``i`` better, ``j`` better, or a tie. It is 1 for identical
labels and works for best-of-K labels (read as ``[[best], [the others]]``) and rankings with ties
alike. Gold agreement compares a person's label with the gold item's known answer; peer agreement
compares it with every other person's label of the same item (each pair of people counted once per
item, for both of them).

That share is not corrected for chance, so :func:`chance_corrected` adds the field's statistics:

* Krippendorff's alpha, ordinal (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"),
  for rankings and Likert ratings: the units are (item, response) pairs, the values a response's rank
  (1 = best, ties share a rank) or its 1-7 rating. It allows any number of people per item and missing
  values. Computed with the ``krippendorff`` package.
* Fleiss' kappa (Fleiss 1971) for best-of-K: the categories are the responses, over the items that the
  most common number (>= 2) of people labeled; and Cohen's kappa (Cohen 1960) for each pair of people
  over the items both labeled, and for each person against the gold answers.

Each is 1 for perfect agreement, 0 at chance level, negative below it, and None where it is undefined
(fewer than two labels of one unit, or only one value ever used).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from itertools import combinations

from feedback_lm.errors import UserError

__all__ = ["agreement", "alpha_ordinal", "campaign_report", "chance_corrected", "cohen_kappa", "fleiss_kappa",
           "format_stats", "label_stats"]


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Pairwise agreement of two tier lists over the same responses (see the module docstring)."""
    ra = {i: t for t, tier in enumerate(a) for i in tier}
    rb = {i: t for t, tier in enumerate(b) for i in tier}
    pairs = list(combinations(sorted(ra), 2))
    if sorted(ra) != sorted(rb) or not pairs:
        raise ValueError(f"labels over different responses: {a} vs {b}")
    sign = lambda r, i, j: (r[i] > r[j]) - (r[i] < r[j])
    return sum(sign(ra, i, j) == sign(rb, i, j) for i, j in pairs) / len(pairs)


def ranks(tiers: list[list[int]]) -> dict[int, int]:
    """``{response index: rank}``, 1 = best, a tie shares one rank: ``[[2], [0, 3], [1]]`` -> ``{2: 1, 0: 2, 3: 2, 1: 3}``."""
    return {i: t + 1 for t, tier in enumerate(tiers) for i in tier}


def alpha_ordinal(values: dict[object, dict[str, float]]) -> float | None:
    """Krippendorff's alpha (ordinal) of ``{unit: {coder: value}}``; None where it is undefined."""
    try:
        import krippendorff
    except ImportError:
        raise UserError("Krippendorff's alpha needs the label extra: pip install 'feedback_lm[label]' "
                        "(the krippendorff package)") from None
    import numpy as np

    coders = sorted({c for by in values.values() for c in by})
    units = [u for u, by in values.items() if len(by) >= 2]  # a unit needs two values to be pairable
    if len(coders) < 2 or not units or len({v for u in units for v in values[u].values()}) < 2:
        return None
    data = np.full((len(coders), len(units)), np.nan)
    for j, unit in enumerate(units):
        for coder, value in values[unit].items():
            data[coders.index(coder), j] = value
    alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))
    return None if math.isnan(alpha) else round(alpha, 4)


def cohen_kappa(a: list, b: list) -> float | None:
    """Cohen's kappa of two people's categories for the same units; None if chance agreement is 1."""
    if len(a) != len(b) or not a:
        raise ValueError(f"cohen_kappa needs two equally long, non-empty lists, got {len(a)} and {len(b)}")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    chance = sum(ca[c] * cb[c] for c in ca) / n**2
    return None if chance == 1 else round((observed - chance) / (1 - chance), 4)


def fleiss_kappa(table: list[list[int]]) -> float | None:
    """Fleiss' kappa of an items x categories table of counts (every row sums to the same n >= 2)."""
    n = sum(table[0]) if table else 0
    if n < 2 or any(sum(row) != n for row in table):
        raise ValueError("fleiss_kappa needs the same number (>= 2) of ratings in every row")
    items = len(table)
    p_item = [(sum(c * c for c in row) - n) / (n * (n - 1)) for row in table]
    p_cat = [sum(row[j] for row in table) / (items * n) for j in range(len(table[0]))]
    observed, chance = statistics.fmean(p_item), sum(p * p for p in p_cat)
    return None if chance == 1 else round((observed - chance) / (1 - chance), 4)


def _per_response(labels_by_item: dict[int, dict[str, dict]], value_of) -> dict:
    """``{(item, response index): {labeler: value}}`` from ``value_of(row) -> {index: value}``."""
    out: dict = {}
    for item, labels in labels_by_item.items():
        for name, row in labels.items():
            for i, value in value_of(row).items():
                out.setdefault((item, i), {})[name] = value
    return out


def chance_corrected(rows: list[dict], mode: str) -> dict:
    """Chance-corrected agreement between people and with gold (see the module docstring).

    Returns:
        ``{"between": {...}, "pairs": [{"a", "b", "items", "kappa" | "alpha"}], "with_gold": {name: value}}``.
        ``between`` holds ``rank_alpha`` (rank mode) or ``best_fleiss_kappa`` and ``best_fleiss_items``
        (best mode), and ``likert_alpha`` when there are ratings. ``with_gold`` is each person's alpha
        (rank) or kappa (best) against the gold answers.
    """
    by_item: dict[int, dict[str, dict]] = {}
    for row in rows:
        by_item.setdefault(row["item_id"], {})[row["labeler"]] = row
    names = sorted({row["labeler"] for row in rows})
    between: dict = {}
    pairs, with_gold = [], {}
    if mode == "best":
        counts = Counter(len(labels) for labels in by_item.values() if len(labels) >= 2)
        m = max(counts, key=lambda c: (counts[c], c)) if counts else 0
        rated = [labels for labels in by_item.values() if len(labels) == m]
        k = max((len(r["responses"]) for labels in rated for r in labels.values()), default=0)
        table = [[sum(r["best"] == j for r in labels.values()) for j in range(k)] for labels in rated]
        between["best_fleiss_kappa"] = fleiss_kappa(table) if table else None
        between["best_fleiss_items"] = len(table)
        for a, b in combinations(names, 2):
            both = [labels for labels in by_item.values() if a in labels and b in labels]
            if both:
                pairs.append({"a": a, "b": b, "items": len(both),
                              "kappa": cohen_kappa([x[a]["best"] for x in both], [x[b]["best"] for x in both])})
        for name in names:
            gold = [(r["best"], r["gold"][0][0]) for r in rows
                    if r["labeler"] == name and r["gold"] and len(r["gold"][0]) == 1]
            with_gold[name] = cohen_kappa([g[0] for g in gold], [g[1] for g in gold]) if gold else None
    else:
        values = _per_response(by_item, lambda r: ranks(r["tiers"]))
        between["rank_alpha"] = alpha_ordinal(values)
        for a, b in combinations(names, 2):
            shared = {u: {c: by[c] for c in (a, b)} for u, by in values.items() if a in by and b in by}
            if shared:
                pairs.append({"a": a, "b": b, "items": len({u[0] for u in shared}), "alpha": alpha_ordinal(shared)})
        for name in names:
            mine = {r["item_id"]: {"person": r, "gold": {**r, "tiers": r["gold"]}}
                    for r in rows if r["labeler"] == name and r["gold"]}
            with_gold[name] = alpha_ordinal(_per_response(mine, lambda r: ranks(r["tiers"]))) if mine else None
    if any(row["likert"] for row in rows):
        between["likert_alpha"] = alpha_ordinal(_per_response(by_item, lambda r: dict(enumerate(r["likert"] or []))))
    return {"between": between, "pairs": pairs, "with_gold": with_gold}


def label_stats(rows: list[dict], counts: dict | None = None, mode: str | None = None) -> dict:
    """Per-labeler quality numbers from :meth:`Store.labeled_rows`.

    Returns:
        ``{"campaign": counts, "labelers": {name: {"labels", "late", "seconds_mean", "seconds_median",
        "gold_items", "gold_agreement", "peer_items", "peer_agreement", "flagged_responses",
        "likert_mean"}}}``; agreements and means are None where there is nothing to average. With the
        campaign's ``mode``, also ``"chance_corrected"``: :func:`chance_corrected`.
    """
    per: dict[str, dict] = {}
    by_item: dict[int, list[dict]] = {}
    for row in rows:
        by_item.setdefault(row["item_id"], []).append(row)
        s = per.setdefault(row["labeler"], {"seconds": [], "gold": [], "peer": [], "late": 0, "flags": 0,
                                            "likert": []})
        s["seconds"].append(row["seconds"])
        s["late"] += row["late"]
        s["flags"] += sum(bool(f) for f in row["flags"])
        s["likert"].extend(row["likert"] or [])
        if row["gold"] is not None:
            s["gold"].append(agreement(row["tiers"], row["gold"]))
    for labels in by_item.values():
        for x, y in combinations(labels, 2):
            value = agreement(x["tiers"], y["tiers"])
            per[x["labeler"]]["peer"].append(value)
            per[y["labeler"]]["peer"].append(value)
    mean = lambda v: round(statistics.fmean(v), 4) if v else None
    labelers = {
        name: {"labels": len(s["seconds"]), "late": s["late"], "seconds_mean": mean(s["seconds"]),
               "seconds_median": round(statistics.median(s["seconds"]), 4),
               "gold_items": len(s["gold"]), "gold_agreement": mean(s["gold"]),
               "peer_items": len(s["peer"]), "peer_agreement": mean(s["peer"]),
               "flagged_responses": s["flags"], "likert_mean": mean(s["likert"])}
        for name, s in sorted(per.items())
    }
    result = {"campaign": counts or {}, "labelers": labelers}
    if mode is not None:
        result["chance_corrected"] = chance_corrected(rows, mode)
    return result


def campaign_report(store) -> dict:
    """The researcher's page: :func:`label_stats` with chance-corrected agreement, plus every person's
    progress (``active``, ``skipped``, ``holding``) and time and label count per item."""
    rows = store.labeled_rows()
    report = label_stats(rows, store.counts(), store.config.mode)
    report["mode"], report["overlap"] = store.config.mode, store.config.overlap
    report["people"] = [{**person, **report["labelers"].get(person["name"], {"labels": 0})}
                        for person in store.labelers()]
    skips = store.skips()
    per_item: dict[int, list[dict]] = {}
    for row in rows:
        per_item.setdefault(row["item_id"], []).append(row)
    report["items"] = [{"item": item, "gold": labels[0]["gold"] is not None, "labels": len(labels),
                        "skipped": len(skips.get(item, [])),
                        "seconds_median": round(statistics.median(r["seconds"] for r in labels), 2)}
                       for item, labels in sorted(per_item.items())]
    return report


def format_stats(stats: dict) -> str:
    """A plain-text table of :func:`label_stats` for the terminal."""
    c = stats["campaign"]
    lines = [", ".join(f"{k}: {v}" for k, v in c.items())] if c else []
    head = ("labeler", "labels", "late", "sec/item", "gold n", "gold agr", "peer n", "peer agr", "flagged")
    table = [head]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)
    for name, s in stats["labelers"].items():
        table.append((name, str(s["labels"]), str(s["late"]), fmt(s["seconds_median"], ".1f"),
                      str(s["gold_items"]), fmt(s["gold_agreement"], ".2f"), str(s["peer_items"]),
                      fmt(s["peer_agreement"], ".2f"), str(s["flagged_responses"])))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in table]
    if not stats["labelers"]:
        lines.append("(no labels yet)")
    corrected = stats.get("chance_corrected")
    if corrected:
        lines.append("chance-corrected: " + ", ".join(f"{k} {v if isinstance(v, int) else fmt(v, '.3f')}"
                                                      for k, v in corrected["between"].items()))
        gold = {n: v for n, v in corrected["with_gold"].items() if v is not None}
        if gold:
            lines.append("with gold: " + ", ".join(f"{n} {v:.3f}" for n, v in gold.items()))
    return "\n".join(lines)
