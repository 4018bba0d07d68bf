"""PPO with a KL penalty to a frozen reference (Ziegler et al. 2019) and PPO-ptx (InstructGPT).

A code-exact port of lm-human-preferences (arXiv 1909.08593, github.com/openai/lm-human-preferences) plus
PPO-ptx (arXiv 2203.02155 §3.5 Eq. 2, App. C.4). Run: ``python train.py algo=ppo`` (``algo=ppo_ptx``).

One Lightning training step is one PPO *iteration*::

    rollout     sample responses for a batch of prompts (no grad), then one forward pass for the old
                log-probs and values, one for the reference log-probs, and the reward function's scores
    rewards     r_t = -β·(log π - log ρ) on every token, plus the score on the last one
    update      `ppo_epochs` passes of shuffled minibatches from the shared rollout buffer; each
                minibatch: reward whitening, GAE, advantage whitening, clipped policy + value loss
                [PPO-ptx: + γ·pretraining NLL, accumulated into the same step], one optimizer step
    KL control  β is updated from this rollout's KL and used from the next rollout

Before the first iteration the score is normalised (Ziegler: mean 0, std 1) on ``normalize_samples``
responses of the initial policy, and again after every online reward-model refit.

The losses are pure functions on tensors (``ppo_loss``, ``policy_loss``, ``value_loss``), unit-tested
against hand-computed numbers; the module only wires models, data and those functions. Shared pieces
(reference policy, reward-model loading and normalisation, several optimizer steps per iteration) come
from ``feedback_lm``.

Logs: ``train/loss``, ``rollout/score_mean`` (raw score), ``rollout/accuracy``, ``ppo/kl``, ``ppo/kl_coef``,
``ppo/clipfrac``, ``ppo/value_loss``, ``ppo/lr``, ``time/*``; ``val/accuracy`` (greedy), ``val/sampled_accuracy``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from feedback_lm import ops
from feedback_lm.checks import check_args
from feedback_lm.display import log_samples, print_samples
from feedback_lm.errors import UserError
from feedback_lm.evaluation import exact_match
from feedback_lm.kl import build_kl_controller
from feedback_lm.models import ModelConfig, ScalarHead
from feedback_lm.online import optimizer_step, require_reward, score_responses, task_batch, validate
from feedback_lm.optim import clippable, fused_kernel, lr_factor
from feedback_lm.policy import Policy
from feedback_lm.ptx import PtxStream
from feedback_lm.reference import frozen_reference, reference_logprobs, reference_policy, save_policy
from feedback_lm.reward_head import load_reward_model, ziegler_gain_bias
from feedback_lm.rollout import Rollout, RolloutBuffer

MODES = ("eos_masking", "lhp_fixed_length")
REWARD_NORMALIZATIONS = ("ziegler", "bias", "none")
VALUE_MODELS = ("shared", "separate")


# ============================================================================================ losses
def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate, token mean over the minibatch.

    Args:
        logprobs: ``[B,T]`` current log-probs (grad). old_logprobs: ``[B,T]`` rollout log-probs.
        advantages: ``[B,T]`` (whitened, detached). mask: ``[B,T]``. cliprange: ε.

    Returns:
        ``(loss, stats)`` with ``clipfrac`` (share of tokens where the clipped branch is taken) and
        ``approx_kl`` = ½·mean((logp − old)²).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    losses1 = -advantages * ratio
    losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = ops.masked_mean(torch.max(losses1, losses2), mask)
    with torch.no_grad():
        stats = {"clipfrac": ops.masked_mean((losses2 > losses1).float(), mask),
                 "approx_kl": 0.5 * ops.masked_mean(log_ratio.detach() ** 2, mask),
                 "ratio": ops.masked_mean(ratio.detach(), mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``0.5·mean(max((v − R)², (v_clip − R)²))``, clip around the OLD value (LHP).

    Args:
        values: ``[B,T]`` current value predictions (grad). old_values, returns: ``[B,T]``. mask: ``[B,T]``.
        cliprange_value: ε_v.
    """
    vclip = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    losses1 = (values - returns) ** 2
    losses2 = (vclip - returns) ** 2
    loss = 0.5 * ops.masked_mean(torch.max(losses1, losses2), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": ops.masked_mean((losses2 > losses1).float(), mask)}
    return loss, stats


def ppo_loss(logprobs: torch.Tensor, values: torch.Tensor, old_logprobs: torch.Tensor, old_values: torch.Tensor,
             rewards: torch.Tensor, mask: torch.Tensor, *, cliprange: float = 0.2, cliprange_value: float = 0.2,
             vf_coef: float = 0.1, gamma: float = 1.0, lam: float = 0.95, whiten_rewards: bool = True,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one PPO minibatch, a port of [LHP:train_policy.py PPOTrainer.loss].

    Every input but ``logprobs`` and ``values`` is a stored rollout tensor. Reward whitening (scale
    only), GAE with the old values, ``returns = adv + old_values`` (before advantage whitening) and
    advantage whitening all happen here, per minibatch and over its valid tokens, in fp32.

    Args:
        logprobs: ``[B,T]`` current log-probs at the sampling temperature (grad).
        values: ``[B,T]`` current value predictions (grad).
        old_logprobs, old_values, rewards: ``[B,T]`` from the rollout.
        mask: ``[B,T]`` valid response tokens (all True in lhp_fixed_length mode).

    Returns:
        ``(loss, pg_loss, vf_loss, stats)``; ``loss = pg_loss + vf_coef·vf_loss`` (no entropy bonus).
    """
    mask = mask.bool()
    old_logprobs, old_values, rewards = old_logprobs.float(), old_values.float(), rewards.float()
    with torch.no_grad():
        if whiten_rewards:
            rewards = ops.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = ops.gae(rewards, old_values, mask, gamma, lam)
        advantages = ops.masked_whiten(advantages, mask, shift_mean=True)
    pg_loss, pg_stats = policy_loss(logprobs.float(), old_logprobs, advantages, mask, cliprange)
    vf_loss, vf_stats = value_loss(values.float(), old_values, returns, mask, cliprange_value)
    loss = pg_loss + vf_coef * vf_loss
    with torch.no_grad():
        var_returns = ops.masked_var(returns, mask)
        stats = {**pg_stats, **vf_stats,
                 "returns_mean": ops.masked_mean(returns, mask),
                 "advantages_mean": ops.masked_mean(advantages, mask),
                 "var_explained": 1.0 - ops.masked_mean((values.detach().float() - returns) ** 2, mask)
                 / var_returns.clamp(min=1e-8)}
    return loss, pg_loss, vf_loss, stats


def truncate_for_scoring(response_ids: torch.Tensor, token_id: int, after: int, pad_token_id: int,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """LHP post-processing of fixed-length samples, used for scoring only.

    Everything after the first ``token_id`` at index ``>= after`` becomes padding (the token itself is
    kept). Rows without such a token are flagged: they get the penalty score instead of the reward.

    Args:
        response_ids: ``[B,T]``.

    Returns:
        ``(ids [B,T], found [B] bool)``.
    """
    T = response_ids.shape[1]
    idx = torch.arange(T, device=response_ids.device)
    hit = (response_ids == token_id) & (idx >= after)
    found = hit.any(-1)
    first = torch.where(found, hit.float().argmax(-1), torch.full_like(found, T - 1, dtype=torch.long))
    keep = idx[None, :] <= first[:, None]
    return response_ids.masked_fill(~keep, pad_token_id), found


def score_normalization(raw: torch.Tensor, mode: str = "ziegler") -> tuple[float, float]:
    """``(gain, bias)`` for ``gain·score + bias``: mean 0 and population std 1 over ``raw`` (``ziegler``), or
    mean 0 only (``bias``, and ``ziegler`` when every score is the same)."""
    if mode == "bias" or float(raw.double().std(unbiased=False)) <= 1e-8:
        return 1.0, -float(raw.double().mean())
    return ziegler_gain_bias(raw)


def ema_update(ema: Sequence[torch.Tensor], params: Sequence[torch.Tensor], decay: float) -> None:
    """In place ``ema ← decay·ema + (1 − decay)·θ`` (InstructGPT's EMA of weights, decay 0.992)."""
    with torch.no_grad():
        for e, p in zip(ema, params):
            e.mul_(decay).add_(p.detach().to(e.dtype), alpha=1.0 - decay)


# ====================================================================================== the module
class PPO(L.LightningModule):
    """PPO with a KL penalty (``algo=ppo``) and PPO-ptx (``algo=ppo_ptx``: ``ptx_coef > 0``).

    The policy is ``model`` (start it from an SFT run with ``model.name_or_path=<sft run>/model``); the
    reference is a frozen copy of the initial policy, or, when the policy has LoRA adapters, the same
    weights with the adapters disabled (no second copy). Rollout batch = ``data.batch_size`` prompts.

    Args:
        policy: model config (``conf/model``).
        reward: a reward function ``(prompts, responses, targets) -> [B]`` (``conf/reward``).
        lr: peak learning rate (Adam, eps ``adam_eps``).
        schedule: ``linear`` (LHP: anneal to 0 over the run, constant within an iteration) or ``constant``.
        warmup_iterations: linear warmup (InstructGPT: 10 iterations from 1/10 of the peak).
        ppo_epochs: passes over each rollout. minibatch_size: rollouts per optimizer step.
        cliprange, cliprange_value, vf_coef, gamma, lam, whiten_rewards: LHP's PPO settings.
        kl_controller: ``fixed`` or ``adaptive``; kl_coef: initial β; kl_target (nats), kl_horizon (episodes).
        temperature, top_k, top_p: sampling; every log-prob (old, new, reference) uses the same temperature.
        max_new_tokens: response length T.
        mode: ``eos_masking`` (stop at EOS, mask after it) or ``lhp_fixed_length`` (exactly T tokens; score
            the text cut after ``truncate_token`` (default EOS) at index ≥ ``truncate_after``, or
            ``penalty_reward_value`` when there is none).
        value_model: ``shared`` (a zero-initialised head on the policy trunk, LHP) or ``separate`` (a second
            network initialised from the reward model at ``value_init_from``, InstructGPT), LR ``vf_lr``.
        ptx_coef: γ of PPO-ptx (0 = plain PPO). ptx_data: ``demos`` (the task's demonstrations) or a text
            file. ptx_ratio: pretraining sequences per PPO episode in each optimizer step.
        ema_decay: keep an EMA of the policy weights (InstructGPT: 0.992), used for validation and saving.
        max_grad_norm: clip the global gradient norm after all gradients have accumulated (None = off).
        forward_batch_size: chunk size of the no-grad forward passes of a rollout (at most
            ``minibatch_size``: the update's shapes, for an exact first ratio under bf16).
        refit: online reward-model refits (:mod:`feedback_lm.refit`): ``{every: N, prompts, k, task, ...}``;
            every N iterations sample, label, append and refit the reward model, then go on with it.
        fast_generation: sample with the static-cache fast path (:mod:`feedback_lm.sampling`; compiled
            decode step with CUDA graphs on GPU) instead of plain ``generate``.
        reward_normalization: "ziegler" (default; Ziegler's reward-model normalisation applied to any reward:
            gain and bias that give the scores of ``normalize_samples`` responses of the initial policy mean
            0 and std 1, as LHP's normalised reward model has; β then acts on that scale), "bias" (mean
            only) or "none" (the reward as it comes). Re-estimated the same way after an online refit.
        normalize_samples: responses of the initial policy for the normalisation (LHP: 256).
        eval_max_new_tokens: decoding budget for validation.
        eval_sampled: validation also draws one sample per held-out prompt at the training temperature
            (seeded: the same draws every evaluation) and logs ``val/sampled_accuracy`` and
            ``val/sampled_score``: the distribution PPO optimises, beside the greedy ``val/accuracy``.
    """

    DATA_KIND: ClassVar[str] = "tasks"

    def __init__(self, policy: ModelConfig | Mapping[str, Any], reward: Any = None, lr: float = 1e-5,
                 adam_eps: float = 1e-5, weight_decay: float = 0.0, schedule: str = "linear",
                 warmup_iterations: int = 0, ppo_epochs: int = 4, minibatch_size: int = 16,
                 cliprange: float = 0.2, cliprange_value: float = 0.2, vf_coef: float = 0.1, gamma: float = 1.0,
                 lam: float = 0.95, whiten_rewards: bool = True, kl_controller: str = "fixed",
                 kl_coef: float = 0.2, kl_target: float | None = 6.0, kl_horizon: int = 10000,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, max_new_tokens: int = 32,
                 mode: str = "eos_masking", truncate_token: int | None = None, truncate_after: int = 0,
                 penalty_reward_value: float = -1.0, value_model: str = "shared",
                 value_init_from: str | None = None, vf_lr: float | None = None, ptx_coef: float = 0.0,
                 ptx_data: str | None = "demos", ptx_ratio: int = 8, ptx_chunk_chars: int = 256,
                 ptx_forward_batch_size: int = 64, ema_decay: float | None = None,
                 max_grad_norm: float | None = None, forward_batch_size: int = 64, fast_generation: bool = False,
                 refit: Mapping[str, Any] | None = None, reward_normalization: str = "ziegler",
                 normalize_samples: int = 256, eval_max_new_tokens: int = 64, eval_sampled: bool = True,
                 num_samples_shown: int = 5):
        super().__init__()
        check_args("algo", lr=(lr, ">= 0"), adam_eps=(adam_eps, "> 0"), weight_decay=(weight_decay, ">= 0"),
                   warmup_iterations=(warmup_iterations, ">= 0"), ppo_epochs=(ppo_epochs, ">= 1"),
                   minibatch_size=(minibatch_size, ">= 1"), cliprange=(cliprange, "(0, 1)"),
                   cliprange_value=(cliprange_value, "> 0"), vf_coef=(vf_coef, ">= 0"), gamma=(gamma, "[0, 1]"),
                   lam=(lam, "[0, 1]"), kl_coef=(kl_coef, ">= 0"), kl_target=(kl_target, "> 0"),
                   kl_horizon=(kl_horizon, ">= 1"), temperature=(temperature, "> 0"), top_k=(top_k, ">= 0"),
                   top_p=(top_p, "(0, 1]"), max_new_tokens=(max_new_tokens, ">= 1"),
                   truncate_after=(truncate_after, ">= 0"), vf_lr=(vf_lr, "> 0"), ptx_coef=(ptx_coef, ">= 0"),
                   ptx_ratio=(ptx_ratio, ">= 1"), ptx_chunk_chars=(ptx_chunk_chars, ">= 1"),
                   ptx_forward_batch_size=(ptx_forward_batch_size, ">= 1"), ema_decay=(ema_decay, "[0, 1)"),
                   max_grad_norm=(max_grad_norm, "> 0"), forward_batch_size=(forward_batch_size, ">= 1"),
                   normalize_samples=(normalize_samples, ">= 2"), eval_max_new_tokens=(eval_max_new_tokens, ">= 1"))
        if mode not in MODES:
            raise UserError(f"algo.mode={mode!r}: use one of {MODES}")
        if value_model not in VALUE_MODELS:
            raise UserError(f"algo.value_model={value_model!r}: use one of {VALUE_MODELS}")
        if value_model == "separate" and not value_init_from:
            raise UserError("algo.value_model=separate needs algo.value_init_from=<reward model dir> "
                            "(the value network starts from the reward model, InstructGPT §3.5)")
        if reward_normalization not in REWARD_NORMALIZATIONS:
            raise UserError(f"algo.reward_normalization={reward_normalization!r}: use one of {REWARD_NORMALIZATIONS}")
        if schedule not in ("linear", "constant"):
            raise UserError(f"algo.schedule={schedule!r}: use 'linear' (LHP) or 'constant' (InstructGPT)")
        self.model_config = ModelConfig.coerce(policy)
        self.model_config.dropout = 0.0  # "no dropout for policy training" (Ziegler et al. 2019)
        if top_k or top_p < 1.0:
            rank_zero_warn(f"algo.top_k={top_k} / algo.top_p={top_p} truncate the sampling distribution, while the "
                           f"PPO ratio and the KL use the full softmax at the temperature; the samples are then "
                           f"off-policy for both. Use top_k=0 top_p=1.0 unless you mean it.")
        self.reward_fn = require_reward(reward, "ppo")
        self.save_hyperparameters(ignore=["reward"])
        self.hparams.policy = self.model_config.to_dict()
        self.kl_ctl = build_kl_controller(kl_controller, kl_coef, kl_target, kl_horizon)
        self.score_norm: tuple[float, float] | None = None  # (gain, bias), set at fit start and after refits
        self.automatic_optimization = False
        self.ptx: PtxStream | None = None
        self.refitter = None
        self._refit_state: dict[str, Any] | None = None  # restored by on_load_checkpoint, used at fit start
        self._ptx_state: dict[str, Any] | None = None
        self._samples: list[dict[str, Any]] = []

    # ---------------------------------------------------------------------------------------- models
    def configure_model(self) -> None:
        if hasattr(self, "policy"):
            return
        hp = self.hparams
        self.policy = Policy.from_config(self.model_config)
        self.ref = frozen_reference(self.policy)  # the INITIAL policy; None under LoRA (adapters off)
        if hp.value_model == "shared":
            self.value_head = ScalarHead(self.policy.hidden_size, init="zero")  # LHP: zero-initialised
        else:
            rm = load_reward_model(hp.value_init_from)  # loads frozen; the value net trains
            out_emb, in_emb = rm.policy.model.get_output_embeddings(), rm.policy.model.get_input_embeddings()
            rm.policy.requires_grad_(True)
            if out_emb is not None and out_emb.weight is not in_emb.weight:
                out_emb.requires_grad_(False)  # an untied unembedding is unused by a value head
            rm.head.requires_grad_(True)
            self.value_net = rm.policy.train()
            self.value_head = rm.head
            self.value_head.linear.weight.data.mul_(float(rm.gain))
            self.value_head.linear.bias.data.mul_(float(rm.gain)).add_(float(rm.bias))
        if hp.ema_decay:
            for name, p in self.policy.named_parameters():
                if p.requires_grad:
                    self.register_buffer("ema__" + name.replace(".", "__"), p.detach().clone(), persistent=True)
        self.buffer = RolloutBuffer(pad_token_id=self.policy.pad_token_id, seed=0)

    def _policy_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    def _ema_buffers(self) -> list[torch.Tensor]:
        return [getattr(self, "ema__" + n.replace(".", "__")) for n, p in self.policy.named_parameters()
                if p.requires_grad]

    @contextlib.contextmanager
    def _ema_weights(self):
        """Swap the EMA weights into the policy (validation, saving), then back."""
        if not self.hparams.ema_decay:
            yield
            return
        live = [p.detach().clone() for p in self._policy_params()]
        with torch.no_grad():
            for p, e in zip(self._policy_params(), self._ema_buffers()):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self._policy_params(), live):
                    p.copy_(w)

    def _logprobs_values(self, prompt_ids, prompt_mask, response_ids, response_mask, with_entropy: bool = False):
        """Current-policy log-probs ``[B,R]`` and values ``[B,R]`` (and mean entropy) in one pass when the
        value head shares the trunk."""
        shared = self.hparams.value_model == "shared"
        out = self.policy(prompt_ids, prompt_mask, response_ids, response_mask, output_hidden=shared)
        logits = out.logits.float() / self.hparams.temperature
        logprobs = ops.gather_logprobs(logits, response_ids)
        if shared:
            values = self.value_head(out.hidden)
        else:
            values = self.value_head(self.value_net(prompt_ids, prompt_mask, response_ids, response_mask,
                                                    hidden_only=True).hidden)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = ops.masked_mean(ops.entropy_from_logits(logits.detach()), response_mask)
        return logprobs, values, entropy

    # --------------------------------------------------------------------------------------- rollout
    @torch.no_grad()
    def make_rollout(self, prompts: Sequence[str], targets: Sequence[str | None]) -> tuple[Rollout, dict[str, float]]:
        """Sample, score and price one batch of episodes. Everything is detached."""
        hp, dev = self.hparams, self.device
        timings = {}
        t0 = time.perf_counter()
        prompt_ids, prompt_mask = (x.to(dev) for x in self.policy.encode_prompts(prompts))
        fixed = hp.mode == "lhp_fixed_length"
        gen = self.policy.generate(prompt_ids, prompt_mask, max_new_tokens=hp.max_new_tokens, do_sample=True,
                                   temperature=hp.temperature, top_k=hp.top_k, top_p=hp.top_p,
                                   stop_at_eos=not fixed, fast=hp.fast_generation)
        response_ids, mask = gen.response_ids, gen.response_mask
        timings["time/generate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        self.policy.eval()
        logprobs, values, ref_logprobs = [], [], []
        # Chunks of the update's minibatch size: under bf16 on the CPU a matrix product's rounding depends on
        # its row count (oneDNN splits the inner dimension differently), so the old log-probs must come from
        # products of the update's shapes for the ratio to start at exactly 1 (docs/speed.md).
        chunk = min(hp.forward_batch_size, hp.minibatch_size)
        for s in range(0, len(prompts), chunk):
            sl = slice(s, s + chunk)
            args = (prompt_ids[sl], prompt_mask[sl], response_ids[sl], mask[sl])
            lp, v, _ = self._logprobs_values(*args)
            logprobs.append(lp * mask[sl])
            values.append(v * mask[sl])
            ref_logprobs.append(reference_logprobs(self.policy, self.ref, *args, hp.temperature))
        logprobs, values, ref_logprobs = torch.cat(logprobs), torch.cat(values), torch.cat(ref_logprobs)
        timings["time/forward"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        raw_scores, found, texts = self._score(prompts, targets, response_ids, mask)
        scores = self._normalize_scores(raw_scores)
        # lhp_fixed_length without the truncate token: the penalty REPLACES the score (LHP make_score_fn)
        scores = torch.where(found, scores, torch.full_like(scores, hp.penalty_reward_value))
        timings["time/score"] = time.perf_counter() - t0

        rewards, kl = ops.kl_penalty_rewards(logprobs, ref_logprobs, scores, mask, self.kl_ctl.value)
        rollout = Rollout(prompt_ids, prompt_mask, response_ids, mask, logprobs=logprobs, ref_logprobs=ref_logprobs,
                          values=values, rewards=rewards, scores=scores, prompt=list(prompts), response=texts,
                          target=list(targets))
        stats = {"ppo/kl": ops.sequence_kl(kl, mask).mean().item(),
                 "rollout/score_mean": raw_scores.mean().item(),  # the reward function's own scale
                 "rollout/score_std": raw_scores.std().item() if len(scores) > 1 else 0.0,
                 "rollout/score_normalized_mean": scores.mean().item(),
                 "rollout/response_len": mask.sum(-1).float().mean().item(),
                 "rollout/accuracy": _accuracy(texts, targets),
                 **timings}
        return rollout, stats

    def _score(self, prompts: Sequence[str], targets: Sequence[str | None], response_ids: torch.Tensor,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Raw scores ``[B]`` of sampled responses, whether each has its truncate token ``[B]`` (always True
        in eos_masking mode) and the scored texts (lhp_fixed_length: cut after the truncate token, LHP)."""
        hp = self.hparams
        found = torch.ones(len(prompts), dtype=torch.bool, device=response_ids.device)
        if hp.mode == "lhp_fixed_length":
            token = self.policy.eos_token_id if hp.truncate_token is None else hp.truncate_token
            score_ids, found = truncate_for_scoring(response_ids, token, hp.truncate_after, self.policy.pad_token_id)
            texts = self.policy.decode(score_ids)
        else:
            texts = self.policy.decode(response_ids, mask)
        return score_responses(self.reward_fn, prompts, texts, targets, response_ids.device), found, texts

    def _normalize_scores(self, raw: torch.Tensor) -> torch.Tensor:
        if self.hparams.reward_normalization == "none" or self.score_norm is None:
            return raw
        gain, bias = self.score_norm
        return raw * gain + bias

    @torch.no_grad()
    def fit_normalization(self) -> tuple[float, float]:
        """Ziegler's reward normalisation, applied to whatever the reward is: the gain and bias that give the
        scores of ``normalize_samples`` responses of the INITIAL policy (the reference ρ, at the sampling
        temperature, to random training prompts, all ranks pooled; LHP: 256) mean 0 and std 1, then kept
        fixed (and checkpointed). ``bias`` shifts the mean only. Why it matters: the value head starts at
        zero, so a score with a non-zero mean leaves GAE's λ-discounted residual ``λ^(T-t)·mean`` in the
        advantages, which favours the stop token when the mean is positive (answers lose words) and going
        on when it is negative (answers grow). When every sample scores the same (a verifier against an
        untrained model) only the mean is removed (:func:`score_normalization`)."""
        hp = self.hparams
        rows = self.trainer.datamodule.train_rows
        per_rank = -(-hp.normalize_samples // self.trainer.world_size)
        g = torch.Generator().manual_seed(1_000 + self.trainer.global_rank)
        picked = [rows[i] for i in torch.randint(len(rows), (per_rank,), generator=g).tolist()]
        raw = []
        for s in range(0, per_rank, hp.forward_batch_size):
            chunk = picked[s: s + hp.forward_batch_size]
            prompts = [r["prompt"] for r in chunk]
            ids, mask = (x.to(self.device) for x in self.policy.encode_prompts(prompts))
            with reference_policy(self.policy, self.ref) as rho:
                gen = rho.generate(ids, mask, max_new_tokens=hp.max_new_tokens, do_sample=True,
                                   temperature=hp.temperature, top_k=hp.top_k, top_p=hp.top_p,
                                   stop_at_eos=hp.mode != "lhp_fixed_length", fast=hp.fast_generation)
            raw.append(self._score(prompts, [r.get("target") for r in chunk], gen.response_ids, gen.response_mask)[0])
        pooled = torch.cat(raw).float()
        if self.trainer.world_size > 1:
            pooled = self.all_gather(pooled).reshape(-1)
        self.score_norm = score_normalization(pooled, hp.reward_normalization)
        return self.score_norm

    # -------------------------------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        if hasattr(self.reward_fn, "to"):
            self.reward_fn.to(self.device)
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(self.trainer.strategy, FSDPStrategy):  # generation gathers the full parameters
            self.policy.set_fsdp_root(self.trainer.strategy.model)
        hp = self.hparams
        if hp.ptx_coef > 0 and self.ptx is None:
            self.ptx = PtxStream.from_config(hp.ptx_data, self.trainer.datamodule, hp.ptx_chunk_chars,
                                             seed=self.trainer.global_rank)
            if self._ptx_state is not None:
                self.ptx.load_state_dict(self._ptx_state)
        if hp.refit and hp.refit.get("every") and self.refitter is None:
            self._setup_refitter()
        if hp.reward_normalization != "none" and self.score_norm is None:
            self.fit_normalization()
        if hp.whiten_rewards and hp.minibatch_size < 8:
            rank_zero_warn("algo.minibatch_size < 8 with reward whitening: LHP asserts >= 8")

    def _setup_refitter(self) -> None:
        from feedback_lm.refit import OnlineRefitter, RefitConfig

        if self.trainer.world_size > 1:
            raise UserError("algo.refit (online reward-model refits) runs in one process; use trainer.devices=1")
        cfg = dict(self.hparams.refit)
        cfg.setdefault("task", getattr(self.trainer.datamodule, "task", None))
        self.refitter = OnlineRefitter(RefitConfig(**cfg), self.reward_fn, self.trainer.default_root_dir)
        if self._refit_state is not None:
            self.reward_fn.model.load_state_dict(self._refit_state["reward_model"])
            from feedback_lm.data.comparisons import parse_comparison

            self.refitter.comparisons = [parse_comparison(r) for r in self._refit_state["comparisons"]]

    def _maybe_refit(self, iteration: int) -> dict[str, float]:
        """Ziegler's online loop: collect -> label -> refit the reward model every N iterations."""
        if self.refitter is None or not self.refitter.due(iteration):
            return {}
        added = self.refitter.collect(self.policy, self.trainer.datamodule.train_rows, iteration)
        stats = self.refitter.refit()
        out = {"refit/new_labels": float(added), "refit/labels": float(len(self.refitter.comparisons))}
        if stats["loss"] == stats["loss"]:  # not NaN: a refit happened
            if self.hparams.reward_normalization != "none":  # a new reward model, normalised on ρ again
                out["refit/gain"], out["refit/bias"] = self.fit_normalization()
            out.update({"refit/loss": stats["loss"], "refit/accuracy": stats["accuracy"]})
        return out

    def training_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        hp = self.hparams
        opt = self.optimizers()
        iteration = self.global_step
        beta = self.kl_ctl.value  # the β in this rollout's rewards
        refit_stats = self._maybe_refit(iteration)
        rollout, stats = self.make_rollout(*task_batch(batch, "ppo"))
        self.buffer.clear()
        self.buffer.add(rollout)

        # LR: annealed per iteration over the run, constant across its minibatches (LHP)
        factor = lr_factor(iteration, self._total_iterations(), hp.schedule, hp.warmup_iterations, 0.0)
        for group in opt.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

        t0 = time.perf_counter()
        self.policy.eval()  # dropout off for every forward
        minibatches = list(self.buffer.minibatches(hp.minibatch_size, epochs=hp.ppo_epochs, same_layout=True))
        agg: dict[str, list[float]] = {}
        for j, mb in enumerate(minibatches):
            opt.zero_grad()
            mb_stats = self.minibatch_backward(mb)
            if hp.max_grad_norm:  # after BOTH gradients have accumulated
                self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
            optimizer_step(self, opt, last=j == len(minibatches) - 1)
            if hp.ema_decay:
                ema_update(self._ema_buffers(), self._policy_params(), hp.ema_decay)
            for k, v in mb_stats.items():
                agg.setdefault(k, []).append(float(v))
        stats["time/update"] = time.perf_counter() - t0

        # KL control on this rollout's KL, before optimisation; new β from the next rollout
        n_episodes = len(rollout) * self.trainer.world_size
        self.kl_ctl.update(self._mean_across_ranks(stats["ppo/kl"]), n_steps=n_episodes)
        if "ptx_sequences" in agg:  # InstructGPT accounting: pretraining sequences per episode
            stats["ptx/sequences"] = sum(agg.pop("ptx_sequences"))
            stats["ptx/ratio"] = stats["ptx/sequences"] / len(rollout)
            stats["ptx/loss"] = sum(agg["ptx_loss"]) / len(agg.pop("ptx_loss"))
        stats.update({f"ppo/{k}": sum(v) / len(v) for k, v in agg.items()})
        stats.update(refit_stats)
        stats.update({"ppo/kl_coef": beta, "ppo/lr": opt.optimizer.param_groups[0]["lr"],
                      "ppo/minibatches": float(len(minibatches))})
        self.log("train/loss", stats["ppo/loss"], prog_bar=False, batch_size=len(rollout))
        shown = ("rollout/score_mean", "ppo/kl", "ppo/kl_coef")  # on the progress bar too
        self.log_dict({k: float(v) for k, v in stats.items() if k not in shown}, batch_size=len(rollout))
        self.log_dict({k: float(stats[k]) for k in shown}, prog_bar=True, batch_size=len(rollout))

    def _total_iterations(self) -> int:
        """The run's length in iterations for the LR anneal: ``trainer.max_steps``, else the epochs' batches
        (``trainer.max_steps=-1``); a run without an end (both unbounded) keeps the peak LR, with a warning."""
        if self.trainer.max_steps > 0:
            return self.trainer.max_steps
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            if self.hparams.schedule == "linear" and not getattr(self, "_warned_endless", False):
                rank_zero_warn("algo.schedule=linear needs trainer.max_steps or trainer.max_epochs to anneal over; "
                               "the LR stays at its peak")
                self._warned_endless = True
            return 2**62
        return max(1, int(total))

    def minibatch_backward(self, mb: Rollout) -> dict[str, torch.Tensor]:
        """Accumulate the gradients of one minibatch: the PPO loss and, for PPO-ptx,
        ``ptx_coef · ∇L_ptx`` on ``ptx_ratio × len(mb)`` pretraining sequences into the SAME buffers
        (InstructGPT App. C.4). No optimizer step here. Returns the minibatch statistics."""
        hp = self.hparams
        logprobs, values, entropy = self._logprobs_values(mb.prompt_ids, mb.prompt_mask, mb.response_ids,
                                                          mb.response_mask, with_entropy=True)
        loss, pg_loss, vf_loss, stats = ppo_loss(
            logprobs, values, mb.logprobs, mb.values, mb.rewards, mb.response_mask, cliprange=hp.cliprange,
            cliprange_value=hp.cliprange_value, vf_coef=hp.vf_coef, gamma=hp.gamma, lam=hp.lam,
            whiten_rewards=hp.whiten_rewards)
        self._backward(loss)
        stats.update(loss=loss.detach(), policy_loss=pg_loss.detach(), value_loss=vf_loss.detach(), entropy=entropy)
        if hp.ptx_coef > 0:
            n = hp.ptx_ratio * len(mb)
            stats["ptx_loss"] = torch.tensor(self._ptx_backward(n))
            stats["ptx_sequences"] = torch.tensor(float(n))
        return stats

    def _backward(self, loss: torch.Tensor) -> None:
        if self._trainer is not None:
            self.manual_backward(loss)  # precision/strategy aware (DDP gradient all-reduce)
        else:  # used outside a Trainer (unit tests, notebooks)
            loss.backward()

    def _ptx_backward(self, n: int) -> float:
        """Accumulate ``ptx_coef · ∇ mean-token NLL`` of ``n`` pretraining sequences, in
        chunks weighted by their token counts so that the result equals one big batch."""
        hp = self.hparams
        pairs = self.ptx.next(n)
        enc = self.policy.encode_batch([p for p, _ in pairs], [t for _, t in pairs], self.device)
        total = enc["response_mask"].sum().clamp(min=1)
        loss_sum = 0.0
        for s in range(0, n, hp.ptx_forward_batch_size):
            sl = {k: v[s: s + hp.ptx_forward_batch_size] for k, v in enc.items()}
            logits = self.policy(**sl).logits
            nll = -ops.masked_sum(ops.gather_logprobs(logits, sl["response_ids"]), sl["response_mask"]) / total
            self._backward(hp.ptx_coef * nll)
            loss_sum += float(nll.detach())
        return loss_sum

    def _mean_across_ranks(self, value: float) -> float:
        if self.trainer.world_size == 1:
            return value
        t = torch.tensor(value, device=self.device, dtype=torch.float32)
        return float(self.trainer.strategy.reduce(t, reduce_op="mean"))

    # ------------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        hp = self.hparams
        with self._ema_weights():
            outputs, scores = validate(self, self.policy, self.reward_fn, batch, batch_idx, hp.eval_max_new_tokens,
                                       hp.temperature if hp.eval_sampled else None, hp.top_k, hp.top_p,
                                       hp.fast_generation)
        prompts, targets = task_batch(batch, "ppo")
        if batch_idx == 0:
            k = hp.num_samples_shown
            self._samples = [{"prompt": p, "output": o, "target": t, "score": round(float(s), 3)}
                             for p, o, t, s in zip(prompts[:k], outputs[:k], targets[:k], scores[:k].tolist())]

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        print_samples(self._samples, title=f"held-out samples (iteration {self.global_step})")
        log_samples(self.loggers, "val/samples", self._samples, self.global_step)

    # ------------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        hp = self.hparams
        value_params = list(self.value_head.parameters())
        if hp.value_model == "separate":
            value_params += [p for p in self.value_net.parameters() if p.requires_grad]
        ids = {id(p) for p in value_params}
        groups = [{"params": [p for p in self.parameters() if p.requires_grad and id(p) not in ids], "lr": hp.lr},
                  {"params": value_params, "lr": hp.vf_lr or hp.lr}]
        opt = clippable(torch.optim.Adam(groups, lr=hp.lr, eps=hp.adam_eps, weight_decay=hp.weight_decay,
                                         fused=fused_kernel(p for g in groups for p in g["params"])))
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
        return opt

    # ----------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["kl_controller"] = self.kl_ctl.state_dict()
        checkpoint["score_norm"] = self.score_norm
        if self.ptx is not None:
            checkpoint["ptx_stream"] = self.ptx.state_dict()
        if self.refitter is not None:  # the refitted reward model and its labels resume with the run
            checkpoint["refit"] = {"reward_model": self.reward_fn.model.state_dict(),
                                   "comparisons": [c.to_row() for c in self.refitter.comparisons]}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "kl_controller" in checkpoint:
            self.kl_ctl.load_state_dict(checkpoint["kl_controller"])
        if checkpoint.get("score_norm") is not None:
            self.score_norm = tuple(checkpoint["score_norm"])
        self._ptx_state = checkpoint.get("ptx_stream")
        self._refit_state = checkpoint.get("refit")

    def save_pretrained(self, directory: str) -> None:
        """The trained policy in Hugging Face format (the EMA weights when ``ema_decay`` is set); LoRA
        adapters are merged so that ``model.name_or_path=<dir>`` loads it like any model."""
        with self._ema_weights():
            save_policy(self.policy, directory)


def _accuracy(outputs: Sequence[str], targets: Sequence[str | None]) -> float:
    pairs = [(o, t) for o, t in zip(outputs, targets) if t is not None]
    return float(exact_match(*zip(*pairs)).mean()) if pairs else float("nan")


__all__ = ["PPO", "ema_update", "policy_loss", "ppo_loss", "score_normalization", "truncate_for_scoring",
           "value_loss"]
