"""Resume through the real command line loses nothing: a run stopped mid-epoch and resumed with
``ckpt_path=.../last.ckpt`` in the same run directory matches an uninterrupted run of the same seed
step for step, and its ``metrics.csv`` keeps the rows logged before the checkpoint with no duplicates."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

# 16 batches per epoch, checkpoints every 3 steps: every resume point below is mid-epoch.
QUICK = ["data.num_train=64", "data.num_val=8", "data.batch_size=4", "data.eval_batch_size=8", "algo.max_new_tokens=8",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
         "trainer.val_check_interval=4", "eval_before=false", "save_model=false", "checkpoint_every_n_steps=3",
         "seed=5"]


def train(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *QUICK, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"


def losses(run: Path) -> list[tuple[int, float]]:
    with open(run / "metrics.csv") as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    from feedback_lm.checkpoint import load_checkpoint

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    # the killed run and the whole one are given different max_steps: a learning rate that does not depend
    # on it (warmup, then constant; cosine would decay by the total) keeps them the same run step for step
    schedule = "algo.schedule=constant"
    # kill -9 once the step-6 checkpoint is written: the batch after a save flushes the rows it covers
    proc = train("trainer.max_steps=10000", schedule, f"hydra.run.dir={parts}", cwd=tmp_path)
    ckpt = parts / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and any(step >= 5 for step, _ in _rows_so_far(parts)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "killed mid-run"
    (ckpt.parent / ".last.ckpt.killed.tmp").write_bytes(b"half a save")  # what a kill mid-save leaves
    # a fast machine can run a few checkpoints further before the kill lands: resume at least 4 steps
    # past the newest checkpoint, and compare with an uninterrupted run of that length
    saved = load_checkpoint(ckpt, "ckpt")["global_step"]
    assert saved >= 6 and saved % 3 == 0, saved
    steps = max(10, saved + 4)

    finish(train(f"trainer.max_steps={steps}", schedule, f"hydra.run.dir={whole}", cwd=tmp_path))
    finish(train(f"trainer.max_steps={steps}", schedule, f"ckpt_path={ckpt}", f"hydra.run.dir={parts}", cwd=tmp_path))
    resumed, reference = losses(parts), losses(whole)
    assert [s for s, _ in resumed] == list(range(steps)), "every step once: none lost, none duplicated"
    assert resumed == pytest.approx(reference, abs=1e-5), "the resumed run continues the same data order"
    assert not list(ckpt.parent.glob(".*.tmp")), "the killed save's temporary file is removed"
    metrics = json.loads((parts / "metrics.json").read_text())
    assert (metrics["data/train_rows"], metrics["data/val_rows"]) == (64, 8), "rows used are reported"


def _rows_so_far(run: Path) -> list[tuple[int, float]]:
    try:
        return losses(run)
    except (FileNotFoundError, KeyError, ValueError):
        return []
