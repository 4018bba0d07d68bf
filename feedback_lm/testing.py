"""The plugin contract test (DESIGN §3), for our plugins and for plugin authors.

    from feedback_lm.testing import check_plugin
    check_plugin("my_algo", config_dir="~/my_algos/conf")        # in a pytest test of your own

composes the real config (``conf/train.yaml`` with ``algo=<name>``), runs a few steps on the CPU with
each tiny architecture, and asserts: the loss and every logged metric are finite, metric keys are
``<phase>/<name>``, trainable parameters changed, and save -> resume restores the weights and the
step counter.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
METRIC_KEY = re.compile(r"^[a-z][a-z0-9_]*/[A-Za-z0-9_@.\-/]+$")

# Small data and few steps: the contract is about wiring, not learning.
QUICK = ["data.num_train=32", "data.num_val=8", "data.batch_size=4", "data.eval_batch_size=8",
         "trainer.val_check_interval=null", "trainer.check_val_every_n_epoch=null",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv"]


def compose(overrides: Sequence[str] = (), config_dir: str | Path | None = None):
    """Compose ``conf/train.yaml`` with ``overrides`` (and a user's config dir on the search path),
    exactly as ``train.py`` would, but without starting a Hydra run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    extra = []
    if config_dir is not None:
        extra.append(f"hydra.searchpath=[file://{Path(config_dir).expanduser().resolve()}]")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=[*extra, *overrides])


def check_plugin(algo: str, models: Sequence[str] = ("tiny-t5", "tiny-gpt2"), overrides: Sequence[str] = (),
                 config_dir: str | Path | None = None, steps: int = 2) -> dict[str, dict[str, float]]:
    """Run the plugin contract for ``algo`` on each model; raise ``AssertionError`` on a breach.

    Args:
        algo: the ``conf/algo/<algo>.yaml`` name.
        models: model presets to check (both tiny architectures by default).
        overrides: extra Hydra overrides (e.g. ``["algo.max_new_tokens=8"]``).
        config_dir: a user's config directory holding ``algo/<algo>.yaml``.
        steps: training steps before the checkpoint.

    Returns:
        ``{model: logged metrics}`` of the first run per model.
    """
    results = {}
    for model in models:
        with tempfile.TemporaryDirectory() as tmp:
            results[model] = _check_one(algo, model, list(overrides), config_dir, steps, Path(tmp))
    return results


def _check_one(algo, model, overrides, config_dir, steps, tmp: Path) -> dict[str, float]:
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from feedback_lm.checkpoint import AtomicCheckpointIO

    cfg = compose([f"algo={algo}", f"model={model}", f"run_dir={tmp}", *QUICK, *overrides], config_dir)

    def build(max_steps: int, callbacks: list):
        L.seed_everything(cfg.seed, verbose=False)
        module = instantiate(cfg.algo, _convert_="all")
        datamodule = instantiate(cfg.data, _convert_="all")
        logger = L.pytorch.loggers.CSVLogger(str(tmp), name="", version="")
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=logger,
                            callbacks=callbacks, plugins=[AtomicCheckpointIO()], default_root_dir=str(tmp),
                            limit_val_batches=1, num_sanity_val_steps=0, enable_progress_bar=False,
                            enable_model_summary=False, val_check_interval=None, check_val_every_n_epoch=None,
                            log_every_n_steps=1)
        return module, datamodule, trainer

    ckpt_dir = tmp / "checkpoints"
    module, datamodule, trainer = build(steps, [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0)])
    module.configure_model()
    module.configure_model()  # must be idempotent (Lightning may call it again)
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    assert before, f"{algo}: no trainable parameters after configure_model()"
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step >= 1, f"{algo}: no optimizer step was taken in {steps} training steps"

    logged = _scalars(trainer.callback_metrics)
    if type(module).validation_step is not L.LightningModule.validation_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        logged.update(_scalars(trainer.callback_metrics))
    assert logged, f"{algo}: logged no metrics (use self.log('<phase>/<name>', value))"
    for key, value in logged.items():
        assert METRIC_KEY.match(key), f"{algo}: metric key '{key}' is not of the form '<phase>/<name>'"
        assert math.isfinite(value), f"{algo}: metric {key} = {value} is not finite"
    assert any(k.endswith("loss") for k in logged), f"{algo}: no loss metric logged (e.g. 'train/loss')"

    after = dict(module.named_parameters())
    changed = [n for n, p in before.items() if not torch.equal(p, after[n].detach())]
    assert changed, f"{algo}: no trainable parameter changed after {steps} steps"

    # save -> resume: the weights come back exactly and training continues from the saved step.
    last = ckpt_dir / "last.ckpt"
    assert last.is_file(), f"{algo}: no checkpoint written at {last}"
    saved_step = trainer.global_step
    saved = {n: p.detach().clone() for n, p in module.state_dict().items()}
    seen: dict[str, Any] = {}

    class _Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            seen["equal"] = all(torch.equal(saved[n], p.detach()) for n, p in pl_module.state_dict().items()
                                if n in saved)
            seen["keys"] = set(pl_module.state_dict()) == set(saved)

    module2, datamodule2, trainer2 = build(saved_step + 1, [_Probe()])
    trainer2.fit(module2, datamodule=datamodule2, ckpt_path=str(last))
    assert seen.get("step") == saved_step, f"{algo}: resumed at step {seen.get('step')}, saved at {saved_step}"
    assert seen["keys"], f"{algo}: the resumed module has different state_dict keys than the saved one"
    assert seen["equal"], f"{algo}: weights after resume differ from the saved checkpoint"
    assert trainer2.global_step == saved_step + 1, f"{algo}: training did not continue after resume"
    return logged


def _scalars(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if torch.is_tensor(v) and v.numel() == 1}
