"""Every YAML composes, and every group option builds what it names (docs/architecture.md §5.9)."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from feedback_lm.errors import UserError
from feedback_lm.models import ModelConfig
from feedback_lm.testing import CONF_DIR, compose


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["algo", "model", "data", "trainer", "logger"])
def test_every_option_composes(group, tmp_path):
    for option in options(group):
        cfg = compose([f"{group}={option}", f"run_dir={tmp_path}"])
        assert cfg[group] is not None
        if group != "data" or option != "jsonl":  # jsonl requires data.path (a mandatory ??? value)
            OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("model", options("model"))
def test_model_configs_are_valid(model, tmp_path):
    cfg = compose([f"model={model}", f"run_dir={tmp_path}"])
    mc = ModelConfig.coerce(OmegaConf.to_container(cfg.model, resolve=True))
    sources = [mc.preset is not None, mc.name_or_path is not None or mc.gguf_file is not None]
    assert sum(sources) == 1, "either a tiny preset or a hub name/path (or a GGUF file)"
    assert mc.name == model


def test_model_config_rejects_unknown_keys():
    with pytest.raises(UserError, match="unknown model setting"):
        ModelConfig.coerce({"preset": "tiny-t5", "d_modle": 3})
    with pytest.raises(UserError, match="unknown model preset"):
        ModelConfig.coerce({"preset": "tiny-llama"})


@pytest.mark.parametrize("data", [d for d in options("data") if d not in ("jsonl", "bbh", "comparisons")])
def test_generated_data_builds(data, tmp_path):
    cfg = compose([f"data={data}", f"run_dir={tmp_path}", "data.num_train=16", "data.num_val=4"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"prompt", "response", "target"} and len(batch["prompt"]) == min(16, cfg.data.batch_size)
    assert batch["prompt"][0].startswith("Q: ") and batch["prompt"][0].endswith("\nA:")
    assert not {r["prompt"] for r in dm.val_rows} & {r["prompt"] for r in dm.train_rows}, "held out means unseen"


def test_bbh_data_builds(shared_data, tmp_path):
    path = shared_data / "bbh" / "word_sorting.json"
    cfg = compose(["data=bbh", "data.task=word_sorting", f"data.path={path}", f"run_dir={tmp_path}"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    assert len(dm.train_rows) == 200 and len(dm.val_rows) == 50


def test_jsonl_data_builds(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(f'{{"prompt": "p{i}", "response": "r{i}"}}\n' for i in range(20)))
    cfg = compose(["data=jsonl", f"data.path={path}", f"run_dir={tmp_path}"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    assert len(dm.train_rows) == 18 and len(dm.val_rows) == 2 and dm.val_rows[0]["target"] == dm.val_rows[0]["response"]


def test_default_run_is_sft_on_tiny_t5(tmp_path):
    cfg = compose([f"run_dir={tmp_path}"])
    assert cfg.algo._target_ == "plugins.sft.SFT" and cfg.model.name == "tiny-t5"
    assert cfg.trainer.accelerator == "cpu" and cfg.data.source == "generated"


def test_refuse_multirun_with_spawned_ddp_only_in_multirun(tmp_path):
    from feedback_lm.run import refuse_multirun_with_spawned_ddp

    cfg = compose(["trainer=ddp", f"run_dir={tmp_path}"])
    refuse_multirun_with_spawned_ddp(cfg)  # not a multirun: nothing to refuse


def test_comparison_data_builds(tmp_path):
    cfg = compose(["algo=reward_model", "data=comparisons", f"run_dir={tmp_path}", "data.num_train=20", "data.num_val=4"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert all(len(c.responses) >= 2 and c.pairs() for c in batch)
    assert dm.demos and dm.prompts and not {c.prompt for c in dm.val_rows} & set(dm.prompts)


def test_hh_rlhf_comparisons_build(shared_data, tmp_path):
    path = shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    cfg = compose(["algo=reward_model", "data=comparisons", "data.source=hh_rlhf", f"data.path={path}",
                   f"run_dir={tmp_path}", "data.num_train=0", "data.num_val=1000"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    assert len(dm.train_rows) + len(dm.val_rows) == 2308 and len(dm.val_rows) > 400
