"""Plots of the curves that matter, saved as PNG next to the run's metrics."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

# Shown first when present; everything else logged under these prefixes follows.
PREFERRED = ("train/loss", "val/accuracy", "val/loss", "rollout/score_mean", "ppo/kl", "ppo/kl_coef")
PREFIXES = ("train/", "val/", "rollout/", "ppo/", "hir/", "rm/", "self_correct/")


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Lightning CSVLogger ``metrics.csv`` -> ``{key: [(step, value), ...]}`` (empty cells skipped)."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = float(row.get("step") or 0)
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                try:
                    series[key].append((step, float(value)))
                except ValueError:
                    continue
    return dict(series)


def plot_metrics_csv(path: str | Path, out: str | Path, keys: list[str] | None = None, max_panels: int = 9) -> Path | None:
    """One panel per metric (train loss, val accuracy, reward, KL, ...) in a single PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics_csv(path)
    if keys is None:
        keys = [k for k in PREFERRED if k in series]
        keys += sorted(k for k in series if k not in keys and k.startswith(PREFIXES) and k != "train/tokens")
    keys = [k for k in keys if series.get(k)][:max_panels]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        steps, values = zip(*series[key])
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def plot_comparison(runs: dict[str, str | Path], out: str | Path, keys: list[str]) -> Path | None:
    """Overlay the same metrics of several runs (e.g. PPO with and without the KL penalty): one panel per
    key, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {name: read_metrics_csv(path) for name, path in runs.items() if Path(path).is_file()}
    keys = [k for k in keys if any(s.get(k) for s in series.values())]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, s in series.items():
            if s.get(key):
                steps, values = zip(*s[key])
                ax.plot(steps, values, label=name, marker="o" if len(steps) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
