"""GRPO (with the Dr. GRPO options): the numbered hand-computed cases, aggregation, the one-token bandit,
the plugin contract on both families and its behavioural check."""

from __future__ import annotations

import math

import pytest
import torch

from feedback_lm.errors import UserError
from feedback_lm.testing import Learns, check_plugin, compose
from plugins.grpo import GRPO, aggregate_loss, grpo_advantages, grpo_token_losses

FAST = ["algo.max_new_tokens=8", "algo.eval_max_new_tokens=8", "algo.group_size=4"]


def test_10_group_advantages():
    a = grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    assert a[0].tolist() == pytest.approx([0.865875, -0.865875, -0.865875, 0.865875], abs=1e-6)
    assert grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), "none")[0].tolist() == [0.5, -0.5, -0.5, 0.5]


def test_11_equal_rewards_give_zero_advantages():
    a = grpo_advantages(torch.tensor([[0.3, 0.3, 0.3], [1.0, 1.0, 1.0]]))
    assert torch.isfinite(a).all() and a.abs().max().item() == 0.0


def test_12_clipped_policy_term():
    def pg(ratio, adv):
        loss, _, _ = grpo_token_losses(torch.tensor([[math.log(ratio)]]), torch.zeros(1, 1), torch.tensor([adv]),
                                       None, clip=0.2, beta=0.0)
        return loss.item()

    assert pg(1.3, 0.8) == pytest.approx(-0.96)
    assert pg(0.7, -0.5) == pytest.approx(0.4)


def test_13_k3_kl_term():
    lp = torch.tensor([[-1.0]])
    lp_old = lp - math.log(1.3)  # ρ = 1.3, A = 0.8: pg = -0.96 (case 12)
    loss, kl, _ = grpo_token_losses(lp, lp_old, torch.tensor([0.8]), torch.tensor([[-1.5]]), 0.2, 0.04)
    assert kl.item() == pytest.approx(0.106531, abs=1e-6)
    assert loss.item() == pytest.approx(-0.955739, abs=1e-6)


def test_14_group_of_one_is_refused():
    with pytest.raises(UserError, match=">= 2 samples"):
        grpo_advantages(torch.tensor([[1.0], [0.0]]))
    with pytest.raises(Exception, match="algo.group_size"):
        GRPO(compose(["model=tiny-gpt2"]).model, reward=lambda p, r, t: [0.0] * len(r), group_size=1)


def test_aggregations():
    losses = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert aggregate_loss(losses, mask, "sequence_mean").item() == pytest.approx((2.0 + 2.0) / 2)
    assert aggregate_loss(losses, mask, "token_mean").item() == pytest.approx(6.0 / 3)
    assert aggregate_loss(losses, mask, "constant", max_new_tokens=4).item() == pytest.approx(6.0 / (2 * 4))


def test_one_token_bandit_learns_the_rewarded_token():
    """Tabular policy over V=4 tokens, reward 1 for token 1, ρ uniform, β=0.04, G=8, μ=1:
    the probability of the rewarded token passes 0.9."""
    torch.manual_seed(0)
    theta = torch.zeros(4, requires_grad=True)
    ref = torch.log_softmax(torch.zeros(4), -1)
    reward = torch.tensor([0.0, 1.0, 0.0, 0.0])
    opt = torch.optim.Adam([theta], lr=0.1)
    mask = torch.ones(16 * 8, 1, dtype=torch.bool)
    for _ in range(150):
        logp = torch.log_softmax(theta, -1)
        y = torch.multinomial(logp.exp().detach(), 16 * 8, replacement=True)  # 16 prompts x G=8
        lp = logp[y][:, None]
        adv = grpo_advantages(reward[y].view(16, 8)).view(-1)
        token_losses, _, _ = grpo_token_losses(lp, lp.detach(), adv, ref[y][:, None], 0.2, 0.04)
        loss = aggregate_loss(token_losses, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.softmax(theta, -1)[1].item() > 0.9


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_check_plugin_both_families(model):
    check_plugin("grpo", models=(model,), overrides=FAST)


def test_dr_grpo_options_and_reuse():
    check_plugin("grpo", models=("tiny-gpt2",), overrides=[*FAST, "algo.scale_rewards=none", "algo.aggregate=constant",
                                                           "algo.num_iterations=2", "algo.minibatch_size=8",
                                                           "algo.beta=0"])


def test_behavioural_check_raises_the_toy_reward():
    out = check_plugin("grpo", models=(), overrides=FAST,
                       learns=Learns("rollout/score_mean", ["algo.lr=3e-3"], steps=18))
    assert out["learns"]["last"] > out["learns"]["first"]
