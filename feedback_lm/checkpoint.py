"""Checkpoints that are never half-written, resumes that lose nothing, and clear messages when a file
does not fit.

- :class:`AtomicCheckpointIO` writes through a temporary file (a kill leaves the old ``last.ckpt``; a
  full disk ends in one message); :func:`remove_stale_tmp` clears temporaries a killed save left.
- :func:`load_checkpoint` loads a user-named ``.ckpt`` with ``weights_only=True`` (no file can run code)
  and names the file when it is missing, truncated, corrupt or foreign.
- :class:`ResumeState` records in each checkpoint what Lightning does not: the first ``metrics.csv`` step
  a resumed run will log and the random-number generators, so a resumed run continues the same
  sequence; :func:`restore_csv_history` keeps the rows logged before the checkpoint.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from feedback_lm.errors import UserError

TMP_PATTERN = ".*.ckpt.*.tmp"  # what _atomic_write leaves behind when a save is killed


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, fsync it, then rename over ``path``:
    a crash leaves either the old file or the new one, never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    _atomic_write(Path(path), lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic local writes (remote paths fall back to Lightning's)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            _atomic_write(Path(path), lambda f: torch.save(checkpoint, f))
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise UserError(f"no space left on the device while saving the checkpoint {path}; the previous checkpoint "
                            f"there is kept. Free space (or move run_dir), then resume with ckpt_path={path}") from None


def remove_stale_tmp(ckpt_dir: Path) -> list[Path]:
    """Delete the temporary files that saves killed mid-write left in ``ckpt_dir``; return them."""
    stale = sorted(ckpt_dir.glob(TMP_PATTERN)) if ckpt_dir.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def explain_load_error(err: RuntimeError, ckpt_path: str | None) -> str | None:
    """A user-facing message when resuming from ``ckpt_path`` failed because the weights do not fit
    the configured model; None when ``err`` is something else."""
    text = str(err)
    if not ckpt_path or "Error(s) in loading state_dict" not in text:
        return None
    detail = next((line.strip() for line in text.splitlines()[1:] if line.strip()), text.splitlines()[0])
    written_by = ""
    config = Path(ckpt_path).resolve().parent.parent / ".hydra" / "config.yaml"
    if config.is_file():
        written_by = f" Its run's settings are in {config}."
    return (f"checkpoint {ckpt_path} does not fit this model: it was written by another architecture or "
            f"algorithm ({detail[:200]}). Resume with the same model=/algo= settings it was trained with."
            + written_by)


def load_checkpoint(path: str | Path, option: str, mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint at ``path``, loaded with ``weights_only=True``.

    A ``.ckpt`` is a pickle: loading one with ``weights_only=False`` runs whatever code it carries. This is
    the one loader for checkpoints a user names in a config option (``option``, for the message), so no
    such file can run code. A missing, truncated, corrupt or foreign file ends in one
    :class:`~feedback_lm.errors.UserError` naming the file and what was expected. ``mmap`` maps the
    tensors instead of reading them (cheap when only the counters are needed).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{option}={path}: no such file (expected a .ckpt written by `python train.py`, "
                        f"e.g. <run>/checkpoints/last.ckpt)")
    try:  # mmap needs the zip format torch.save writes; anything else is read (and refused) without it
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(p))
    except Exception as e:  # noqa: BLE001 - zip reader, unpickler and torch each raise their own kind
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if "Weights only load failed" in first:
            first = ("it does not unpickle to tensors and plain data: a damaged file, another program's file, or "
                     "a pickle that would have to run code")
        raise UserError(f"{option}={path} is not a checkpoint this project can load safely ({first}). "
                        f"Expected a Lightning .ckpt written by `python train.py`; files that need arbitrary "
                        f"code to unpickle are refused.") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{option}={path} holds no 'state_dict' (expected a Lightning .ckpt written by "
                        f"`python train.py`)")
    return ckpt


def load_state_dict_safely(path: str | Path, option: str) -> dict[str, Any]:
    """The ``state_dict`` of the checkpoint at ``path`` (see :func:`load_checkpoint`)."""
    return load_checkpoint(path, option)["state_dict"]


# ----------------------------------------------------------------------------------------- resume
class ResumeState(Callback):
    """Checkpoint what a resumed run needs beyond Lightning's own state.

    * ``next_log_step``: the first step the resumed run will log (Lightning stores its batch counter
      before the increment when the save happens at the end of a training batch), so
      :func:`restore_csv_history` keeps exactly the rows logged before the checkpoint;
    * the torch (CPU and CUDA) and Python random states, restored on load, so sampling and dropout
      continue the same sequence.

    The loggers are flushed at the batch after each save, so a kill loses no row the checkpoint covers.
    """

    def __init__(self) -> None:
        self._trainer = None
        self._after_batch = False
        self._flush = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._after_batch = False
        if self._flush:
            self._flush = False
            for logger in trainer.loggers:
                logger.save()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._after_batch = True

    def on_validation_start(self, trainer, pl_module) -> None:
        self._after_batch = False

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._after_batch = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._flush = True

    def state_dict(self) -> dict[str, Any]:
        if self._trainer is None:
            return {}
        state = {"next_log_step": self._trainer.fit_loop.epoch_loop._batches_that_stepped + int(self._after_batch),
                 "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch_rng" in state_dict:
            torch.set_rng_state(state_dict["torch_rng"])
            random.setstate(_as_tuple(state_dict["python_rng"]))
        if "cuda_rng" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda_rng"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def next_log_step(ckpt: dict[str, Any]) -> int:
    """The first ``metrics.csv`` step a run resumed from ``ckpt`` logs."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if key.startswith("ResumeState") and "next_log_step" in state:
            return int(state["next_log_step"])
    return int(ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
               .get("_batches_that_stepped", ckpt.get("global_step", 0)))


def restore_csv_history(loggers, before_step: int) -> int:
    """Keep the rows a :class:`~lightning.pytorch.loggers.CSVLogger` wrote before ``before_step`` when a run
    resumes in the same directory (Lightning would delete the file): they are written back at once, and the
    resumed run appends after them. Returns the number of rows kept."""
    from lightning.pytorch.loggers import CSVLogger

    kept = 0
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            rows = [_typed(r) for r in csv.DictReader(f)]
        rows = [r for r in rows if r.get("step", before_step) < before_step]
        writer = logger.experiment  # creating the writer deletes the old file
        writer.metrics = rows + writer.metrics
        writer.save()
        kept += len(rows)
    return kept


def _typed(row: dict[str, str]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for k, v in row.items():
        if v in ("", None):
            continue
        out[k] = int(float(v)) if k in ("step", "epoch") else float(v)
    return out
