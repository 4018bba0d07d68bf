"""People as judges: pairwise campaigns between two runs and the human win rate (InstructGPT §4.1).

:func:`pairwise_items` turns two runs' responses to the same prompts into K = 2 items, the two responses in
a random order per item (seeded), with the run behind each response in ``meta["pairwise"]``. People label
them in the ordinary app (``rank`` mode: one better, or a tie). :func:`human_win_rates` reads the labels
back: per item, 1 when the run's response is ranked above the baseline's, 0 below, 0.5 for a tie, averaged
over the item's labels; the win rate is the mean over items with a 95 % bootstrap interval over items.
``python -m feedback_lm.evaluate ... --campaign DIR`` creates such a campaign and ``python -m
feedback_lm.label stats DIR`` prints the win rates.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from feedback_lm.errors import UserError

__all__ = ["check_campaign_target", "create_pairwise_campaign", "format_win_rates", "human_win_rates", "pairwise_items"]


def pairwise_items(prompts: Sequence[str], responses: Sequence[str], baseline_responses: Sequence[str],
                   run: str, baseline: str, seed: int = 0) -> list[dict]:
    """K = 2 items ``{"prompt", "responses", "meta": {"pairwise": {"runs": [...], "baseline"}, "index"}}``:
    ``meta["pairwise"]["runs"][i]`` names the run that wrote ``responses[i]``; the order is random per item."""
    if not (len(prompts) == len(responses) == len(baseline_responses)):
        raise UserError(f"pairwise items need one response of each run per prompt: {len(prompts)} prompts, "
                        f"{len(responses)} and {len(baseline_responses)} responses")
    rng = random.Random(seed)
    items = []
    for i, (prompt, a, b) in enumerate(zip(prompts, responses, baseline_responses)):
        pair = [(run, a), (baseline, b)]
        rng.shuffle(pair)
        items.append({"prompt": prompt, "responses": [t for _, t in pair],
                      "meta": {"pairwise": {"runs": [n for n, _ in pair], "baseline": baseline}, "index": i}})
    return items


def check_campaign_target(directory: str | Path, num_runs: int) -> None:
    """Refuse, before anything is generated, a directory that holds a campaign already or a single run."""
    from feedback_lm.label.store import CAMPAIGN_FILE

    if (Path(directory) / CAMPAIGN_FILE).exists():
        raise UserError(f"--campaign {directory} already holds a campaign ({CAMPAIGN_FILE}); pick a new directory")
    if num_runs < 2:
        raise UserError("--campaign needs at least one run besides the baseline")


def create_pairwise_campaign(directory: str | Path, prompts: Sequence[str], responses: Mapping[str, Sequence[str]],
                             baseline: str, seed: int = 0, overlap: int = 1, source: dict | None = None) -> int:
    """A ``rank``-mode campaign in ``directory`` with one K = 2 item per prompt and run other than ``baseline``
    (that run's response against the baseline's). Returns the number of items."""
    from feedback_lm.label.config import CampaignConfig
    from feedback_lm.label.store import CAMPAIGN_FILE, SQLITE_FILE, Store

    directory = Path(directory)
    check_campaign_target(directory, len(responses))
    items = [item for k, (name, texts) in enumerate(responses.items()) if name != baseline
             for item in pairwise_items(prompts, texts, responses[baseline], name, baseline, seed + k)]
    config = CampaignConfig(mode="rank", overlap=overlap, source={**(source or {}), "pairwise_baseline": baseline},
                            instructions="Which response is better? Rank the better one first; equal ranks for a tie.")
    directory.mkdir(parents=True, exist_ok=True)
    store = Store.create(str(directory / SQLITE_FILE), directory.resolve().name, config)
    store.add_items(items)
    store.close()
    (directory / CAMPAIGN_FILE).write_text(json.dumps({"name": directory.resolve().name, "db": None}, indent=2) + "\n")
    print(f"pairwise campaign in {directory}: {len(items)} items (K=2, random order); next: "
          f"python -m feedback_lm.label add-labeler {directory} NAME")
    return len(items)


def human_win_rates(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Per run: ``{"baseline", "win_rate": {"value", "ci", "n"}, "labels"}`` from the labels of pairwise
    items (rows of ``Store.labeled_rows``; other items are ignored). ``n`` counts labeled items."""
    from feedback_lm.evaluation import mean_estimate

    per_item: dict[tuple[str, str], dict[int, list[float]]] = {}
    for row in rows:
        pair = (row.get("meta") or {}).get("pairwise")
        if not pair:
            continue
        tier = {i: t for t, members in enumerate(row["tiers"]) for i in members}
        run_index = next(i for i, n in enumerate(pair["runs"]) if n != pair["baseline"])
        base_index = 1 - run_index
        outcome = 0.5 if tier[run_index] == tier[base_index] else float(tier[run_index] < tier[base_index])
        per_item.setdefault((pair["runs"][run_index], pair["baseline"]), {}).setdefault(row["item_id"], []).append(outcome)
    return {run: {"baseline": baseline, "labels": sum(len(v) for v in items.values()),
                  "win_rate": mean_estimate([sum(v) / len(v) for v in items.values()], n_boot=n_boot, seed=seed)}
            for (run, baseline), items in sorted(per_item.items())}


def format_win_rates(rates: Mapping[str, dict]) -> str:
    """Lines ``human win rate of RUN against BASELINE: 0.62 [0.51, 0.72] (40 items, 80 labels)``."""
    return "\n".join(f"human win rate of {run} against {r['baseline']}: {r['win_rate']['value']:.3f} "
                     f"[{r['win_rate']['ci'][0]:.3f}, {r['win_rate']['ci'][1]:.3f}] "
                     f"({r['win_rate']['n']} items, {r['labels']} labels; ties count half)"
                     for run, r in rates.items())
