"""The plugin contract test, for our plugins and for plugin authors (see plugins/README.md).

    from feedback_lm.testing import Learns, check_plugin
    check_plugin("my_algo", config_dir="~/my_algos/conf")        # in a pytest test of your own
    check_plugin("my_algo", config_dir=..., learns=Learns("rollout/score_mean", ["algo.lr=1e-3"]))

composes the real config (``conf/train.yaml`` with ``algo=<name>``), runs a few steps on the CPU with
each tiny architecture, and asserts: the hyperparameters are plain data (an object such as the reward
function must be left out with ``save_hyperparameters(ignore=["reward"])``, or every resume fails), the
loss and every logged metric are finite, metric keys are ``<phase>/<name>``, trainable parameters
changed, and save -> resume restores the weights and the step counter. A plugin may take several
optimizer steps per training step (use :func:`feedback_lm.online.optimizer_step` so that one training
step stays one iteration).

Online plugins (their YAML takes ``reward: ${reward}``) are checked with ``reward=letters``
(:class:`LetterReward`): against the task's verifier an untrained model scores 0 everywhere, every
advantage is 0 and a correct algorithm would not move. That contract is about wiring; the opt-in
behavioural check (``learns=``) is about the maths: a named metric must rise over a short run, which a
flipped loss sign, a reference that is the policy itself or a flipped advantage would not do.
"""

from __future__ import annotations

import csv
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
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


class LetterReward:
    """A toy reward with a signal from the first step: the share of lowercase ASCII letters in the
    response (0 for an empty one). An untrained byte-level model emits about 1 in 10; an algorithm that
    follows it learns to emit more within a few dozen steps on the CPU."""

    def __call__(self, prompts, responses, targets=None) -> torch.Tensor:
        return torch.tensor([sum("a" <= c <= "z" for c in r) / len(r) if r else 0.0 for r in responses])


@dataclass
class Learns:
    """The opt-in behavioural check: over ``steps`` training steps on ``model`` with ``overrides`` (e.g.
    a larger learning rate), the mean of ``metric`` over the last third of the logged steps must exceed
    its mean over the first third by more than ``min_gain``.

    Good choices: ``rollout/score_mean`` for a reward-maximising plugin (checked against
    :class:`LetterReward`), the implicit-reward margin or accuracy for a preference plugin.
    """

    metric: str
    overrides: Sequence[str] = ()
    steps: int = 24
    model: str = "tiny-gpt2"
    min_gain: float = 0.0


def check_plugin(algo: str, models: Sequence[str] = ("tiny-t5", "tiny-gpt2"), overrides: Sequence[str] = (),
                 config_dir: str | Path | None = None, steps: int = 2,
                 learns: Learns | None = None) -> dict[str, dict[str, float]]:
    """Run the plugin contract for ``algo`` on each model; raise ``AssertionError`` on a breach.

    Args:
        algo: the ``conf/algo/<algo>.yaml`` name.
        models: model presets to check (both tiny architectures by default).
        overrides: extra Hydra overrides (e.g. ``["algo.max_new_tokens=8"]``; ``reward=...`` replaces the
            toy reward of online plugins).
        config_dir: a user's config directory holding ``algo/<algo>.yaml``.
        steps: training steps before the checkpoint.
        learns: the behavioural check (see :class:`Learns`), run once after the contract.

    Returns:
        ``{model: logged metrics}`` of the first run per model, plus ``{"learns": {"first": .., "last": ..}}``
        when ``learns`` is given.
    """
    results = {}
    for model in models:
        with tempfile.TemporaryDirectory() as tmp:
            results[model] = _check_one(algo, model, list(overrides), config_dir, steps, Path(tmp))
    if learns is not None:
        with tempfile.TemporaryDirectory() as tmp:
            results["learns"] = _check_learns(algo, learns, list(overrides), config_dir, Path(tmp))
    return results


def _compose_for(algo, model, overrides, config_dir, tmp: Path):
    """The composed run config; online plugins get ``reward=letters`` unless the overrides pick a reward."""
    base = [f"algo={algo}", f"model={model}", f"run_dir={tmp}", *QUICK]
    cfg = compose([*base, *overrides], config_dir)
    if "reward" in cfg.algo and not any(o.lstrip("+~").startswith("reward") for o in overrides):
        cfg = compose([*base, "reward=letters", *overrides], config_dir)
    return cfg


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def _check_one(algo, model, overrides, config_dir, steps, tmp: Path) -> dict[str, float]:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    cfg = _compose_for(algo, model, overrides, config_dir, tmp)

    def build(max_steps: int, callbacks: list):
        return _build(cfg, max_steps, callbacks, tmp)

    ckpt_dir = tmp / "checkpoints"
    module, datamodule, trainer = build(steps, [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0)])
    bad = sorted(k for k, v in module.hparams.items() if not _plain(v))
    assert not bad, (f"{algo}: hyperparameters {bad} are objects, not plain data: a checkpoint would pickle them "
                     f"and every resume would fail. Leave them out: self.save_hyperparameters(ignore={bad})")
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

    # save -> resume: the weights come back exactly and training continues from the saved step. One training
    # step may hold several optimizer steps (it then advances global_step by one per optimizer.step()).
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
    assert trainer2.global_step > saved_step, f"{algo}: training did not continue after resume"
    return logged


def _build(cfg, max_steps: int, callbacks: list, tmp: Path):
    import lightning as L
    from hydra.utils import instantiate

    from feedback_lm.checkpoint import AtomicCheckpointIO

    L.seed_everything(cfg.seed, verbose=False)
    module = instantiate(cfg.algo, _convert_="all")
    datamodule = instantiate(cfg.data, _convert_="all")
    logger = L.pytorch.loggers.CSVLogger(str(tmp), name="", version="")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=logger, callbacks=callbacks,
                        plugins=[AtomicCheckpointIO()], default_root_dir=str(tmp), limit_val_batches=1,
                        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
                        val_check_interval=None, check_val_every_n_epoch=None, log_every_n_steps=1)
    return module, datamodule, trainer


def fit_one_iteration(cfg, precision: str = "bf16-mixed") -> dict[str, float]:
    """One training step (one online iteration) of ``cfg``'s plugin on its data, under ``precision``, with
    no logger, checkpoint or validation. Returns the step's logged metrics plus ``prompt_lengths``, the
    number of distinct prompt lengths in the batch (tests of padding need it above 1)."""
    import lightning as L
    from hydra.utils import instantiate

    L.seed_everything(0, verbose=False)
    module = instantiate(cfg.algo, _convert_="all")
    datamodule = instantiate(cfg.data, _convert_="all")
    seen: dict[str, float] = {}

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["prompt_lengths"] = len({len(p) for p in batch["prompt"]})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[Probe()])
    trainer.fit(module, datamodule=datamodule)
    return seen


def _check_learns(algo, learns: Learns, overrides, config_dir, tmp: Path) -> dict[str, float]:
    cfg = _compose_for(algo, learns.model, [*overrides, *learns.overrides], config_dir, tmp)
    module, datamodule, trainer = _build(cfg, learns.steps, [], tmp)
    trainer.fit(module, datamodule=datamodule)
    with open(tmp / "metrics.csv", newline="") as f:
        history = [float(row[learns.metric]) for row in csv.DictReader(f) if row.get(learns.metric)]
    assert len(history) >= 3, f"{algo}: metric {learns.metric} was logged {len(history)} times in {learns.steps} steps"
    third = len(history) // 3
    first, last = sum(history[:third]) / third, sum(history[-third:]) / third
    assert last > first + learns.min_gain, (
        f"{algo}: {learns.metric} did not rise over {learns.steps} steps (first third {first:.4f}, last third "
        f"{last:.4f}): check the sign of the loss, that the reference is frozen and that advantages point up")
    return {"first": first, "last": last}


def _scalars(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if torch.is_tensor(v) and v.numel() == 1}
