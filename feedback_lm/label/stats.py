"""Label quality: per-labeler agreement with gold items and with each other, and time per item.

Agreement between two labels of the same K responses is the fraction of the ``K(K-1)/2`` response
pairs on which they say the same thing: ``i`` better, ``j`` better, or a tie. It is 1 for identical
labels and works for best-of-K labels (read as ``[[best], [the others]]``) and rankings with ties
alike. Gold agreement compares a person's label with the gold item's known answer; peer agreement
compares it with every other person's label of the same item (each pair of people counted once per
item, for both of them).
"""

from __future__ import annotations

import statistics
from itertools import combinations

__all__ = ["agreement", "format_stats", "label_stats"]


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Pairwise agreement of two tier lists over the same responses (see the module docstring)."""
    ra = {i: t for t, tier in enumerate(a) for i in tier}
    rb = {i: t for t, tier in enumerate(b) for i in tier}
    pairs = list(combinations(sorted(ra), 2))
    if sorted(ra) != sorted(rb) or not pairs:
        raise ValueError(f"labels over different responses: {a} vs {b}")
    sign = lambda r, i, j: (r[i] > r[j]) - (r[i] < r[j])
    return sum(sign(ra, i, j) == sign(rb, i, j) for i, j in pairs) / len(pairs)


def label_stats(rows: list[dict], counts: dict | None = None) -> dict:
    """Per-labeler quality numbers from :meth:`Store.labeled_rows`.

    Returns:
        ``{"campaign": counts, "labelers": {name: {"labels", "late", "seconds_mean", "seconds_median",
        "gold_items", "gold_agreement", "peer_items", "peer_agreement", "flagged_responses",
        "likert_mean"}}}``; agreements and means are None where there is nothing to average.
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
    return {"campaign": counts or {}, "labelers": labelers}


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
    return "\n".join(lines)
