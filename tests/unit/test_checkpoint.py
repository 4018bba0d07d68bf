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


def test_full_disk_gives_one_message_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import errno

    from feedback_lm.errors import UserError

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {}, "global_step": 1}, path)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"no space left on the device while saving the checkpoint .*last\.ckpt; "
                                        r"the previous checkpoint there is kept"):
        io.save_checkpoint({"state_dict": {}, "global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_remove_stale_tmp(tmp_path):
    from feedback_lm.checkpoint import remove_stale_tmp

    (tmp_path / "last.ckpt").write_bytes(b"keep")
    (tmp_path / ".last.ckpt.abc123.tmp").write_bytes(b"half")
    (tmp_path / "notes.tmp").write_bytes(b"not ours")
    assert [p.name for p in remove_stale_tmp(tmp_path)] == [".last.ckpt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "notes.tmp"]
    assert remove_stale_tmp(tmp_path / "missing") == []


def test_restore_csv_history_keeps_rows_before_the_resume_step(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from feedback_lm.checkpoint import next_log_step, restore_csv_history

    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,0,1.5\n0,1,1.25\n0,2,1.0\n0,3,0.5\n")
    logger = CSVLogger(str(tmp_path), name="", version="")
    assert restore_csv_history([logger], before_step=2) == 2
    logger.log_metrics({"train/loss": 0.75}, step=2)
    logger.save()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "epoch,step,train/loss", "0,0,1.5", "0,1,1.25", ",2,0.75"]
    assert next_log_step({"callbacks": {"ResumeState": {"next_log_step": 7}}}) == 7
    assert next_log_step({"loops": {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": 4}}}}) == 4


def test_resumable_sampler_continues_the_epoch():
    from feedback_lm.data.datamodule import ResumableSampler

    full = ResumableSampler(10, seed=3)
    epoch0, epoch1 = list(full), list(full)
    assert sorted(epoch0) == list(range(10)) and epoch0 != epoch1, "a new order each epoch"
    assert list(ResumableSampler(10, seed=3, epoch=1, start=4)) == epoch1[4:]
    assert list(ResumableSampler(10, seed=3)) == epoch0, "the order depends on the seed, not on global state"
