"""Reward modelling: the hand-computed cases on the pure functions, the read-out, and the plugin contract."""

import math

import pytest
import torch
import torch.nn.functional as F

from plugins.reward_model import (
    best_of_k_loss,
    demonstration_bias,
    pairwise_accuracy,
    ranking_loss,
    ranking_pairs,
    ziegler_gain_bias,
)


def test_best_of_4_value():
    """Spec §2.d #1."""
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert best_of_k_loss(r, torch.tensor([3])).item() == pytest.approx(0.440190, abs=1e-6)
    assert best_of_k_loss(r, torch.tensor([0])).item() == pytest.approx(3.440190, abs=1e-6)


def test_best_of_4_gradient():
    """Spec §2.d #2: dL/dr = softmax(r) - onehot(best)."""
    r = torch.tensor([[0.3, -1.0, 2.0, 0.5]], requires_grad=True)
    best_of_k_loss(r, torch.tensor([1])).backward()
    expected = torch.softmax(r.detach(), -1) - F.one_hot(torch.tensor([1]), 4)
    torch.testing.assert_close(r.grad, expected)


def test_best_of_k_with_missing_candidates():
    r = torch.tensor([[1.0, 2.0, -math.inf], [1.0, 2.0, 3.0]])
    loss = best_of_k_loss(r, torch.tensor([1, 2]))
    expected = (best_of_k_loss(r[:1, :2], torch.tensor([1])) + best_of_k_loss(r[1:], torch.tensor([2]))) / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_ranking_loss_k3():
    """Spec §2.d #3: ranked rewards [2,1,0] -> (2*softplus(-1) + softplus(-2)) / 3 = 0.251150."""
    r = torch.tensor([[2.0, 1.0, 0.0]])
    assert ranking_loss(r, [[[0], [1], [2]]]).item() == pytest.approx(0.251150, abs=1e-6)


def test_ranking_loss_per_prompt_normalisation():
    """Spec §2.d #4: each prompt weighs the same: 0.282206, not the flat mean 0.266678."""
    r = torch.tensor([[1.0, 0.0, -math.inf], [2.0, 1.0, 0.0]])
    loss = ranking_loss(r, [[[0], [1]], [[0], [1], [2]]])
    assert loss.item() == pytest.approx(0.282206, abs=1e-6)


def test_k2_is_bradley_terry():
    """Spec §2.d #5."""
    r = torch.tensor([[0.7, -0.4]])
    assert ranking_loss(r, [[[0], [1]]]).item() == pytest.approx(F.softplus(torch.tensor(-1.1)).item(), abs=1e-6)


def test_ties_give_no_pairs():
    assert ranking_pairs([[2], [0, 3], [1]]) == [(2, 0), (2, 3), (2, 1), (0, 1), (3, 1)]
    with pytest.raises(ValueError):
        ranking_loss(torch.zeros(1, 2), [[[0, 1]]])


def test_ziegler_normalisation():
    """Spec §2.d #6."""
    raw = torch.tensor([1.0, 2.0, 3.0, 4.0])
    g, c = ziegler_gain_bias(raw)
    assert g == pytest.approx(0.894427, abs=1e-6) and c == pytest.approx(-2.236068, abs=1e-6)
    normed = g * raw.double() + c
    assert normed.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert normed.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)


def test_instructgpt_bias():
    """Spec §2.d #7: demo rewards [1,2,3] -> c = -2; differences unchanged."""
    raw = torch.tensor([1.0, 2.0, 3.0])
    c = demonstration_bias(raw)
    assert c == pytest.approx(-2.0)
    assert (raw + c).mean().item() == pytest.approx(0.0)


def test_shift_invariance_and_scale_sensitivity():
    """Spec §2.d #9."""
    r = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
    tiers = [[[2], [3], [0], [1]]]
    for loss in (lambda x: best_of_k_loss(x, torch.tensor([2])), lambda x: ranking_loss(x, tiers)):
        assert loss(r + 5.0).item() == pytest.approx(loss(r).item(), abs=1e-6)
        assert loss(2 * r).item() != pytest.approx(loss(r).item(), abs=1e-3)


def test_pairwise_accuracy():
    r = torch.tensor([[2.0, 1.0, 3.0]])
    assert pairwise_accuracy(r, [[[0], [1], [2]]]) == (1, 3)


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("preset", ["tiny-t5", "tiny-gpt2"])
def test_reward_read_out_ignores_batch_padding(preset, pooling):
    """Spec §2.d #8 at the module level: a response scores the same alone and next to a longer one."""
    from plugins.reward_model import RewardModel

    torch.manual_seed(0)
    rm = RewardModel({"name": preset, "preset": preset, "tokenizer": "byte"}, pooling=pooling)
    rm.configure_model()
    rm.eval()
    alone = rm.rewards(["Q: sort b a\nA:"], [" a b"])
    batch = rm.rewards(["Q: sort b a\nA:", "Q: a much longer prompt\nA:"], [" a b", " a much longer response"])
    torch.testing.assert_close(alone[0], batch[0], atol=1e-5, rtol=0)
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert "head.linear.weight" in trainable


def test_mean_pooling_averages_the_head_over_response_positions():
    from plugins.reward_model import RewardModel

    torch.manual_seed(0)
    rm = RewardModel({"name": "tiny-t5", "preset": "tiny-t5", "tokenizer": "byte"}, pooling="mean")
    rm.configure_model()
    rm.eval()
    enc = rm.policy.encode_batch(["Q: sort b a\nA:"], [" a b"])
    hidden = rm.policy(**enc, output_hidden=True).hidden[0]  # [R,d], R = 4 bytes + EOS
    assert hidden.shape[0] == 5
    torch.testing.assert_close(rm.raw_rewards(["Q: sort b a\nA:"], [" a b"])[0], rm.head(hidden).mean())


def test_unknown_pooling_is_a_user_error():
    from feedback_lm.errors import UserError
    from plugins.reward_model import RewardModel

    with pytest.raises(UserError, match="algo.pooling"):
        RewardModel({"name": "tiny-t5", "preset": "tiny-t5", "tokenizer": "byte"}, pooling="max")


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_saved_reward_model_reloads_with_its_pooling(tmp_path, pooling):
    from plugins.reward_model import RewardModel, load_reward_model

    torch.manual_seed(0)
    rm = RewardModel({"name": "tiny-t5", "preset": "tiny-t5", "tokenizer": "byte"}, pooling=pooling)
    rm.configure_model()
    rm.eval()
    rm.save_pretrained(str(tmp_path))
    loaded = load_reward_model(str(tmp_path))
    assert loaded.pooling == pooling
    prompts, responses = ["Q: sort b a\nA:"] * 2, [" a b", " b a c"]
    torch.testing.assert_close(loaded.rewards(prompts, responses), rm.rewards(prompts, responses), atol=1e-5, rtol=0)


def test_generated_comparisons_are_ranked_by_the_verifier():
    from feedback_lm.data.datamodule import generated_comparisons

    comps = generated_comparisons("word_sorting", 50, 4, seed=0, template="Q: {input}\nA:",
                                  difficulty={"min_words": 2, "max_words": 3, "vocab_size": 30})
    assert len(comps) >= 45
    for c in comps:
        assert c.pairs() and c.meta["scores"][c.tiers[0][0]] == 1.0, "the gold answer is alone at the top"
        assert " " + c.meta["target"] == c.responses[c.tiers[0][0]]


def test_reward_model_plugin_contract():
    from feedback_lm.testing import check_plugin

    for loss in ("ranking", "best_of_k"):
        results = check_plugin("reward_model", overrides=["data=comparisons", f"algo.loss={loss}"],
                               models=("tiny-t5", "tiny-gpt2") if loss == "ranking" else ("tiny-gpt2",))
        for metrics in results.values():
            assert {"train/loss", "val/accuracy", "val/top1", "val/reward_chosen", "val/reward_rejected"} <= set(metrics)


def test_ziegler_normalisation_end_to_end(tmp_path):
    """normalize=ziegler: after training, rewards of fresh samples from the initial LM have mean ~0, std ~1,
    and the saved model reloads with the same rewards."""
    import lightning as L
    from hydra.utils import instantiate

    from feedback_lm.testing import compose
    from plugins.reward_model import load_reward_model

    cfg = compose(["algo=reward_model", "model=tiny-gpt2", "data=comparisons", f"run_dir={tmp_path}",
                   "algo.normalize=ziegler", "algo.normalize_samples=32", "algo.max_new_tokens=8",
                   "data.num_train=32", "data.num_val=8", "data.batch_size=8"])
    L.seed_everything(0)
    rm = instantiate(cfg.algo, _convert_="all")
    dm = instantiate(cfg.data, _convert_="all")
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(rm, datamodule=dm)
    after = rm._rho_samples[32:]
    with torch.no_grad():
        r = torch.cat([rm.rewards([p], [y]) for p, y in after])
    assert r.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert r.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    rm.save_pretrained(str(tmp_path / "rm"))
    loaded = load_reward_model(str(tmp_path / "rm"))
    p, y = after[0]
    torch.testing.assert_close(loaded.rewards([p], [y]), rm.eval().rewards([p], [y]), atol=1e-5, rtol=0)


def test_best_of_k_rows_report_top1_and_chosen_rejected(tmp_path):
    """Best-of-K data ({"best": i} rows): validation logs top-1 and the chosen/rejected reward means."""
    import json

    import lightning as L

    from feedback_lm.data.datamodule import ComparisonDataModule
    from plugins.reward_model import RewardModel

    rows = [{"prompt": f"Q: sort {w} a\nA:", "responses": [" a " + w, " " + w + " a", " x", " a"], "best": 0}
            for w in ("b", "c", "d", "e")]
    path = tmp_path / "best.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = ComparisonDataModule(source="jsonl", path=str(path), val_path=str(path), batch_size=2, eval_batch_size=2)
    torch.manual_seed(0)
    rm = RewardModel({"name": "tiny-gpt2", "preset": "tiny-gpt2", "tokenizer": "byte"}, loss="best_of_k")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(rm, datamodule=dm, verbose=False)[0]
    assert {"val/accuracy", "val/top1", "val/reward_chosen", "val/reward_rejected"} <= set(metrics)
    # recompute: top-1 = share of prompts whose best response gets the highest reward
    rm.eval()
    with torch.no_grad():
        r = rm._batch_rewards(dm.val_rows)
    assert metrics["val/top1"] == pytest.approx((r.argmax(-1) == 0).float().mean().item(), abs=1e-6)
    assert metrics["val/reward_chosen"] == pytest.approx(r[:, 0].mean().item(), abs=1e-5)
    assert metrics["val/reward_rejected"] == pytest.approx(r[:, 1:].mean().item(), abs=1e-5)
