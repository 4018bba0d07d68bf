"""Atomic checkpoints and JSON, the resume error message, and the curve plots."""

import json
import threading

import pytest
import torch

from feedback_lm.checkpoint import AtomicCheckpointIO, explain_load_error, write_json_atomic
from feedback_lm.plots import plot_metrics_csv, read_metrics_csv


def test_atomic_checkpoint_write_and_failed_write_keeps_old_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    assert torch.load(path, weights_only=False)["global_step"] == 1
    with pytest.raises(Exception):
        io.save_checkpoint({"global_step": 2, "bad": threading.Lock()}, path)  # not picklable mid-write
    assert torch.load(path, weights_only=False)["global_step"] == 1, "the old checkpoint survives"
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "no temporary files left behind"


def test_write_json_atomic(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"val/accuracy": 0.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"val/accuracy": 0.5}


def test_explain_load_error():
    err = RuntimeError('Error(s) in loading state_dict for SFT:\n\tsize mismatch for policy.model.x: ...')
    msg = explain_load_error(err, "/runs/a/checkpoints/last.ckpt")
    assert "does not fit this model" in msg and "size mismatch" in msg
    assert explain_load_error(RuntimeError("CUDA out of memory"), "x.ckpt") is None
    assert explain_load_error(err, None) is None


def test_plot_metrics_csv(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,step,train/loss,val/accuracy\n0,0,2.0,\n0,1,1.5,\n0,1,,0.25\n0,2,1.0,0.5\n")
    series = read_metrics_csv(csv_path)
    assert series["train/loss"] == [(0.0, 2.0), (1.0, 1.5), (2.0, 1.0)]
    assert series["val/accuracy"] == [(1.0, 0.25), (2.0, 0.5)]
    out = plot_metrics_csv(csv_path, tmp_path / "curves.png")
    assert out.is_file() and out.stat().st_size > 1000
