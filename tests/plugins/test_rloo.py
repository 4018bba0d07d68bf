"""RLOO: the numbered hand-computed cases, the one-token bandit, the module on both families, the
plugin contract and its behavioural check."""

from __future__ import annotations

import pytest
import torch

from feedback_lm.errors import UserError
from feedback_lm.testing import Learns, check_plugin, compose
from plugins.rloo import RLOO, kl_shaped_rewards, rloo_advantages, rloo_loss

FAST = ["algo.max_new_tokens=8", "algo.eval_max_new_tokens=8"]


def test_7_leave_one_out_advantages():
    a = rloo_advantages(torch.tensor([[1.0, 0.0, 0.5, 0.5]]))
    assert a[0].tolist() == pytest.approx([0.666667, -0.666667, 0.0, 0.0], abs=1e-6)
    r = torch.tensor([[1.0, 0.0, 0.5, 0.5]])  # the definition: R_i minus the mean of the others
    loo = torch.stack([r[0, i] - torch.cat([r[0, :i], r[0, i + 1:]]).mean() for i in range(4)])
    torch.testing.assert_close(a[0], loo)


def test_8_kl_in_the_reward():
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0])
    kl_seq = torch.tensor([2.0, 0.5, 1.0, 0.0])
    mask = torch.ones(4, 1, dtype=torch.bool)
    rewards, kl = kl_shaped_rewards(scores, kl_seq[:, None], torch.zeros(4, 1), mask, beta=0.05)
    assert rewards.tolist() == pytest.approx([0.9, -0.025, 0.95, 0.0])
    assert kl.tolist() == pytest.approx(kl_seq.tolist())
    assert rloo_advantages(rewards[None])[0].tolist() == pytest.approx([0.591667, -0.641667, 0.658333, -0.608333],
                                                                       abs=1e-6)


def test_9_one_sample_is_refused():
    with pytest.raises(UserError, match="k >= 2"):
        rloo_advantages(torch.tensor([[1.0], [0.0]]))
    with pytest.raises(Exception, match="algo.k"):
        RLOO(compose(["model=tiny-gpt2"]).model, reward=lambda p, r, t: [0.0] * len(r), k=1)


def test_loss_is_reinforce_and_the_clipped_form_has_its_gradient_at_ratio_one():
    s = torch.tensor([-2.0, -3.0], requires_grad=True)
    adv = torch.tensor([0.5, -1.0])
    loss = rloo_loss(s, adv)
    assert loss.item() == pytest.approx(-(0.5 * -2.0 + -1.0 * -3.0) / 2)
    (g_plain,) = torch.autograd.grad(loss, s)
    (g_clip,) = torch.autograd.grad(rloo_loss(s, adv, s.detach(), 0.2), s)
    torch.testing.assert_close(g_plain, g_clip)
    assert g_plain.tolist() == pytest.approx([-0.25, 0.5])  # ascent raises the better sample's log-prob


def test_one_token_bandit_learns_the_rewarded_token():
    """Tabular policy over V=4 tokens, one-token responses, reward 1 for token 1, ρ uniform, β=0.05, k=4:
    the probability of the rewarded token passes 0.9."""
    torch.manual_seed(0)
    theta = torch.zeros(4, requires_grad=True)
    ref = torch.log_softmax(torch.zeros(4), -1)
    reward = torch.tensor([0.0, 1.0, 0.0, 0.0])
    opt = torch.optim.Adam([theta], lr=0.1)
    for _ in range(150):
        logp = torch.log_softmax(theta, -1)
        y = torch.multinomial(logp.exp().detach(), 32 * 4, replacement=True)  # 32 prompts x k=4
        lp = logp[y]
        rewards, _ = kl_shaped_rewards(reward[y], lp.detach()[:, None], ref[y][:, None],
                                       torch.ones(len(y), 1, dtype=torch.bool), 0.05)
        loss = rloo_loss(lp, rloo_advantages(rewards.view(32, 4)).view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.softmax(theta, -1)[1].item() > 0.9


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_check_plugin_both_families(model):
    check_plugin("rloo", models=(model,), overrides=FAST)


def test_ppo_epochs_reuse_and_verifier_reward():
    """Several optimizer steps per iteration (clipped reuse) still count one training step each."""
    results = check_plugin("rloo", models=("tiny-gpt2",), overrides=[*FAST, "algo.ppo_epochs=2", "algo.minibatch_size=8"])
    assert results["tiny-gpt2"]["train/loss"] == results["tiny-gpt2"]["train/loss"]  # finite, logged


def test_behavioural_check_raises_the_toy_reward():
    out = check_plugin("rloo", models=(), overrides=FAST, learns=Learns("rollout/score_mean", ["algo.lr=3e-3"], steps=18))
    assert out["learns"]["last"] > out["learns"]["first"]
