"""The after-training evaluation reuses the in-training validation that ran at the last step.

When ``trainer.max_steps`` is a multiple of ``trainer.val_check_interval`` the last in-training validation
IS the after evaluation; running it again cost a full held-out pass (30 s of a 4-minute SmolLM2 run on the
CPU). The metrics must be exactly those a second validation would give.
"""

from __future__ import annotations

import csv
import json

import pytest

from feedback_lm import run as run_module
from feedback_lm.testing import QUICK, compose

STEPS = ["trainer.max_steps=4", "trainer.val_check_interval=4", "checkpoint_every_n_steps=0", "save_model=false"]


def _train(tmp_path, name, extra=()):
    cfg = compose([*QUICK, *STEPS, *extra, f"run_dir={tmp_path / name}"])
    run_module.run(cfg)
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    with open(tmp_path / name / "metrics.csv") as f:
        val_rows = [r for r in csv.DictReader(f) if r.get("val/accuracy") not in (None, "")]
    return metrics, val_rows


@pytest.mark.parametrize("algo", ["sft", "ppo"])
def test_after_metrics_equal_a_second_validation_and_it_runs_once(algo, tmp_path, monkeypatch):
    extra = [f"algo={algo}"] + (["algo.max_new_tokens=8", "algo.normalize_samples=8"] if algo == "ppo" else [])
    reused, rows = _train(tmp_path, "reused", extra)
    # before, the one at step 4, nothing after: the validation at the last step was not repeated
    assert [r["step"] for r in rows] == ["0", "3"]
    monkeypatch.setattr(run_module.LastValidation, "at", lambda self, step: {})  # force the second pass
    again, rows_again = _train(tmp_path, "again", extra)
    assert len(rows_again) == 3
    val = {k: v for k, v in again.items() if k.startswith("val/")}
    assert val and {k: v for k, v in reused.items() if k.startswith("val/")} == val


def test_a_last_step_without_validation_still_evaluates_after(tmp_path):
    metrics, rows = _train(tmp_path, "run", ["trainer.max_steps=5"])  # validations at step 4 only
    assert [r["step"] for r in rows] == ["0", "3", "5"]  # Lightning logs an in-fit validation at the step just done
    assert "val/accuracy" in metrics
