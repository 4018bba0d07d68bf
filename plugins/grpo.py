"""Group Relative Policy Optimization (GRPO; Shao et al. 2024, DeepSeekMath, arXiv 2402.03300 §4.1 Eqs. 3-4),
with the Dr. GRPO options (Liu et al. 2025, arXiv 2503.20783).

For every prompt sample a group of G responses; the advantage of a response is its reward standardised
within the group, on every token of it; no value network. Per token:

    A_i   = (r_i − mean(r)) / (std(r) + 1e-4)          std with ddof=1, per group        [GRPO]
            scale_rewards=none: A_i = r_i − mean(r)                                      [Dr. GRPO]
    ρ_t   = exp(log π(y_t) − log π_old(y_t))            π_old = the rollout's log-probs
    pg_t  = −min(ρ_t·A_i, clip(ρ_t, 1−ε, 1+ε)·A_i)
    kl_t  = exp(q_t) − q_t − 1,  q_t = log π_ref(y_t) − log π(y_t)     (the k3 estimator, Eq. 4)
    loss_t = pg_t + β·kl_t
    aggregate: sequence_mean (per response, then over responses) [GRPO] | token_mean (over all tokens) |
               constant (sum / (N·max_new_tokens)) [Dr. GRPO: no length bias]

One Lightning step is one iteration: ``# 1. collect`` G samples for each of ``data.batch_size`` prompts,
``# 2. score`` them with ``reward=``, ``# 3. buffer`` (the group advantage rides in the rollout's
``advantages`` field), ``# 4. update``: ``num_iterations`` (μ) passes of minibatches, one optimizer step
each. With μ = 1 and one minibatch ρ_t = 1 (π_old = π detached), as in DeepSeekMath.

Run: ``python train.py algo=grpo`` (the task's verifier as reward; start from an SFT model with
``model.name_or_path=<sft run>/model``).

Logs: ``train/loss``, ``rollout/score_mean``, ``rollout/accuracy``, ``grpo/kl`` (mean k3 per token),
``grpo/clipfrac``, ``grpo/zero_std_groups`` (share of groups whose rewards are all equal: no signal);
``val/accuracy`` (greedy), ``val/score``,
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

SCALE_REWARDS = ("group", "none")
AGGREGATES = ("sequence_mean", "token_mean", "constant")


# ------------------------------------------------------------------------------------ pure functions
def grpo_advantages(rewards: torch.Tensor, scale_rewards: str = "group") -> torch.Tensor:
    """Group-relative advantages.

    Args:
        rewards: ``[B,G]`` rewards of the G samples of each prompt, G >= 2.
        scale_rewards: ``group`` divides by the group's std (ddof=1) + 1e-4 (GRPO); ``none`` only centres (Dr. GRPO).

    Returns:
        ``[B,G]`` fp32; 0 for a group whose rewards are all equal.
    """
    if rewards.shape[-1] < 2:
        raise UserError("GRPO needs a group of >= 2 samples per prompt (algo.group_size): one sample has no "
                        "group to be compared with")
    rewards = rewards.float()
    centred = rewards - rewards.mean(-1, keepdim=True)
    if scale_rewards == "none":
        return centred
    return centred / (rewards.std(-1, keepdim=True) + 1e-4)


def grpo_token_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      ref_logprobs: torch.Tensor | None, clip: float = 0.2,
                      beta: float = 0.04) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token GRPO loss ``pg_t + β·kl_t`` (see the module docstring), fp32.

    Args:
        logprobs: ``[N,R]`` current (grad). old_logprobs: ``[N,R]`` rollout. advantages: ``[N]`` (detached).
        ref_logprobs: ``[N,R]`` reference, or None when ``beta == 0``.

    Returns:
        ``(loss_t [N,R], kl_t [N,R], clipped_t [N,R] bool)``.
    """
    logprobs = logprobs.float()
    adv = advantages.detach().float()[:, None]
    ratio = torch.exp(logprobs - old_logprobs.float())
    unclipped, clipped = ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv
    pg = -torch.min(unclipped, clipped)
    if ref_logprobs is None:
        kl = torch.zeros_like(pg)
    else:
        q = ref_logprobs.float() - logprobs
        kl = torch.exp(q) - q - 1.0
    return pg + beta * kl, kl, clipped < unclipped


def aggregate_loss(losses: torch.Tensor, mask: torch.Tensor, how: str = "sequence_mean",
                   max_new_tokens: int | None = None) -> torch.Tensor:
    """Reduce ``[N,R]`` token losses to a scalar: ``sequence_mean`` (each response's token mean, then the
    mean over responses), ``token_mean`` (over every real token) or ``constant`` (the sum over real
    tokens / (N·max_new_tokens), Dr. GRPO)."""
    if how == "sequence_mean":
        return ops.masked_mean(losses, mask, dim=-1).mean()
    if how == "token_mean":
        return ops.masked_mean(losses, mask)
    return ops.masked_sum(losses, mask) / (losses.shape[0] * max_new_tokens)


# ------------------------------------------------------------------------------------------ module
class GRPO(OnlinePolicyModule):
    """GRPO on prompt/target data (``data=<task>``: batches are ``{"prompt": [...], "target": [...]}``).

    Args:
        policy: model config (``conf/model``); dropout is set to 0.
        reward: the ``reward=`` function ``(prompts, responses, targets) -> [N]`` (already built by Hydra).
        group_size: G, samples per prompt (>= 2). beta: β of the k3 KL term (0 = no reference forward).
        clip: ε. scale_rewards: ``group`` | ``none``. aggregate: ``sequence_mean`` | ``token_mean`` | ``constant``.
        num_iterations: μ, passes over each rollout. minibatch_size: episodes per optimizer step (null = all).
        lr, weight_decay, max_grad_norm: AdamW, constant LR.
        temperature, max_new_tokens: sampling; log-probs use the same temperature.
        eval_sampled: validation also draws one seeded sample per held-out prompt at the temperature.
    """

    DATA_KIND: ClassVar[str] = "tasks"

    def __init__(self, policy: ModelConfig | Mapping[str, Any], reward: Any = None, group_size: int = 8,
                 beta: float = 0.04, clip: float = 0.2, scale_rewards: str = "group", aggregate: str = "sequence_mean",
                 num_iterations: int = 1, minibatch_size: int | None = None, lr: float = 1e-6,
                 weight_decay: float = 0.0, max_grad_norm: float | None = 1.0, temperature: float = 1.0,
                 max_new_tokens: int = 32, forward_batch_size: int = 64, fast_generation: bool = False,
                 eval_max_new_tokens: int = 64, eval_sampled: bool = True):
        super().__init__()
        check_args("algo", group_size=(group_size, ">= 2"), beta=(beta, ">= 0"), clip=(clip, "(0, 1)"),
                   num_iterations=(num_iterations, ">= 1"), minibatch_size=(minibatch_size, ">= 1"), lr=(lr, "> 0"),
                   weight_decay=(weight_decay, ">= 0"), max_grad_norm=(max_grad_norm, "> 0"),
                   temperature=(temperature, "> 0"), max_new_tokens=(max_new_tokens, ">= 1"),
                   forward_batch_size=(forward_batch_size, ">= 1"), eval_max_new_tokens=(eval_max_new_tokens, ">= 1"))
        if scale_rewards not in SCALE_REWARDS:
            raise UserError(f"algo.scale_rewards={scale_rewards!r}: use one of {SCALE_REWARDS}")
        if aggregate not in AGGREGATES:
            raise UserError(f"algo.aggregate={aggregate!r}: use one of {AGGREGATES}")
        self.model_config = ModelConfig.coerce(policy)
        self.model_config.dropout = 0.0
        self.reward_fn = require_reward(reward, "grpo")
        self.save_hyperparameters(ignore=["reward"])  # the reward is an object: rebuilt from the config
        self.hparams.policy = self.model_config.to_dict()
        self.automatic_optimization = False

    def training_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        hp = self.hparams
        prompts, targets = task_batch(batch, "grpo")
        # 1. collect + 2. score: G samples per prompt, their scores, rollout (and reference) log-probs
        ro = sample_and_score(self.policy, prompts, targets, self.reward_fn, hp.group_size,
                              max_new_tokens=hp.max_new_tokens, temperature=hp.temperature, fast=hp.fast_generation,
                              ref=self.ref, with_reference=hp.beta > 0, forward_batch_size=hp.forward_batch_size,
                              minibatch_size=hp.minibatch_size)
        groups = ro.scores.view(-1, hp.group_size)
        ro.advantages = grpo_advantages(groups, hp.scale_rewards).view(-1)
        # 3. buffer
        self.buffer.clear()
        self.buffer.add(ro)
        # 4. update
        opt = self.optimizers()
        minibatches = list(self.buffer.minibatches(hp.minibatch_size or len(ro), epochs=hp.num_iterations,
                                                   same_layout=True))  # the rollout pass's layout
        stats: dict[str, list[torch.Tensor]] = {"loss": [], "kl": [], "clipfrac": []}
        for j, mb in enumerate(minibatches):
            lp = self.policy.logprobs(mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask,
                                      hp.temperature)
            token_losses, kl, clipped = grpo_token_losses(lp, mb.logprobs, mb.advantages,
                                                          mb.ref_logprobs if hp.beta > 0 else None, hp.clip, hp.beta)
            loss = aggregate_loss(token_losses, mb.response_mask, hp.aggregate, hp.max_new_tokens)
            self.update(opt, loss, last=j == len(minibatches) - 1)  # one Lightning step = one iteration
            stats["loss"].append(loss.detach())
            stats["kl"].append(ops.masked_mean(kl.detach(), mb.response_mask))
            stats["clipfrac"].append(ops.masked_mean(clipped.float(), mb.response_mask))
        n = len(ro)
        mean = {k: torch.stack(v).mean() for k, v in stats.items()}
        self.log("train/loss", mean["loss"], prog_bar=True, batch_size=n)
        self.log("rollout/score_mean", ro.scores.mean(), prog_bar=True, batch_size=n)
        if targets[0] is not None:
            self.log("rollout/accuracy", exact_match(ro.response, ro.target).mean(), batch_size=n)
        flat = (groups.max(-1).values == groups.min(-1).values).float().mean()
        self.log_dict({"grpo/kl": mean["kl"], "grpo/clipfrac": mean["clipfrac"], "grpo/zero_std_groups": flat},
                      batch_size=n)
