"""The reward model's core pieces: pair indices with per-prompt weights, the [B,Kmax] layout of a
batch of comparisons, and save -> load of a scorer."""

from __future__ import annotations

import math

import pytest
import torch

from feedback_lm.data.comparisons import Comparison
from feedback_lm.models import ScalarHead
from feedback_lm.reward_head import (
    RewardScorer,
    comparison_rewards,
    load_reward_model,
    pair_index,
    ranking_loss,
    reward_backbone,
)
from feedback_lm.testing import compose


def test_pair_index_weights_each_prompt_equally():
    b, w, lo, weight = pair_index([[[0], [1]], [[2], [0, 1]]])
    assert b.tolist() == [0, 1, 1] and w.tolist() == [0, 2, 2] and lo.tolist() == [1, 0, 1]
    assert weight.tolist() == pytest.approx([1.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="no strictly ordered pair"):
        pair_index([[[0, 1]]])


def test_ranking_loss_per_prompt_mean_value():
    """prompt A (K=2, rewards [1,0]) and B (K=3, [2,1,0]) -> (softplus(-1) + 0.251150) / 2 = 0.282206."""
    r = torch.tensor([[1.0, 0.0, -math.inf], [2.0, 1.0, 0.0]])
    assert ranking_loss(r, [[[0], [1]], [[0], [1], [2]]]).item() == pytest.approx(0.282206, abs=1e-6)


def test_comparison_rewards_one_call_and_padding():
    calls = []

    def score(prompts, responses):
        calls.append(len(responses))
        return torch.tensor([float(len(r)) for r in responses])

    batch = [Comparison(prompt="p", responses=["a", "bb"], tiers=[[0], [1]]),
             Comparison(prompt="q", responses=["c", "dd", "eee"], tiers=[[2], [1], [0]])]
    out = comparison_rewards(score, batch)
    assert calls == [5]  # K forwards per prompt in ONE call, never 2·C(K,2)
    assert out[0, :2].tolist() == [1.0, 2.0] and out[0, 2].item() == -math.inf
    assert out[1].tolist() == [1.0, 2.0, 3.0]


def test_scorer_save_load_and_reset(tmp_path):
    torch.manual_seed(0)
    policy = reward_backbone(compose(["model=tiny-gpt2"]).model)
    rm = RewardScorer(policy, ScalarHead(policy.hidden_size, init="normal"), pooling="mean")
    rm.gain.fill_(2.0), rm.bias.fill_(-1.0)
    rm.save_pretrained(tmp_path)
    loaded = load_reward_model(str(tmp_path))
    assert loaded.pooling == "mean" and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded.rewards(["Q: a"], [" b"]), rm.rewards(["Q: a"], [" b"]))
        assert loaded.rewards(["Q: a"], [" b"]).item() == pytest.approx(
            2.0 * loaded.raw_rewards(["Q: a"], [" b"]).item() - 1.0, rel=1e-5)
    head = loaded.head.linear.weight.clone()
    loaded.reset_head()
    assert float(loaded.gain) == 1.0 and float(loaded.bias) == 0.0
    assert not torch.equal(head, loaded.head.linear.weight)
