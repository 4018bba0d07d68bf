"""REINFORCE Leave-One-Out (RLOO; Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740 §3).

For every prompt sample k >= 2 responses from the current policy; each response's baseline is the mean
reward of the OTHER k − 1 (Kool et al. 2019), so no value network is needed:

    R_i = score(x, y_i) − β · Σ_t (log π(y_i,t) − log π_ref(y_i,t))   sequence-level KL in the reward (rollout log-probs)
    A_i = R_i − mean_{j≠i} R_j = k/(k−1) · (R_i − mean_j R_j)
    L   = −mean_i( A_i · Σ_t log π(y_i,t) )                           REINFORCE, A detached

One Lightning step is one iteration: ``# 1. collect`` k samples for each of ``data.batch_size`` prompts,
``# 2. score`` them with ``reward=`` and price the KL, ``# 3. buffer`` (the advantage rides in the
rollout's ``advantages`` field), ``# 4. update``: one optimizer step on the whole rollout (on-policy, as
the paper). ``ppo_epochs > 1`` reuses each rollout with a per-sequence clipped ratio (our option).

Run: ``python train.py algo=rloo`` (the task's verifier as reward; start from an SFT model with
``model.name_or_path=<sft run>/model``, since a model that never answers right gets no signal).

Logs: ``train/loss``, ``rollout/score_mean``, ``rollout/accuracy``, ``rloo/kl`` (mean sequence KL to the
reference), ``rloo/advantage_std``, ``rloo/lr``; ``val/accuracy`` (greedy), ``val/score``,
``val/sampled_accuracy`` and ``val/sampled_score`` (one seeded sample per held-out prompt).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from feedback_lm import ops
from feedback_lm.checks import check_args
from feedback_lm.errors import UserError
from feedback_lm.evaluation import exact_match
from feedback_lm.models import ModelConfig
from feedback_lm.online import OnlinePolicyModule, require_reward, sample_and_score, task_batch


# ------------------------------------------------------------------------------------ pure functions
def kl_shaped_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``R = score − β·KL_seq`` with ``KL_seq = Σ_t (log π − log π_ref)`` over the response tokens.

    Args:
        scores: ``[N]``. logprobs, ref_logprobs: ``[N,R]`` rollout log-probs (no grad). mask: ``[N,R]``.

    Returns:
        ``(R [N], KL_seq [N])``, fp32.
    """
    kl = ops.seq_logprob(logprobs.float() - ref_logprobs.float(), mask)
    return scores.float() - beta * kl, kl


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages ``A_i = R_i − mean_{j≠i} R_j = k/(k−1)·(R_i − mean_j R_j)`` per group.

    Args:
        rewards: ``[B,k]`` rewards of the k samples of each prompt, k >= 2.
    """
    k = rewards.shape[-1]
    if k < 2:
        raise UserError("RLOO needs k >= 2 samples per prompt (algo.k): the baseline of one sample is the others")
    rewards = rewards.float()
    return k / (k - 1) * (rewards - rewards.mean(-1, keepdim=True))


def rloo_loss(seq_logprobs: torch.Tensor, advantages: torch.Tensor, old_seq_logprobs: torch.Tensor | None = None,
              clip: float = 0.2) -> torch.Tensor:
    """``−mean(A · log π(y|x))`` (REINFORCE); with ``old_seq_logprobs`` the per-sequence clipped surrogate
    ``−mean(min(ρA, clip(ρ, 1±ε)A))``, ``ρ = exp(log π − log π_old)``, which has the same gradient at ρ = 1.

    Args:
        seq_logprobs: ``[N]`` current ``Σ_t log π`` (grad). advantages: ``[N]`` (detached here).
    """
    adv = advantages.detach().float()
    if old_seq_logprobs is None:
        return -(adv * seq_logprobs.float()).mean()
    ratio = torch.exp(seq_logprobs.float() - old_seq_logprobs.float())
    return -torch.min(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv).mean()


# ------------------------------------------------------------------------------------------ module
class RLOO(OnlinePolicyModule):
    """RLOO on prompt/target data (``data=<task>``: batches are ``{"prompt": [...], "target": [...]}``).

    Args:
        policy: model config (``conf/model``); dropout is set to 0.
        reward: the ``reward=`` function ``(prompts, responses, targets) -> [N]`` (already built by Hydra).
        k: samples per prompt (>= 2). beta: β of the sequence-level KL penalty (0 = none, no reference pass).
        lr, weight_decay, max_grad_norm: AdamW, constant LR.
        ppo_epochs: passes over each rollout (1 = on-policy REINFORCE); clip: ε of the clipped ratio when > 1.
        minibatch_size: episodes per optimizer step (null = the whole rollout).
        temperature, max_new_tokens: sampling; log-probs use the same temperature.
        eval_sampled: validation also draws one seeded sample per held-out prompt at the temperature.
    """

    DATA_KIND: ClassVar[str] = "tasks"

    def __init__(self, policy: ModelConfig | Mapping[str, Any], reward: Any = None, k: int = 4, beta: float = 0.05,
                 lr: float = 1e-5, weight_decay: float = 0.0, max_grad_norm: float | None = 1.0, ppo_epochs: int = 1,
                 clip: float = 0.2, minibatch_size: int | None = None, temperature: float = 1.0,
                 max_new_tokens: int = 32, forward_batch_size: int = 64, fast_generation: bool = False,
                 eval_max_new_tokens: int = 64, eval_sampled: bool = True):
        super().__init__()
        check_args("algo", k=(k, ">= 2"), beta=(beta, ">= 0"), lr=(lr, "> 0"), weight_decay=(weight_decay, ">= 0"),
                   max_grad_norm=(max_grad_norm, "> 0"), ppo_epochs=(ppo_epochs, ">= 1"), clip=(clip, "(0, 1)"),
                   minibatch_size=(minibatch_size, ">= 1"), temperature=(temperature, "> 0"),
                   max_new_tokens=(max_new_tokens, ">= 1"), forward_batch_size=(forward_batch_size, ">= 1"),
                   eval_max_new_tokens=(eval_max_new_tokens, ">= 1"))
        self.model_config = ModelConfig.coerce(policy)
        self.model_config.dropout = 0.0
        self.reward_fn = require_reward(reward, "rloo")
        self.save_hyperparameters(ignore=["reward"])  # the reward is an object: rebuilt from the config
        self.hparams.policy = self.model_config.to_dict()
        self.automatic_optimization = False

    def training_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        hp = self.hparams
        prompts, targets = task_batch(batch, "rloo")
        # 1. collect + 2. score: k samples per prompt, their scores, rollout and reference log-probs
        ro = sample_and_score(self.policy, prompts, targets, self.reward_fn, hp.k, max_new_tokens=hp.max_new_tokens,
                              temperature=hp.temperature, fast=hp.fast_generation, ref=self.ref,
                              with_reference=hp.beta > 0, forward_batch_size=hp.forward_batch_size,
                              minibatch_size=hp.minibatch_size)
        ref_lp = ro.ref_logprobs if hp.beta > 0 else ro.logprobs
        rewards, kl = kl_shaped_rewards(ro.scores, ro.logprobs, ref_lp, ro.response_mask, hp.beta)
        ro.advantages = rloo_advantages(rewards.view(-1, hp.k)).view(-1)
        # 3. buffer
        self.buffer.clear()
        self.buffer.add(ro)
        # 4. update
        opt = self.optimizers()
        minibatches = list(self.buffer.minibatches(hp.minibatch_size or len(ro), epochs=hp.ppo_epochs,
                                                   same_layout=True))  # the rollout pass's layout
        losses = []
        for j, mb in enumerate(minibatches):
            lp = self.policy.logprobs(mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask,
                                      hp.temperature)
            old = ops.seq_logprob(mb.logprobs, mb.response_mask) if hp.ppo_epochs > 1 else None
            loss = rloo_loss(ops.seq_logprob(lp, mb.response_mask), mb.advantages, old, hp.clip)
            self.update(opt, loss, last=j == len(minibatches) - 1)  # one Lightning step = one iteration
            losses.append(loss.detach())
        n = len(ro)
        self.log("train/loss", torch.stack(losses).mean(), prog_bar=True, batch_size=n)
        self.log("rollout/score_mean", ro.scores.mean(), prog_bar=True, batch_size=n)
        if targets[0] is not None:
            self.log("rollout/accuracy", exact_match(ro.response, ro.target).mean(), batch_size=n)
        self.log_dict({"rloo/kl": kl.mean(), "rloo/advantage_std": ro.advantages.std(),
                       "rloo/lr": torch.tensor(opt.optimizer.param_groups[0]["lr"])}, batch_size=n)
