"""Shared scaffolding of the benchmarks that drive the real CLI: run ``python train.py ...`` into a run
directory (in parallel, bounded in time) and read its metrics.csv back as curves."""
from __future__ import annotations

import concurrent.futures as cf
import csv
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_TRAINER = ["trainer=gpu", "trainer.precision=32-true"]  # every run on the GPU, fp32 as on the CPU


def run_train(overrides: list[str], run_dir: Path, threads: int | None = 1, timeout: float | None = None,
              log: Path | None = None, reuse: bool = False) -> dict:
    """``python train.py <overrides> hydra.run.dir=<run_dir>``, its output in ``log`` (default
    ``run_dir/bench.log``); ``threads`` sets OMP/MKL threads (None: inherit the environment's).

    Returns ``{"rc", "wall_seconds", "command"}``; ``rc`` is ``"timeout"`` when stopped at ``timeout``
    seconds (what it logged so far stays on disk: pass ``+logger.csv.flush_logs_every_n_steps=1`` to keep
    every step). With ``reuse``, a run that finished earlier in ``run_dir`` (its metrics.json exists) is read
    back instead of run again (``wall_seconds`` None)."""
    if reuse and (run_dir / "metrics.json").is_file():
        return {"rc": 0, "wall_seconds": None, "command": f"reused {run_dir}"}
    cmd = [sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    run_dir.mkdir(parents=True, exist_ok=True)
    log = log or run_dir / "bench.log"
    t = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc: int | str = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                           timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t
    if rc not in (0, "timeout"):
        print(f"{run_dir.name}: failed rc={rc}; the end of {log}:\n"
              + "".join(log.read_text().splitlines(keepends=True)[-15:]), flush=True)
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
                for k, series in curves.items():
                    if row.get(k) not in (None, ""):
                        series[step] = float(row[k])
    return {k: sorted(v.items()) for k, v in curves.items()}


def run_jobs(run: Callable, jobs: list[tuple], parallel: int) -> list:
    """``run(*job)`` for every job, ``parallel`` at once (threads: each job is a ``train.py`` subprocess)."""
    with cf.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(lambda job: run(*job), jobs))


def finish(result: dict, started: float, json_path: str | None, plot_path: str | None,
           plot: Callable[[list, Path], None]) -> dict:
    """Add the wall time and the machine to ``result``; write it to ``json_path`` and its runs' plot."""
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["machine"] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                         "platform": platform.platform(), "cpu_count": os.cpu_count()}
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    if plot_path:
        plot(result["runs"], Path(plot_path))
    return result
