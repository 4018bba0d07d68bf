"""GRPO and RLOO (with ``ppo_epochs > 1``) stay exact under CPU bf16 autocast: before any update every
token's log-prob in the update equals the rollout's, so the ratio starts at exactly 1.

A bf16 matrix product on the CPU rounds differently depending on its row count and the padding around a
row; the rollout's forward pass therefore runs in chunks of the update's minibatch size and the update's
minibatches keep the rollout's layout (``sample_and_score(minibatch_size=...)``,
``RolloutBuffer.minibatches(same_layout=True)``). PPO's counterpart is ``test_ppo_bf16.py``.
"""

from __future__ import annotations

import pytest

import plugins.grpo
import plugins.rloo
from feedback_lm.testing import QUICK, compose, fit_one_iteration

TOY_REWARD = ["~reward", "+reward._target_=feedback_lm.rewards.LengthReward"]
CASES = {  # algo: (overrides, module, loss function, which arguments are (current, old) log-probs)
    "grpo": (["algo.group_size=4", "algo.num_iterations=2"], plugins.grpo, "grpo_token_losses", (0, 1)),
    "rloo": (["algo.k=4", "algo.ppo_epochs=2"], plugins.rloo, "rloo_loss", (0, 2)),
}


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
@pytest.mark.parametrize("algo", sorted(CASES))
def test_update_logprobs_equal_rollout_logprobs_under_cpu_bf16(algo, model, tmp_path, monkeypatch):
    extra, plugin, loss_name, (cur, old) = CASES[algo]
    # lr 1e-30 (> 0 is required): Adam moves no fp32 weight, so every minibatch sees the rollout's policy
    cfg = compose([f"algo={algo}", f"model={model}", f"run_dir={tmp_path}", *QUICK, *TOY_REWARD, *extra,
                   "data.batch_size=4", "algo.minibatch_size=4", "algo.lr=1e-30", "algo.beta=0.0",
                   "algo.max_new_tokens=12", "algo.eval_max_new_tokens=4"])
    diffs: list[float] = []
    loss_fn = getattr(plugin, loss_name)

    def probe(*args, **kwargs):
        diffs.append((args[cur].detach().float() - args[old].float()).abs().max().item())
        return loss_fn(*args, **kwargs)

    monkeypatch.setattr(plugin, loss_name, probe)
    seen = fit_one_iteration(cfg, precision="bf16-mixed")
    assert seen["prompt_lengths"] > 1, "the batch must need padding for this test to mean anything"
    assert len(diffs) == 8  # 16 episodes in minibatches of 4, two passes
    assert max(diffs) == 0.0, f"update log-probs differ from the rollout's by up to {max(diffs):.2e}"
