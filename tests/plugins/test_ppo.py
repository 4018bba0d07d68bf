"""PPO and PPO-ptx: the hand-computed cases of the LHP port and of InstructGPT's ptx mixing, plus the module-level contract.

(§3.9 #1 compute_rewards, #2 GAE, #3 whitening and #6 the adaptive controller are in tests/unit/test_ops.py
and test_kl.py; #9 generation/forward alignment is in tests/unit/test_policy.py.)
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from feedback_lm import ops
from feedback_lm.optim import lr_factor
from feedback_lm.reference import reference_logprobs
from feedback_lm.rollout import RolloutBuffer
from feedback_lm.testing import QUICK, check_plugin, compose
from plugins.ppo import (
    PPO,
    ema_update,
    policy_loss,
    ppo_loss,
    score_normalization,
    truncate_for_scoring,
    value_loss,
)

TOY_REWARD = ["~reward", "+reward._target_=feedback_lm.rewards.LengthReward"]
FAST = ["algo.max_new_tokens=8", "algo.eval_max_new_tokens=8"]


# ------------------------------------------------------------------------------ §3.9 #4, #5: clipping
@pytest.mark.parametrize("adv,ratio,loss,grad_flows", [(1.0, 1.5, -1.2, False), (1.0, 0.5, -0.5, True),
                                                        (-1.0, 0.5, 0.8, False), (-1.0, 1.5, 1.5, True)])
def test_policy_clip_spec_numbers(adv, ratio, loss, grad_flows):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    out, _ = policy_loss(logp, torch.zeros(1, 1), torch.tensor([[adv]]), torch.ones(1, 1, dtype=torch.bool), 0.2)
    out.backward()
    assert out.item() == pytest.approx(loss, abs=1e-6)
    assert (logp.grad.abs().item() > 0) == grad_flows


@pytest.mark.parametrize("vpred,loss,grad_flows", [(1.0, 0.045, False), (0.6, 0.08, True), (0.0, 0.5, True)])
def test_value_clip_spec_numbers(vpred, loss, grad_flows):
    v = torch.tensor([[vpred]], requires_grad=True)
    out, _ = value_loss(v, torch.tensor([[0.5]]), torch.tensor([[1.0]]), torch.ones(1, 1, dtype=torch.bool), 0.2)
    out.backward()
    assert out.item() == pytest.approx(loss, abs=1e-6)
    assert (v.grad.abs().item() > 0) == grad_flows


# ------------------------------------------------------------------------ §3.9 #10: masking after EOS
def test_ppo_loss_ignores_everything_after_eos():
    torch.manual_seed(0)
    B, T = 4, 6
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]).bool()
    tensors = [torch.randn(B, T) for _ in range(5)]  # logp, values, old_logp, old_values, rewards

    def loss(ts):
        return ppo_loss(*ts, mask)[0]

    garbage = [torch.where(mask, t, torch.randn(B, T) * 100) for t in tensors]
    assert loss(tensors).item() == pytest.approx(loss(garbage).item(), abs=1e-6)


def test_ppo_loss_token_mean_and_returns_before_whitening():
    # one token per row: GAE advantage = r - V, returns = r (before whitening), spec pitfalls 3-4
    rewards, old_values = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.5], [0.5]])
    mask = torch.ones(2, 1, dtype=torch.bool)
    _, _, vf, stats = ppo_loss(torch.zeros(2, 1), old_values, torch.zeros(2, 1), old_values, rewards, mask,
                               whiten_rewards=False)
    # vpred = old -> unclipped = clipped branch: 0.5 * mean((0.5 - [1, 3])^2)
    assert vf.item() == pytest.approx(0.5 * (0.25 + 6.25) / 2)
    assert stats["returns_mean"].item() == pytest.approx(2.0)
    assert stats["advantages_mean"].item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------- §3.9 #11: the bandit
def test_one_token_bandit_converges_to_kl_regularised_optimum():
    """Tabular policy, V=4, T=1, ρ uniform, r=[0,1,0,0], β=0.5 fixed, B=256, 4 epochs of 1 minibatch,
    both whitenings, Adam lr 0.05 annealed linearly to 0 over 400 updates, a scalar value baseline trained
    by the value loss. π* ∝ ρ·exp(r/β) = [0.096255, 0.711235, 0.096255, 0.096255]."""
    torch.manual_seed(0)
    V, B, beta, updates = 4, 256, 0.5, 400
    r = torch.tensor([0.0, 1.0, 0.0, 0.0])
    theta = torch.zeros(V, requires_grad=True)
    value = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([theta, value], lr=0.05, eps=1e-5)
    ref_logp = torch.full((B, 1), -math.log(V))
    mask = torch.ones(B, 1, dtype=torch.bool)
    for u in range(updates):
        with torch.no_grad():
            y = torch.multinomial(torch.softmax(theta, -1), B, replacement=True)
            old_logp = torch.log_softmax(theta, -1)[y][:, None]
            old_values = value.expand(B, 1).clone()
            rewards, _ = ops.kl_penalty_rewards(old_logp, ref_logp, r[y], mask, beta)
        for group in opt.param_groups:
            group["lr"] = 0.05 * lr_factor(u, updates, "linear")
        for _ in range(4):
            logp = torch.log_softmax(theta, -1)[y][:, None]
            loss = ppo_loss(logp, value.expand(B, 1), old_logp, old_values, rewards, mask)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
    pi = torch.softmax(theta.detach(), -1)
    expected = torch.tensor([0.096255, 0.711235, 0.096255, 0.096255])
    assert (pi - expected).abs().max().item() < 0.02, pi


# ---------------------------------------------------------------------------- §3.9 #12: LR schedule
def test_lr_schedule_linear_anneal():
    assert lr_factor(0, 100, "linear") == 1.0
    assert lr_factor(50, 100, "linear") == pytest.approx(0.5)
    # InstructGPT: warmup over 10 iterations starting at 1/10 of the peak, then constant
    assert lr_factor(0, 100, "constant", warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(10, 100, "constant", warmup_steps=10) == 1.0


def test_truncate_for_scoring():
    ids = torch.tensor([[5, 1, 6, 1, 7], [5, 6, 7, 8, 9], [1, 5, 6, 1, 8]])
    out, found = truncate_for_scoring(ids, token_id=1, after=1, pad_token_id=0)
    assert found.tolist() == [True, False, True]
    assert out.tolist() == [[5, 1, 0, 0, 0], [5, 6, 7, 8, 9], [1, 5, 6, 1, 0]]


def test_ema_update_spec_formula():
    ema, theta = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, -1.0])]
    ema_update(ema, theta, 0.992)
    assert torch.allclose(ema[0], 0.992 * torch.tensor([1.0, 2.0]) + 0.008 * torch.tensor([3.0, -1.0]))


# ------------------------------------------------------------------ reward normalisation (Ziegler et al. 2019)
def test_uninformative_score_with_nonzero_mean_biases_towards_stopping():
    """Why PPO normalises the score: with the zero-initialised value head, a CONSTANT score c (no
    information at all) still leaves GAE's residual λ^(T-t)·c in the advantages. With c > 0 the last
    action of every response (the stop token) gets the largest advantage, so PPO learns to stop earlier;
    normalised (mean 0) the same rollout gives no policy gradient at all."""
    B, T, c = 4, 6, 0.7
    lengths = torch.tensor([6, 4, 5, 3])
    mask = torch.arange(T)[None, :] < lengths[:, None]
    zeros = torch.zeros(B, T)
    last = ops.last_index(mask)

    def pg_grad(score):
        rewards, _ = ops.kl_penalty_rewards(zeros, zeros, score, mask, 0.1)  # π = ρ: no KL term
        logprobs = zeros.clone().requires_grad_(True)
        loss = ppo_loss(logprobs, zeros, zeros, zeros, rewards, mask, vf_coef=0.0)[0]
        loss.backward()
        return -logprobs.grad  # ascent direction on each sampled token's log-prob

    g = pg_grad(torch.full((B,), c))
    stop = g[torch.arange(B), last]
    first = g[:, 0]
    assert (stop > 0).all() and (first < 0).all(), (stop, first)  # stopping reinforced, going on punished
    g0 = pg_grad(torch.full((B,), c) - c)  # what normalisation feeds PPO for a constant score
    assert g0.abs().max().item() == 0.0


def test_score_normalization_values():
    raw = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # raw [1,2,3,4] -> g = 0.894427, c = -2.236068 (Ziegler normalisation); mean 0, population std 1
    g, c = score_normalization(raw, "ziegler")
    assert (g, c) == pytest.approx((0.894427, -2.236068), abs=1e-6)
    out = raw * g + c
    assert out.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    assert score_normalization(raw, "bias") == pytest.approx((1.0, -2.5))
    # every sample scored the same (a binary verifier before any success): remove the mean only
    assert score_normalization(torch.zeros(4), "ziegler") == (1.0, 0.0)


def _attach(module, dm, world_size=1):
    """A stand-in trainer for the hooks that read only the datamodule and the world size."""
    module._trainer = SimpleNamespace(datamodule=dm, world_size=world_size, global_rank=0)
    return module


def test_reward_normalisation_on_samples_of_the_initial_policy():
    """The gain and bias come from normalize_samples responses of the INITIAL policy (the reference),
    not from the first rollout, so they stay the same however far the policy has moved; they are
    checkpointed and applied to every later score."""
    module, dm = _module(["algo.reward_normalization=ziegler", "algo.normalize_samples=24"])
    calls = []
    module.reward_fn = lambda p, r, t: calls.append(len(r)) or torch.tensor([float(len(x)) for x in r])
    _attach(module, dm)
    torch.manual_seed(1)
    norm = module.fit_normalization()
    assert sum(calls) == 24
    with torch.no_grad():  # move the policy: the normalisation must not follow it
        for p in module.policy.parameters():
            p.add_(torch.randn_like(p))
    torch.manual_seed(1)
    assert module.fit_normalization() == pytest.approx(norm)
    raw = torch.tensor([4.0])
    assert module._normalize_scores(raw).item() == pytest.approx(4 * norm[0] + norm[1], rel=1e-6)
    ckpt = {}
    module.on_save_checkpoint(ckpt)
    fresh, _ = _module(["algo.reward_normalization=ziegler"])
    fresh.on_load_checkpoint(ckpt)
    assert fresh.score_norm == pytest.approx(module.score_norm)
    none, _ = _module(["algo.reward_normalization=none"])
    assert none._normalize_scores(raw) is raw
    with pytest.raises(Exception, match="reward_normalization"):
        _module(["algo.reward_normalization=whiten"])


# ------------------------------------------------------------------------------ module-level tests
def _module(overrides=(), model="tiny-gpt2") -> tuple[PPO, object]:
    cfg = compose(["algo=ppo", f"model={model}", "run_dir=/tmp/unused", *QUICK, *FAST, *TOY_REWARD, *overrides])
    torch.manual_seed(0)
    module = instantiate(cfg.algo, _convert_="all")
    module.configure_model()
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    return module, dm


def _prompts(dm, n=8):
    rows = dm.train_rows[:n]
    return [r["prompt"] for r in rows], [r["target"] for r in rows]


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_ratio_is_one_and_everything_detached_at_step_zero(model):
    """§3.9 #7 and #8: rollout tensors are detached; the first minibatch has ratio 1 and approx_kl 0;
    a backward pass leaves the reference model without gradients."""
    module, dm = _module(model=model)
    prompts, targets = _prompts(dm)
    rollout, _ = module.make_rollout(prompts, targets)
    for name in ("logprobs", "ref_logprobs", "values", "rewards", "scores"):
        assert not getattr(rollout, name).requires_grad, name
    torch.testing.assert_close(rollout.logprobs, rollout.ref_logprobs, atol=1e-6, rtol=0)  # π = ρ at start
    stats = module.minibatch_backward(rollout)
    assert stats["ratio"].item() == pytest.approx(1.0, abs=1e-6)
    assert stats["approx_kl"].item() == pytest.approx(0.0, abs=1e-10)
    assert all(p.grad is None for p in module.ref.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.policy.parameters())


def test_rollout_scores_and_kl_rewards_in_eos_mode():
    module, dm = _module()
    prompts, targets = _prompts(dm)
    rollout, stats = module.make_rollout(prompts, targets)
    last = ops.last_index(rollout.response_mask)
    rows = torch.arange(len(prompts))
    # KL is zero at step 0, so the reward is exactly the score on the last real token
    torch.testing.assert_close(rollout.rewards[rows, last], rollout.scores, atol=1e-5, rtol=0)
    assert set(stats) >= {"ppo/kl", "rollout/score_mean", "rollout/response_len", "time/generate"}


@pytest.mark.parametrize("mode", ["eos_masking", "lhp_fixed_length"])
def test_fast_generation_rollout_is_aligned_with_the_forward_pass(mode):
    module, dm = _module(["algo.fast_generation=true", f"algo.mode={mode}"])
    rollout, _ = module.make_rollout(*_prompts(dm))
    stats = module.minibatch_backward(rollout)
    assert stats["ratio"].item() == pytest.approx(1.0, abs=1e-6)
    if mode == "lhp_fixed_length":
        assert rollout.response_ids.shape[1] == 8 and bool(rollout.response_mask.all())


def test_fixed_length_mode_samples_exactly_T_tokens_and_penalises_missing_eos():
    module, dm = _module(["algo.mode=lhp_fixed_length", "algo.penalty_reward_value=-7.0"])
    prompts, targets = _prompts(dm)
    rollout, _ = module.make_rollout(prompts, targets)
    assert rollout.response_ids.shape[1] == 8 and bool(rollout.response_mask.all())
    has_eos = (rollout.response_ids == module.policy.eos_token_id).any(-1)
    assert torch.all(rollout.scores[~has_eos] == -7.0)
    assert torch.all(rollout.scores[has_eos] != -7.0)


def test_lora_reference_is_the_base_with_adapters_disabled():
    module, dm = _module(["model.lora.r=4"])
    assert module.ref is None, "with LoRA the reference must not be a second copy of the weights"
    prompts, targets = _prompts(dm, 4)
    rollout, _ = module.make_rollout(prompts, targets)
    with torch.no_grad():  # move the adapters: the policy changes, the reference must not
        for n, p in module.policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    args = (rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)
    ref_after = reference_logprobs(module.policy, module.ref, *args)
    policy_after = module.policy.logprobs(*args) * rollout.response_mask
    torch.testing.assert_close(ref_after, rollout.ref_logprobs, atol=1e-5, rtol=0)
    assert (policy_after - rollout.logprobs).abs().max() > 1e-3


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_ptx_gradient_is_additive_and_skips_the_separate_value_net(tmp_path):
    """§4.5 #1 (accumulated grad = ∇L_ppo + 27.8·∇L_ptx) and #4 (ptx never reaches the value net)."""
    from plugins.reward_model import RewardModel

    rm = RewardModel(policy=compose(["model=tiny-gpt2"]).model)
    rm.configure_model()
    rm.save_pretrained(str(tmp_path / "rm"))
    sep = ["algo.value_model=separate", f"algo.value_init_from={tmp_path / 'rm'}", "algo.ptx_ratio=2"]
    module, dm = _module(sep)
    rollout, _ = module.make_rollout(*_prompts(dm, 4))
    from feedback_lm.ptx import PtxStream

    def run(ptx_coef: float, skip_ppo: bool = False):
        module.zero_grad(set_to_none=True)
        module.hparams.ptx_coef = ptx_coef
        module.ptx = PtxStream([(r["prompt"], r["response"]) for r in dm.train_rows[:32]], seed=0)
        if skip_ppo:
            module._ptx_backward(2 * len(rollout))
        else:
            module.minibatch_backward(rollout)
        return _grads(module)

    both, ppo_only, ptx_only = run(27.8), run(0.0), run(1.0, skip_ppo=True)
    for name, g in both.items():
        expected = ppo_only.get(name, 0) + 27.8 * ptx_only.get(name, torch.zeros_like(g))
        torch.testing.assert_close(g, expected, atol=1e-5, rtol=1e-4)
    value_names = [n for n in both if n.startswith(("value_net.", "value_head."))]
    assert value_names and all(n not in ptx_only for n in value_names)
    for n in value_names:
        torch.testing.assert_close(both[n], ppo_only[n], atol=0, rtol=0)


def _fit(overrides, max_steps=1, model="tiny-gpt2", root=None, reward=tuple(TOY_REWARD)):
    cfg = compose(["algo=ppo", f"model={model}", "run_dir=/tmp/unused", *QUICK, *FAST, *reward, *overrides])
    L.seed_everything(0, verbose=False)
    module = instantiate(cfg.algo, _convert_="all")
    dm = instantiate(cfg.data, _convert_="all")
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                        default_root_dir=str(root) if root else None,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    return module, trainer


def test_ptx_coef_zero_is_bit_identical_to_ppo():
    """§4.5 #2."""
    ppo, _ = _fit([])
    ptx0, _ = _fit(["algo.ptx_coef=0.0", "algo.ptx_ratio=8"])
    for (n, a), (_, b) in zip(ppo.named_parameters(), ptx0.named_parameters()):
        assert torch.equal(a, b), n


def test_one_optimizer_step_per_minibatch_and_ptx_accounting():
    """§4.5 #3 and #6 at small scale (batch 16, minibatch 4, 1 epoch -> 4 steps, 8x16 ptx sequences);
    one Lightning step per iteration; the LR is constant within an iteration (§3.9 #12)."""
    lrs: list[float] = []
    original = torch.optim.Adam.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        module, trainer = _fit(["data.batch_size=16", "algo.minibatch_size=4", "algo.ppo_epochs=1",
                                "algo.ptx_coef=1.0", "algo.ptx_ratio=8", "algo.schedule=linear"], max_steps=2)
    finally:
        torch.optim.Adam.step = original
    assert trainer.global_step == 2  # iterations, not optimizer steps
    assert len(lrs) == 8  # 2 iterations x 4 minibatches
    assert lrs[:4] == [lrs[0]] * 4 and lrs[4:] == [lrs[4]] * 4 and lrs[4] == pytest.approx(lrs[0] / 2)
    opt = trainer.optimizers[0]
    steps = {int(s["step"]) for s in opt.state.values()}
    assert steps == {8}
    assert trainer.callback_metrics["ptx/sequences"].item() == 8 * 16
    assert trainer.callback_metrics["ptx/ratio"].item() == 8
    # InstructGPT's numbers: batch 512, minibatch 64, 1 epoch -> 8 steps and 8 x 512 pretraining sequences
    buf = RolloutBuffer()
    buf.add([{"prompt_ids": torch.ones(1, dtype=torch.long), "response_ids": torch.ones(1, dtype=torch.long)}] * 512)
    steps = buf.num_minibatches(64)
    assert steps == 8 and steps * 8 * 64 == 4096  # ptx_ratio 8 x minibatch 64 per step = 8 x 512 episodes


def test_ema_weights_are_tracked_and_saved(tmp_path):
    module, trainer = _fit(["algo.ema_decay=0.5"], max_steps=1)
    ema = module._ema_buffers()
    live = module._policy_params()
    assert any(not torch.equal(e, p) for e, p in zip(ema, live))
    module.save_pretrained(str(tmp_path / "model"))
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    name = next(n for n, p in module.policy.model.named_parameters() if p.requires_grad)
    index = [n for n, p in module.policy.named_parameters() if p.requires_grad].index("model." + name)
    torch.testing.assert_close(saved.state_dict()[name], ema[index])


def test_kl_controller_state_survives_checkpoint():
    module, trainer = _fit(["algo.kl_controller=adaptive", "algo.kl_target=0.001"], max_steps=2)
    assert module.kl_ctl.value != 0.1  # the KL was above a tiny target: β moved
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    other, _ = _module(["algo.kl_controller=adaptive"])
    other.on_load_checkpoint(ckpt)
    assert other.kl_ctl.value == module.kl_ctl.value


def test_bad_reward_output_is_one_clear_error():
    from feedback_lm.errors import UserError

    module, dm = _module()
    module.reward_fn = lambda p, r, t: [1.0]
    with pytest.raises(UserError, match="one float per response"):
        module.make_rollout(*_prompts(dm, 4))


def _tiny_reward_model(path):
    from plugins.reward_model import RewardModel

    rm = RewardModel(policy=compose(["model=tiny-gpt2"]).model)
    rm.configure_model()
    rm.save_pretrained(str(path))
    return str(path)


def test_refit_reward_model_fits_its_labels(tmp_path):
    from feedback_lm.data.comparisons import Comparison
    from feedback_lm.refit import refit_reward_model
    from plugins.reward_model import load_reward_model

    rm = load_reward_model(_tiny_reward_model(tmp_path / "rm"))
    comps = [Comparison(prompt=f"Q: {w}\nA:", responses=[" " + w, " zzz", " " + w[::-1] + "!"],
                        tiers=[[0], [2], [1]]) for w in ["apple", "bird", "cat", "dog", "egg", "fish", "goat", "hat"]]
    head_before = rm.head.linear.weight.detach().clone()
    stats = refit_reward_model(rm, comps, epochs=30, lr=2e-3, batch_size=4)
    assert stats["accuracy"] >= 0.85, stats
    assert not torch.equal(head_before, rm.head.linear.weight)
    assert all(not p.requires_grad for p in rm.parameters())  # back to a frozen scorer


def test_ppo_with_online_reward_model_refits(tmp_path):
    from feedback_lm.data.comparisons import write_comparisons
    from feedback_lm.data.datamodule import generated_comparisons

    rm = _tiny_reward_model(tmp_path / "rm")
    initial = tmp_path / "labels.jsonl"
    write_comparisons(initial, generated_comparisons("word_sorting", 6, k=3, seed=0, template="Q: {input}\nA:",
                                                     difficulty={"min_words": 2, "max_words": 3, "vocab_size": 30}))
    head = None
    module, trainer = _fit([f"algo.refit={{every: 1, prompts: 4, k: 3, max_new_tokens: 8, task: word_sorting, "
                            f"initial_labels: {initial}}}"],
                           max_steps=3, root=tmp_path, reward=["reward=model", f"reward.path={rm}"])
    head = module.reward_fn.model.head.linear.weight
    m = trainer.callback_metrics
    assert m["refit/labels"].item() >= 6 and "refit/accuracy" in m  # a random policy's samples may all tie
    assert (tmp_path / "online_labels.jsonl").is_file()
    from plugins.reward_model import load_reward_model

    assert not torch.equal(load_reward_model(rm).head.linear.weight, head)  # the reward model was refitted
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    assert len(ckpt["refit"]["comparisons"]) == int(m["refit/labels"].item())


@pytest.mark.parametrize("algo", ["ppo", "ppo_ptx"])
def test_check_plugin_both_families(algo):
    check_plugin(algo, overrides=[*FAST, *TOY_REWARD, "algo.ptx_ratio=2"])


def test_online_refits_queue_samples_for_people_and_use_what_is_labeled(tmp_path):
    """Issue 7's online mode: PPO queues its samples in a labeling campaign; what a person has labeled
    (here through the store, as the web app does) is in the comparison set of the next refit."""
    import json as _json

    from feedback_lm.label.config import CampaignConfig
    from feedback_lm.label.store import Store, open_campaign

    camp = tmp_path / "camp"
    camp.mkdir()
    Store.create(str(camp / "labels.sqlite"), "camp", CampaignConfig(mode="rank")).close()
    (camp / "campaign.json").write_text(_json.dumps({"name": "camp", "db": None}))
    rm = _tiny_reward_model(tmp_path / "rm")
    refit = f"algo.refit={{every: 1, prompts: 3, k: 2, max_new_tokens: 8, campaign: {camp}}}"
    module, trainer = _fit([refit], max_steps=2, root=tmp_path, reward=["reward=model", f"reward.path={rm}"])
    assert trainer.callback_metrics["refit/new_labels"].item() == 3  # queued for people, none labeled yet
    store = open_campaign(camp)
    assert store.counts()["items"] == 3 and module.refitter.comparisons == []
    labeler_id, _ = store.labeler_for_token(store.add_labeler("ada"))
    item = store.next_item(labeler_id)
    store.submit(labeler_id, item.id, {"idempotency_key": "online-label-1", "ranking": [1, 0]})
    module.refitter.collect(module.policy, trainer.datamodule.train_rows, iteration=2)
    assert len(module.refitter.comparisons) == 1 and module.refitter.comparisons[0].tiers == [[1], [0]]
    meta = module.refitter.comparisons[0].meta
    assert meta["source"] == "online" and meta["sampling"]["k"] == 2 and meta["labeler"] == "ada"
    assert module.refitter.refit()["accuracy"] in (0.0, 1.0)


def test_validation_logs_seeded_sampled_metrics_without_touching_training_rng():
    """``val/sampled_*``: one sample per held-out prompt at the training temperature, the same draws at
    every evaluation, and the global RNG (which drives training's sampling) left where it was."""
    def validate(module, dm):
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=1)
        return trainer.validate(module, datamodule=dm, verbose=False)[0]

    module, trainer = _fit([], max_steps=1, reward=("reward=verifier",))
    runs, states = [], []
    for sampled in (True, True, False):
        module.hparams.eval_sampled = sampled
        torch.manual_seed(123)
        runs.append(validate(module, trainer.datamodule))
        states.append(torch.get_rng_state())
    assert {"val/accuracy", "val/score", "val/sampled_accuracy", "val/sampled_score"} <= set(runs[0])
    assert runs[0]["val/sampled_score"] == runs[1]["val/sampled_score"]
    assert 0.0 <= runs[0]["val/sampled_accuracy"] <= 1.0
    assert "val/sampled_score" not in runs[2]
    # the data loader draws from the global RNG either way; the sampled evaluation adds nothing to that
    assert torch.equal(states[0], states[2])


# ------------------------------------------------------------------ deviations fixed (reliability issue)
def test_refit_restarts_from_the_initial_reward_model_backbone(tmp_path):
    """Every refit trains a fresh head on the reward model's INITIAL backbone, not on the last refit's."""
    from feedback_lm.data.comparisons import Comparison
    from feedback_lm.refit import OnlineRefitter, RefitConfig
    from feedback_lm.rewards import ModelReward

    reward = ModelReward(_tiny_reward_model(tmp_path / "rm"))
    initial = {k: v.clone() for k, v in reward.model.policy.state_dict().items()}
    refitter = OnlineRefitter(RefitConfig(every=1, task="word_sorting", epochs=1, batch_size=2), reward, tmp_path)
    refitter.comparisons = [Comparison(prompt="Q: a\nA:", responses=[" a", " b"], tiers=[[0], [1]])] * 2
    with torch.no_grad():  # as if a previous refit had trained the backbone
        for p in reward.model.policy.parameters():
            p.add_(1.0)
    refitter.cfg.epochs = 0  # no training this time: the backbone must be back at its initial weights
    refitter.refit()
    for k, v in reward.model.policy.state_dict().items():
        assert torch.equal(v, initial[k]), k


def test_lr_anneal_without_max_steps_uses_the_epochs():
    """trainer.max_steps=-1: the linear anneal spans the epochs' batches (it used to drop to 0 after step 1)."""
    module, _ = _module()
    module._trainer = SimpleNamespace(max_steps=-1, estimated_stepping_batches=40)
    assert module._total_iterations() == 40
    assert lr_factor(1, module._total_iterations(), "linear") == pytest.approx(1 - 1 / 40)
    module._trainer = SimpleNamespace(max_steps=-1, estimated_stepping_batches=float("inf"))
    with pytest.warns(UserWarning, match="max_steps or trainer.max_epochs"):
        assert lr_factor(5, module._total_iterations(), "linear") == pytest.approx(1.0)
    module._trainer = SimpleNamespace(max_steps=12, estimated_stepping_batches=40)
    assert module._total_iterations() == 12


def test_dropout_is_off_and_top_k_warns():
    module, _ = _module(["model.dropout=0.3"])
    assert module.model_config.dropout == 0.0
    assert all(m.p == 0.0 for m in module.policy.modules() if isinstance(m, torch.nn.Dropout))
    with pytest.warns(UserWarning, match="top_k=5"):
        _module(["algo.top_k=5"])


def test_minibatch_of_empty_prompts_does_not_crash():
    """A minibatch whose prompts are all empty re-pads to one (padding) prompt column, so the causal
    forward still has the position that predicts the first response token."""
    from feedback_lm.rollout import Rollout

    module, _ = _module()
    eos = module.policy.eos_token_id
    rows = [{"prompt_ids": torch.zeros(0, dtype=torch.long), "response_ids": torch.tensor([5, 6, eos])},
            {"prompt_ids": torch.zeros(0, dtype=torch.long), "response_ids": torch.tensor([7, eos])}]
    mb = Rollout.collate(rows, pad_token_id=module.policy.pad_token_id)
    assert mb.prompt_ids.shape == (2, 1) and not mb.prompt_mask.any()
    logprobs, _, _ = module._logprobs_values(mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask)
    assert logprobs.shape == (2, 3) and torch.isfinite(logprobs).all()


def test_ptx_defaults_give_instructgpt_ratio():
    """InstructGPT: one inner epoch, so the realised pretraining ratio is ptx_ratio (8x) episodes."""
    cfg = compose(["algo=ppo_ptx"])
    assert cfg.algo.ppo_epochs == 1 and cfg.algo.ptx_ratio == 8


def test_argument_ranges_are_checked():
    for bad, name in [("algo.kl_coef=-1", "algo.kl_coef"), ("algo.top_p=0", "algo.top_p"),
                      ("algo.normalize_samples=1", "algo.normalize_samples"), ("algo.cliprange=0", "algo.cliprange")]:
        with pytest.raises(Exception, match=name):
            _module([bad])
