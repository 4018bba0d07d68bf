"""PPO through the command line: 2-process DDP on CPU and a multi-stage pipeline (SFT -> labels -> reward
model -> PPO with and without the KL penalty) in one command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.integration.test_cli import ok, train

QUICK = ["data.num_train=64", "data.num_val=8", "data.batch_size=8", "data.eval_batch_size=8",
         "algo.max_new_tokens=8", "algo.eval_max_new_tokens=8", "algo.minibatch_size=4",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1"]
TOY_REWARD = ["~reward", "+reward._target_=feedback_lm.rewards.LengthReward"]


@pytest.mark.slow
def test_ppo_ddp_two_processes_on_cpu(tmp_path):
    run = tmp_path / "run"
    ok(train("algo=ppo", "model=tiny-gpt2", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
             "trainer.max_steps=2", f"hydra.run.dir={run}", *QUICK, *TOY_REWARD, cwd=tmp_path, timeout=600))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 2  # iterations: both ranks took every step together
    assert metrics["ppo/minibatches"] == 8  # 4 rollouts per rank / minibatch 4 x 4 epochs... on each rank
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("ppo/kl")]
    assert len(rows) == 2 and all(r["ppo/kl_coef"] for r in rows)


# A 4-step SFT model's samples all tie (all wrong), so the reward model here trains on generated
# comparisons; the collect stages still run. The real pipeline is conf/experiment/instructgpt_tiny.yaml.
PIPELINE = """# @package _global_
pipeline:
  - name: sft
    overrides: [algo=sft, trainer.max_steps=4]
  - name: labels
    collect: {model: "{sft}/model", task: word_sorting, num_prompts: 12, k: 3, max_new_tokens: 8,
              out: "{run_dir}/labels/train.jsonl", seed: 1, progress: false}
  - name: val_labels
    collect: {model: "{sft}/model", task: word_sorting, num_prompts: 6, k: 3, max_new_tokens: 8,
              out: "{run_dir}/labels/val.jsonl", seed: 2, progress: false}
  - name: reward_model
    overrides: [algo=reward_model, data=comparisons, data.num_train=16, data.num_val=8, data.batch_size=4,
                "algo.init_from={sft}/model", trainer.max_steps=3, algo.max_new_tokens=8]
  - name: ppo
    overrides: [algo=ppo, "model.name_or_path={sft}/model", model.preset=null, reward=model,
                "reward.path={reward_model}/model", trainer.max_steps=2, trainer.val_check_interval=1,
                algo.max_new_tokens=8, algo.eval_max_new_tokens=8, data.batch_size=8, algo.minibatch_size=4]
  - name: ppo_no_kl
    overrides: [algo=ppo, "model.name_or_path={sft}/model", model.preset=null, reward=model,
                "reward.path={reward_model}/model", trainer.max_steps=2, trainer.val_check_interval=1,
                algo.max_new_tokens=8, algo.eval_max_new_tokens=8, data.batch_size=8, algo.minibatch_size=4,
                algo.kl_controller=fixed, algo.kl_coef=0.0]
summary:
  title: tiny pipeline
  rows: [[SFT accuracy, sft, val/accuracy], [RM accuracy, reward_model, val/accuracy],
         [PPO accuracy, ppo, val/accuracy], [PPO final KL, ppo, ppo/kl]]
  compare: [ppo, ppo_no_kl]
"""


@pytest.mark.slow
def test_pipeline_sft_labels_rm_ppo_in_one_command(tmp_path):
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "tiny_pipe.yaml").write_text(PIPELINE)
    run = tmp_path / "run"
    args = ("--config-dir", str(tmp_path / "conf"), "experiment=tiny_pipe", "model=tiny-gpt2",
            "data.num_train=64", "data.num_val=8", "data.eval_batch_size=8", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", f"hydra.run.dir={run}")
    proc = ok(train(*args, cwd=tmp_path, timeout=900))
    results = json.loads((run / "pipeline.json").read_text())
    assert set(results) == {"sft", "labels", "val_labels", "reward_model", "ppo", "ppo_no_kl"}
    assert results["ppo"]["trainer/global_step"] == 2 and "before/val/accuracy" in results["ppo"]
    assert (run / "ppo" / "model" / "config.json").is_file()
    assert (run / "reward_hacking.png").is_file()
    assert "tiny pipeline" in proc.stdout and "PPO final KL" in proc.stdout
    assert Path(run / "labels" / "train.jsonl").is_file()
    # the same command again resumes: every stage is already done
    again = ok(train(*args, cwd=tmp_path, timeout=600))
    assert again.stdout.count("skipping") == 6
