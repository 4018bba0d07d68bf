"""Shared scaffolding of the benchmarks that drive the real CLI: run ``python train.py ...`` into a run
directory (in parallel, bounded in time) and read its metrics.csv back as curves."""
from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[1]


def run_train(overrides: list[str], run_dir: Path, threads: int = 1, timeout: float | None = None) -> dict:
    """``python train.py <overrides> hydra.run.dir=<run_dir>``, output in ``run_dir/bench.log``.

    Returns ``{"rc", "wall_seconds", "command"}``; ``rc`` is ``"timeout"`` when stopped at ``timeout``
    seconds (what it logged so far stays on disk: pass ``+logger.csv.flush_logs_every_n_steps=1`` to keep
    every step)."""
    cmd = [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    run_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(run_dir / "bench.log", "w") as log:
        try:
            rc: int | str = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t
    if rc not in (0, "timeout"):
        print(f"{run_dir.name}: failed rc={rc}; the end of {run_dir / 'bench.log'}:\n"
              + "".join((run_dir / "bench.log").read_text().splitlines(keepends=True)[-15:]), flush=True)
    return {"rc": rc, "wall_seconds": round(wall, 1), "command": shlex.join(cmd)}


def read_curves(metrics_csv: Path, keys: Iterable[str], last_step: int) -> dict[str, list[tuple[int, float]]]:
    """(training steps done, value) per metric from Lightning's metrics.csv.

    Training rows carry their step's index (0-based). Lightning logs a validation run inside training under
    the index of the step just finished (after 5 steps: step 4), so those become step + 1; the first
    validation row is the "before" evaluation (0 done) and the one at ``last_step`` the final one.
    """
    curves: dict[str, dict[int, float]] = {k: {} for k in keys}
    seen_validation = False
    if metrics_csv.is_file():
        with open(metrics_csv) as f:
            for row in csv.DictReader(f):
                step = int(row["step"])
                if any(k.startswith("val/") and v not in (None, "") for k, v in row.items()):  # a validation row
                    if seen_validation and step < last_step:
                        step += 1
                    seen_validation = True
                for k in curves:
                    if row.get(k) not in (None, ""):
                        curves[k][step] = float(row[k])
    return {k: sorted(v.items()) for k, v in curves.items()}
