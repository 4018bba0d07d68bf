"""DPO, cDPO, IPO and K-answer rankings: the numbered hand-computed cases (float64 references), the
module on both model families, and the plugin contract."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from feedback_lm.data.comparisons import Comparison
from feedback_lm.errors import UserError
from feedback_lm.testing import Learns, check_plugin, compose
from plugins.dpo import DPO, dpo_loss, dpo_pair_loss, implicit_reward_stats, plackett_luce_loss

PAIR = [[[0], [1]]]  # answer 0 preferred to answer 1


def _logratios(s, s_ref):
    return (torch.tensor(s, dtype=torch.float64) - torch.tensor(s_ref, dtype=torch.float64))[None, :]


# ---------------------------------------------------------------------------------- 1-3: one pair
def test_1_dpo_value_and_implicit_rewards():
    lr = _logratios([-4.0, -6.0], [-5.0, -5.5])  # h = 1 - (-0.5) = 1.5
    assert dpo_loss(lr, PAIR, beta=0.1).item() == pytest.approx(0.620957, abs=1e-6)
    stats = implicit_reward_stats(lr, PAIR, beta=0.1)
    assert stats["reward_chosen"].item() == pytest.approx(0.1)
    assert stats["reward_rejected"].item() == pytest.approx(-0.05)
    assert stats["reward_margin"].item() == pytest.approx(0.15)
    assert stats["reward_accuracy"].item() == 1.0


def test_2_cdpo_value():
    lr = _logratios([-4.0, -6.0], [-5.0, -5.5])
    assert dpo_loss(lr, PAIR, beta=0.1, label_smoothing=0.1).item() == pytest.approx(0.635957, abs=1e-6)


def test_3_ipo_value():
    lr = _logratios([-4.0, -6.0], [-5.0, -5.5])
    assert dpo_loss(lr, PAIR, beta=0.1, loss_type="ipo").item() == pytest.approx(12.25)


# ------------------------------------------------------------------------------ 4: rankings of K=3
def test_4_rankings_of_three_plackett_luce_and_pairs():
    lr = _logratios([-3.0, -5.0, -2.0], [-3.5, -4.0, -3.0])  # β=0.5 -> r = [0.25, -0.5, 0.5]
    ranking = [[[2], [0], [1]]]
    assert dpo_loss(lr, ranking, beta=0.5, ranking="plackett_luce").item() == pytest.approx(1.150794, abs=1e-6)
    assert dpo_loss(lr, ranking, beta=0.5, ranking="pairs").item() == pytest.approx(0.425357, abs=1e-6)
    r = 0.5 * lr[0]
    assert plackett_luce_loss(r, [2, 0, 1]).item() == pytest.approx(1.150794, abs=1e-6)


def test_pairs_weigh_every_prompt_the_same_and_skip_ties():
    """Per-prompt mean, then the mean over prompts; tied answers give no pair."""
    lr = torch.tensor([[1.0, 0.0, -math.inf], [2.0, 1.0, 0.0]], dtype=torch.float64)
    rankings = [[[0], [1]], [[0], [1], [2]]]
    per_pair = lambda h: math.log1p(math.exp(-h))  # -log σ(h), β = 1
    expected = (per_pair(1) + (per_pair(1) + per_pair(2) + per_pair(1)) / 3) / 2
    assert dpo_loss(lr, rankings, beta=1.0).item() == pytest.approx(expected, abs=1e-6)  # fp32 loss
    tied = torch.tensor([[1.0, 5.0, 0.0]], dtype=torch.float64)  # answers 0 and 1 tied above 2
    assert dpo_loss(tied, [[[0, 1], [2]]], beta=1.0).item() == pytest.approx((per_pair(1) + per_pair(5)) / 2)


def test_plackett_luce_refuses_ties_and_k2_is_bradley_terry():
    with pytest.raises(UserError, match="without ties"):
        dpo_loss(torch.zeros(1, 3), [[[0, 1], [2]]], beta=0.1, ranking="plackett_luce")
    lr = _logratios([-4.0, -6.0], [-5.0, -5.5])
    assert dpo_loss(lr, PAIR, 0.1, ranking="plackett_luce").item() == pytest.approx(dpo_loss(lr, PAIR, 0.1).item())


# --------------------------------------------------------------------------------- 5: at step 0
def test_5_step_zero_loss_is_log2_and_gradient_is_minus_beta_over_two():
    beta = 0.1
    s = torch.tensor([[-4.0, -6.0]], dtype=torch.float64, requires_grad=True)
    s_ref = s.detach().clone()  # π_θ = π_ref
    loss = dpo_loss(s - s_ref, PAIR, beta)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)  # log 2 in fp32
    loss.backward()
    assert s.grad[0, 0].item() == pytest.approx(-beta / 2, abs=1e-8)
    assert s.grad[0, 1].item() == pytest.approx(beta / 2, abs=1e-8)
    assert dpo_pair_loss(torch.zeros(3), beta).tolist() == pytest.approx([math.log(2)] * 3)


# ---------------------------------------------------------------- 6: both families, one real step
TOY = [Comparison(prompt="Q: sort b a\nA:", responses=["a b", "b a"], tiers=[[0], [1]]),
       Comparison(prompt="Q: sort d c\nA:", responses=["c d", "d c c"], tiers=[[0], [1]])]


def _module(model: str, overrides=()) -> DPO:
    cfg = compose(["algo=dpo", "data=comparisons", f"model={model}", "run_dir=/tmp/unused", *overrides])
    torch.manual_seed(0)
    module = instantiate(cfg.algo, _convert_="all")
    module.configure_model()
    return module


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_6_one_step_raises_the_chosen_minus_rejected_margin(model):
    module = _module(model)
    with torch.no_grad():
        start = module._step(TOY)[1]["reward_margin"].item()
    assert start == pytest.approx(0.0, abs=1e-6)  # the reference is the initial policy
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5)
    loss, _ = module._step(TOY)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    loss.backward()
    assert all(p.grad is None for p in module.ref.parameters())  # the reference stays frozen
    opt.step()
    with torch.no_grad():
        after = module._step(TOY)[1]
    assert after["reward_margin"].item() > 0 and after["reward_accuracy"].item() == 1.0


def test_reference_under_lora_is_the_policy_with_adapters_off():
    module = _module("tiny-gpt2", ["model.lora.r=4"])
    assert module.ref is None
    with torch.no_grad():
        for n, p in module.policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)  # the adapters now change the policy; the reference must not see them
        margin = module._step(TOY)[1]["reward_margin"].item()
        lr = module._logratios([c.prompt for c in TOY], [c.responses[0] for c in TOY])
    assert lr.abs().max().item() > 1e-4 and margin != 0.0


def test_arguments_and_data_kind_are_checked():
    with pytest.raises(Exception, match="algo.beta"):  # a UserError, wrapped by Hydra's instantiate
        _module("tiny-gpt2", ["algo.beta=0"])
    with pytest.raises(Exception, match="algo.loss_type"):
        _module("tiny-gpt2", ["algo.loss_type=hinge"])
    assert DPO.DATA_KIND == "comparisons"
    module = _module("tiny-gpt2")
    with pytest.raises(UserError, match="data=comparisons"):
        module._step([{"prompt": "x", "target": "y"}])


@pytest.mark.parametrize("variant", [["algo.loss_type=ipo"], ["algo.label_smoothing=0.1"],
                                     ["algo.ranking=plackett_luce", "data.k=2"]])  # k=2: no ties
def test_variants_train_on_generated_comparisons(variant):
    """The generated comparisons rank K=4 answers (ties grouped); each variant trains on them through a
    real Trainer."""
    check_plugin("dpo", models=("tiny-gpt2",), overrides=["data=comparisons", "algo.lr=1e-3", "algo.warmup_steps=0",
                                                          *variant])


def test_check_plugin_both_families():
    check_plugin("dpo", overrides=["data=comparisons", "algo.lr=1e-3", "algo.warmup_steps=0"])


def test_behavioural_check_raises_the_implicit_reward_margin():
    """The opt-in check on comparisons: the implicit-reward margin must rise over a short run."""
    out = check_plugin("dpo", models=(), overrides=["data=comparisons", "algo.warmup_steps=0"],
                       learns=Learns("dpo/reward_margin", ["algo.lr=1e-3"], steps=12))
    assert out["learns"]["last"] > out["learns"]["first"]


def test_validation_shows_greedy_answers_beside_the_preferred_response(tmp_path, capsys):
    """The held-out table: the policy's greedy answers to the first num_samples_shown prompts."""
    import lightning as L

    cfg = compose(["algo=dpo", "data=comparisons", "model=tiny-gpt2", f"run_dir={tmp_path}", "algo.max_new_tokens=5",
                   "algo.num_samples_shown=3", "data.num_val=8", "data.eval_batch_size=8"])
    module = instantiate(cfg.algo, _convert_="all")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, datamodule=instantiate(cfg.data, _convert_="all"), verbose=False)
    rows = module._samples
    assert len(rows) == 3 and list(rows[0]) == ["prompt", "output", "preferred"]
    assert all(len(module.policy.tokenizer(r["output"], add_special_tokens=False).input_ids) <= 5 for r in rows)
    assert "held-out samples" in capsys.readouterr().out


def test_the_smollm2_preset_composes_with_dpo():
    """The preset sizes algo.max_new_tokens for its task; DPO takes it (its sample table)."""
    from feedback_lm.checks import check_config

    cfg = compose(["algo=dpo", "data=comparisons", "model=smollm2-135m", "run_dir=/tmp/unused"])
    check_config(cfg)
    assert cfg.algo.max_new_tokens == 16
