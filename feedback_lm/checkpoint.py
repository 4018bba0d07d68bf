"""Checkpoints that are never half-written, and clear messages when one does not fit the model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


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
        _atomic_write(Path(path), lambda f: torch.save(checkpoint, f))


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


def load_state_dict_safely(path: str | Path, option: str) -> dict[str, Any]:
    """The ``state_dict`` of a Lightning checkpoint at ``path``, loaded with ``weights_only=True``.

    A ``.ckpt`` is a pickle: loading one with ``weights_only=False`` runs whatever code it carries. This is
    the one loader for checkpoints a user names in a config option (``option``, for the message), so no
    such file can run code. A missing, truncated, corrupt or foreign file ends in one
    :class:`~feedback_lm.errors.UserError` naming the file and what was expected.
    """
    from feedback_lm.errors import UserError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{option}={path}: no such file (expected a .ckpt written by `python train.py`, "
                        f"e.g. <run>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip reader, unpickler and torch each raise their own kind
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{option}={path} is not a checkpoint this project can load safely ({first}). "
                        f"Expected a Lightning .ckpt written by `python train.py`; files that need arbitrary "
                        f"code to unpickle are refused.") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{option}={path} holds no 'state_dict' (expected a Lightning .ckpt written by "
                        f"`python train.py`)")
    return state
