"""The plugins' range checks (feedback_lm.checks)."""

import pytest

from feedback_lm.checks import check_args, holds
from feedback_lm.errors import UserError


@pytest.mark.parametrize("value, rule, ok", [
    (1e-4, "> 0", True), (0, "> 0", False), (0, ">= 0", True), (-1, ">= 0", False),
    (1, "(0, 1]", True), (0, "(0, 1]", False), (1, "[0, 1)", False), (0, "[0, 1)", True),
    (5, "[1, inf)", True), (0.5, "(0, 1)", True), (3, "< 3", False), (3, "<= 3", True),
])
def test_holds(value, rule, ok):
    assert holds(value, rule) is ok


def test_check_args_names_the_option():
    check_args("algo", lr=(1e-3, "> 0"), warmup=(None, ">= 0"))
    with pytest.raises(UserError, match=r"algo\.lr=-1 is out of range: it must be > 0"):
        check_args("algo", lr=(-1, "> 0"))
    with pytest.raises(UserError, match=r"algo\.top_p='abc' must be a number"):
        check_args("algo", top_p=("abc", "(0, 1]"))
    with pytest.raises(UserError, match=r"algo\.lr=nan"):
        check_args("algo", lr=(float("nan"), "> 0"))
    with pytest.raises(UserError, match=r"must be a number"):
        check_args("algo", ppo_epochs=(True, ">= 1"))


def test_check_args_choices():
    check_args("algo", schedule=("cosine", ("constant", "cosine")))
    with pytest.raises(UserError, match=r"algo\.schedule='exp' is not one of \['constant', 'cosine'\]"):
        check_args("algo", schedule=("exp", ("constant", "cosine")))


SFT = {"_target_": "plugins.sft.SFT", "policy": {}, "lr": 1e-3, "betas": [0.9, 0.99]}


@pytest.mark.parametrize("key, value, message", [
    ("lr", "abc", r"algo\.lr='abc' has the wrong type: expected float, got str"),
    ("lr", [1], r"algo\.lr=\[1\] has the wrong type: expected float"),
    ("betas", [0.9], r"algo\.betas=\[0\.9\] has the wrong type: expected tuple\[float, float\]"),
    ("schedule", 3, r"algo\.schedule=3 has the wrong type: expected str, got int"),
    ("no_such_key", 1, r"algo\.no_such_key is not a setting of plugins\.sft\.SFT; its settings are \['betas'"),
])
def test_check_node_refuses_types_and_unknown_keys(key, value, message):
    from feedback_lm.checks import check_node

    check_node("algo", SFT)
    with pytest.raises(UserError, match=message):
        check_node("algo", {**SFT, key: value})


def test_check_node_reads_the_trainer_signature():
    from feedback_lm.checks import check_node

    trainer = {"_target_": "lightning.Trainer", "max_steps": 3, "precision": "32-true", "devices": 1,
               "val_check_interval": 300, "gradient_clip_val": None}
    check_node("trainer", trainer, given=("logger",))
    with pytest.raises(UserError, match=r"trainer\.max_steps=2\.5 has the wrong type: expected int"):
        check_node("trainer", {**trainer, "max_steps": 2.5})
    with pytest.raises(UserError, match=r"trainer\.enable_progress_bar='maybe' .* expected bool or null"):
        check_node("trainer", {**trainer, "enable_progress_bar": "maybe"})
    with pytest.raises(UserError, match=r"trainer\._target_='no\.such\.Thing' cannot be imported"):
        check_node("trainer", {"_target_": "no.such.Thing"})


@pytest.mark.parametrize("overrides, message", [
    (["seed=abc"], r"seed='abc' has the wrong type: expected int"),
    (["eval_before=maybe"], r"eval_before='maybe' has the wrong type: expected bool"),
    (["malloc_keep_freed=sometimes"], r"malloc_keep_freed='sometimes' has the wrong type: expected bool"),
    (["frozen_cast_cache=sometimes"], r"frozen_cast_cache='sometimes' has the wrong type: expected bool or one of 'auto'"),
    (["checkpoint_every_n_steps=-1"], r"checkpoint_every_n_steps=-1 is out of range"),
    (["algo=ppo", "reward=model"], r"reward\.path must be set .*add reward\.path=\.\.\. to the command"),
    (["model.dtype=float17"], r"model\.dtype='float17' is not a dtype"),
    (["model.max_length=0"], r"model\.max_length=0 is out of range: it must be >= 1"),
    (["+model.overrides.d_model=-8"], r"model\.overrides\.d_model=-8 is out of range: a size must be an integer >= 1"),
    (["+logger.csv.bogus=1"], r"logger\.csv\.bogus is not a setting"),
])
def test_check_config_names_the_option(overrides, message):
    from feedback_lm.checks import check_config
    from feedback_lm.testing import compose

    check_config(compose(["run_dir=/tmp/unused"]))
    with pytest.raises(UserError, match=message):
        check_config(compose([*overrides, "run_dir=/tmp/unused"]))


def test_check_data_kind_names_the_data_option():
    from feedback_lm.checks import check_data_kind

    check_data_kind("plugins.sft.SFT", "feedback_lm.data.datamodule.TaskDataModule")
    check_data_kind("plugins.reward_model.RewardModel", "feedback_lm.data.datamodule.ComparisonDataModule")
    with pytest.raises(UserError, match=r"algo=sft needs prompt/target task data.*add data=word_sorting"):
        check_data_kind("plugins.sft.SFT", "feedback_lm.data.datamodule.ComparisonDataModule")


def test_check_dir_creatable(tmp_path):
    from feedback_lm.checks import check_dir_creatable

    check_dir_creatable(tmp_path / "a" / "b", "run_dir")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"run_dir=.*file/run cannot be created: .*file is a file"):
        check_dir_creatable(tmp_path / "file" / "run", "run_dir")


@pytest.mark.parametrize("overrides", [
    ["algo=sft"], ["algo=hir"], ["algo=self_correct"], ["algo=ppo"], ["algo=ppo_ptx"],
    ["algo=reward_model", "data=comparisons"], ["algo=hir", "model=tiny-gpt2"],
    ["experiment=self_correct_swap"], ["model=tiny-gpt2", "logger=tensorboard"], ["trainer=ddp"], ["trainer=fsdp"],
])
def test_shipped_configs_pass(overrides):
    """No false alarm: every shipped algorithm, experiment and trainer config passes the checks."""
    from feedback_lm.checks import check_config, check_data_kind
    from feedback_lm.testing import compose

    cfg = compose([*overrides, "run_dir=/tmp/unused"])
    check_config(cfg)
    check_data_kind(cfg.algo._target_, cfg.data._target_)
