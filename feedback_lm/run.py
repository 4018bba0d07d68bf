"""Composition root: one resolved config in, one trained run directory out.

``train.py`` hands the composed Hydra config to :func:`main`, which

1. checks what cannot work before anything is built: the config's settings, types and ranges, the data
   shape the algorithm needs, a multirun sweep with self-launched multi-process DDP,
2. instantiates the datamodule, the algorithm plugin, the loggers and the Lightning Trainer,
3. evaluates before training, trains (resuming from ``ckpt_path=`` when given), evaluates after,
4. writes ``metrics.json`` (flat final metrics), plots of the logged curves and the trained model in
   Hugging Face format into the run directory (rank zero only).

Errors a user can cause end in one message (:class:`~feedback_lm.errors.UserError`), not a traceback.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from feedback_lm.checkpoint import (
    AtomicCheckpointIO,
    ResumeState,
    explain_load_error,
    load_checkpoint,
    next_log_step,
    remove_stale_tmp,
    restore_csv_history,
    write_json_atomic,
)
from feedback_lm.checks import check_config, check_data_kind, check_dir_creatable, check_experiment
from feedback_lm.errors import UserError
from feedback_lm.malloc import keep_freed_memory
from feedback_lm.precision import FrozenCastCache, resolve_precision


def main(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra task function: run, turning user errors into one clear line and exit status 2."""
    try:
        check_experiment()
        if cfg.get("pipeline"):  # experiment=instructgpt_tiny and friends: a chain of runs
            from feedback_lm.pipeline import run_pipeline

            return run_pipeline(cfg)
        return run(cfg)
    except UserError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(2)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one configuration and return its final metrics (also written to ``metrics.json``)."""
    import lightning as L

    refuse_multirun_with_spawned_ddp(cfg)
    OmegaConf.resolve(cfg)  # resolve once, in this process (docs/architecture.md §5.5)
    resolve_precision(cfg.trainer)  # trainer.precision=auto -> bf16-mixed where the hardware has native bf16
    check_config(cfg)
    check_data_kind(cfg.algo._target_, cfg.data._target_)
    run_dir = Path(cfg.run_dir)
    check_dir_creatable(run_dir, "run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("malloc_keep_freed", True):
        keep_freed_memory()  # glibc reuses freed activation memory instead of faulting fresh pages in
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    for stale in remove_stale_tmp(run_dir / "checkpoints"):
        print(f"removed {stale}, left by a checkpoint save that was killed")
    resume_step = None
    if cfg.ckpt_path:
        if not Path(cfg.ckpt_path).is_file():
            raise UserError(f"ckpt_path={cfg.ckpt_path} does not exist; checkpoints of a run are in "
                            f"<run dir>/checkpoints/ (last.ckpt is the newest)")
        resume_step = next_log_step(load_checkpoint(cfg.ckpt_path, "ckpt_path", mmap=True))

    datamodule = _instantiate(cfg.data, "data")
    module = _instantiate(cfg.algo, "algo")
    loggers = [_instantiate(c, f"logger.{name}") for name, c in (cfg.logger or {}).items()]
    last_validation = LastValidation()
    trainer = _instantiate(cfg.trainer, "trainer", logger=loggers or False,
                           callbacks=[*_callbacks(cfg, run_dir), last_validation], plugins=[AtomicCheckpointIO()],
                           default_root_dir=str(run_dir))
    if resume_step is not None and trainer.is_global_zero:
        restore_csv_history(trainer.loggers, resume_step)  # resuming in the same run_dir keeps the history

    metrics: dict[str, Any] = {}
    has_val = _has_validation(module)
    if cfg.eval_before and has_val and not cfg.ckpt_path:
        metrics.update(_prefixed(_validate(trainer, module, datamodule), "before/"))
    start = time.perf_counter()
    try:
        # weights_only: the file passed load_checkpoint, which refuses anything that could run code
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    except RuntimeError as e:
        explained = explain_load_error(e, cfg.ckpt_path)
        if explained is None:
            raise
        raise UserError(explained) from None
    metrics["time/fit_seconds"] = time.perf_counter() - start
    metrics["trainer/global_step"] = trainer.global_step
    metrics.update(getattr(datamodule, "data_report", {}))  # rows used, capped or skipped
    metrics.update({k: v for k, v in _scalars(trainer.callback_metrics).items() if not k.startswith("val/")})
    if cfg.eval_after and has_val:
        # the in-training validation at the very last step already is the after evaluation: do not redo it
        metrics.update(last_validation.at(trainer.global_step) or _validate(trainer, module, datamodule))

    if trainer.is_global_zero:
        write_json_atomic(run_dir / "metrics.json", metrics)
        if cfg.save_model and hasattr(module, "save_pretrained"):
            module.save_pretrained(str(run_dir / "model"))
        _plot(run_dir)
        _print_summary(cfg, run_dir, metrics)
    return metrics


def refuse_multirun_with_spawned_ddp(cfg: DictConfig) -> None:
    """A Hydra sweep whose jobs each let Lightning spawn DDP processes re-runs the *sweep* in every
    child process (Lightning relaunches the command line), so we refuse it (docs/architecture.md §5.5)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    launched_externally = any(k in os.environ for k in ("LOCAL_RANK", "SLURM_PROCID", "TORCHELASTIC_RUN_ID"))
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    multi = nodes > 1 or devices in (-1, "-1", "auto") or (str(devices).isdigit() and int(devices) > 1) \
        or (not isinstance(devices, int | str))  # a list of device ids
    if multi and not launched_externally:
        raise UserError(
            "a multirun sweep (-m) cannot be combined with trainer.devices>1 launched by Lightning: every "
            "DDP child would re-run the whole sweep. Run the sweep jobs one at a time with several devices "
            "each under torchrun (torchrun --nproc_per_node=N train.py ... ) or SLURM, or sweep on one device.")


def _instantiate(node: DictConfig, where: str, **kwargs: Any) -> Any:
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"could not build `{where}`: {cause or e}. Check the {where}.* settings "
                        f"(python train.py --cfg job shows the composed config).") from None


def _callbacks(cfg: DictConfig, run_dir: Path) -> list:
    from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint

    ckpt_dir = run_dir / "checkpoints"
    return [
        # last.ckpt every N steps and at the end of training: an interrupted run resumes with ckpt_path=
        ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                        every_n_train_steps=cfg.checkpoint_every_n_steps or None, save_on_train_epoch_end=True),
        # Ctrl-C or a crash mid-run still leaves a checkpoint behind
        OnExceptionCheckpoint(dirpath=str(ckpt_dir), filename="on_exception"),
        # what Lightning does not checkpoint: the metrics.csv step to resume at, the random states
        ResumeState(),
        # frozen weights (LoRA base weights, frozen reference/reward models) cast to bf16 once, not per forward
        FrozenCastCache(cfg.get("frozen_cast_cache", "auto")),
    ]


class LastValidation(Callback):
    """Keeps the metrics of the latest validation run during ``fit`` and the step it ran at, so that the
    after-training evaluation is not repeated when training ended right after a validation (the default
    whenever ``trainer.max_steps`` is a multiple of ``trainer.val_check_interval``)."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.metrics: dict[str, float] = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.step = trainer.global_step
            self.metrics = {k: v for k, v in _scalars(trainer.callback_metrics).items() if k.startswith("val/")}

    def at(self, step: int) -> dict[str, float]:
        """The validation metrics taken at ``step`` during fit, or ``{}``."""
        return dict(self.metrics) if self.step == step and self.metrics else {}


def _has_validation(module) -> bool:
    import lightning as L

    return type(module).validation_step is not L.LightningModule.validation_step


def _validate(trainer, module, datamodule) -> dict[str, float]:
    results = trainer.validate(module, datamodule=datamodule, verbose=False, weights_only=True)
    return _scalars(results[0] if results else {})


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1 or isinstance(v, int | float):
            out[k] = float(v)
    return out


def _prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {prefix + k: v for k, v in metrics.items()}


def _plot(run_dir: Path) -> None:
    from feedback_lm.plots import plot_metrics_csv

    csv_path = run_dir / "metrics.csv"
    if csv_path.is_file():
        plot_metrics_csv(csv_path, run_dir / "curves.png")


def _print_summary(cfg: DictConfig, run_dir: Path, metrics: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{cfg.algo._target_.rsplit('.', 1)[-1]} on {cfg.model.name}: final metrics")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key in sorted(k for k in metrics if not k.startswith("before/")):
        before = metrics.get("before/" + key)
        table.add_row(key, "" if before is None else f"{before:.4g}", f"{metrics[key]:.4g}")
    console = Console()
    console.print(table)
    console.print(f"run directory: {run_dir}  (metrics.json, metrics.csv, curves.png, checkpoints/, model/)")

