"""Pieces shared by the algorithms that learn from sampled or given responses (RLOO, GRPO, DPO, PPO, ...).

- :func:`sample_and_score`: sample ``k`` responses per prompt and score them with the ``reward=`` function,
  into a :class:`~feedback_lm.rollout.Rollout` (with the sampling log-probs and, when asked, the
  reference log-probs), ready for the rollout buffer.
- :func:`require_reward`, :func:`task_batch`: an online plugin's inputs, refused with one clear message
  when they are missing or of the wrong kind.
- :func:`score_responses`: call a reward function and check what it returns (one finite float per response).
- :func:`sequence_logprobs`: the summed log-probability of GIVEN response texts (DPO; any scorer).
- :func:`validate`: the held-out metrics of a sampling algorithm (``val/accuracy``, ``val/score``, and the
  same of one sample per prompt: ``val/sampled_accuracy``, ``val/sampled_score``).
- :func:`optimizer_step`: several optimizer steps inside ONE Lightning training step, so that one
  training step is one iteration (``trainer.max_steps``, checkpoints every N steps and LR schedules
  count iterations, not minibatches).
- :class:`OnlinePolicyModule`: the frame every sampling plugin repeats (policy + frozen reference + rollout
  buffer, the reward on the right device, one clipped optimizer step, held-out metrics, AdamW,
  ``save_pretrained``), so that a plugin that subclasses it writes only ``__init__`` and ``training_step``.

Shapes: ``B`` prompts, ``k`` samples per prompt, ``N = B·k`` rows (prompt-major: rows ``i·k .. i·k+k-1``
belong to prompt ``i``), ``P`` prompt and ``R`` response length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch

from feedback_lm import ops
from feedback_lm.errors import UserError
from feedback_lm.evaluation import exact_match
from feedback_lm.optim import build_adamw
from feedback_lm.policy import Policy
from feedback_lm.reference import frozen_reference, reference_logprobs, save_policy
from feedback_lm.rollout import Rollout, RolloutBuffer


def require_reward(reward: Callable | None, algo: str) -> Callable:
    """The ``reward=`` function a plugin was given, or a :class:`UserError` that says how to give one."""
    if reward is None:
        raise UserError(f"algo={algo} needs a reward: reward=verifier, reward=model reward.path=<run>/model, or "
                        f"reward=callable reward.fn=<module.function>")
    return reward


def task_batch(batch: Any, algo: str) -> tuple[list[str], list[str | None]]:
    """``(prompts, targets)`` of a task batch (``{"prompt": [...], "target": [...]}``; targets None when the
    data has none), or a :class:`UserError` naming the data option when the batch is of another kind."""
    if not isinstance(batch, dict) or "prompt" not in batch:
        raise UserError(f"algo={algo} samples answers to prompts: use task data (e.g. data=word_sorting), "
                        f"not data=comparisons")
    prompts = list(batch["prompt"])
    return prompts, list(batch.get("target") or [None] * len(prompts))


def score_responses(reward_fn: Callable, prompts: Sequence[str], responses: Sequence[str],
                    targets: Sequence[str | None], device: torch.device | str = "cpu") -> torch.Tensor:
    """``reward_fn(prompts, responses, targets)`` as a ``[N]`` fp32 tensor on ``device``.

    Raises:
        UserError: the function returned the wrong number of scores, or a NaN / infinite one.
    """
    scores = torch.as_tensor(reward_fn(list(prompts), list(responses), list(targets)), dtype=torch.float32)
    scores = scores.reshape(-1).to(device)
    if scores.numel() != len(responses):
        raise UserError(f"the reward function returned {scores.numel()} scores for {len(responses)} responses; "
                        f"it must return one float per response")
    if not torch.isfinite(scores).all():
        raise UserError("the reward function returned a NaN or infinite score")
    return scores


@torch.no_grad()
def sample_and_score(policy: Policy, prompts: Sequence[str], targets: Sequence[str | None], reward_fn: Callable,
                     k: int, *, max_new_tokens: int = 32, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, fast: bool = False, ref: Policy | None = None, with_reference: bool = False,
                     forward_batch_size: int = 64, minibatch_size: int | None = None) -> Rollout:
    """Sample ``k`` responses per prompt from ``policy``, score them, and return the ``N = B·k`` episodes.

    The rollout holds ``prompt_ids/mask`` (repeated k times, prompt-major), ``response_ids/mask``,
    ``logprobs [N,R]`` (a forward pass at ``temperature`` in eval mode: the sampling distribution without
    top-k/top-p, which every later log-prob must match), ``scores [N]`` and the texts; with
    ``with_reference`` also ``ref_logprobs [N,R]`` under the frozen reference (``ref``, or the policy with
    LoRA adapters off when ``ref`` is None; see :mod:`feedback_lm.reference`). Everything is detached.

    ``minibatch_size``: the update's minibatch size (``None``: the whole rollout). The forward passes run in
    chunks of ``min(forward_batch_size, minibatch_size)`` rows: under bf16 on the CPU a matrix product's
    rounding depends on its row count, so the rollout log-probs are bit-identical to the update's (ratio
    exactly 1 before the first step) only when both passes have the same row count and the update's
    minibatches keep the rollout's padding (``RolloutBuffer.minibatches(same_layout=True)``; docs/speed.md).
    """
    device = next(policy.model.parameters()).device
    prompt_ids, prompt_mask = (x.to(device) for x in policy.encode_prompts(prompts))
    gen = policy.generate(prompt_ids, prompt_mask, max_new_tokens=max_new_tokens, do_sample=True,
                          temperature=temperature, top_k=top_k, top_p=top_p, num_return_sequences=k, fast=fast)
    prompt_ids, prompt_mask = prompt_ids.repeat_interleave(k, 0), prompt_mask.repeat_interleave(k, 0)
    texts = policy.decode(gen.response_ids, gen.response_mask)
    rep_prompts = [p for p in prompts for _ in range(k)]
    rep_targets = [t for t in targets for _ in range(k)]
    scores = score_responses(reward_fn, rep_prompts, texts, rep_targets, device)

    was_training = policy.training
    policy.eval()
    logprobs, ref_lp = [], []
    chunk = min(forward_batch_size, minibatch_size or len(texts))
    for s in range(0, len(texts), chunk):
        sl = slice(s, s + chunk)
        args = (prompt_ids[sl], prompt_mask[sl], gen.response_ids[sl], gen.response_mask[sl])
        logprobs.append(policy.logprobs(*args, temperature))
        if with_reference:
            ref_lp.append(reference_logprobs(policy, ref, *args, temperature))
    policy.train(was_training)
    return Rollout(prompt_ids, prompt_mask, gen.response_ids, gen.response_mask, logprobs=torch.cat(logprobs),
                   ref_logprobs=torch.cat(ref_lp) if with_reference else None, scores=scores,
                   prompt=rep_prompts, response=texts, target=rep_targets)


def sequence_logprobs(policy: Policy, prompts: Sequence[str], responses: Sequence[str],
                      temperature: float = 1.0) -> torch.Tensor:
    """``log π(y|x)``: the SUM of the fp32 token log-probs of each given response, its EOS included.

    Runs with gradients when called with them (DPO's policy term) and without under ``torch.no_grad``.

    Returns:
        ``[N]`` fp32.
    """
    device = next(policy.model.parameters()).device
    enc = policy.encode_batch(prompts, responses, device)
    return ops.seq_logprob(policy.logprobs(**enc, temperature=temperature), enc["response_mask"])


@torch.no_grad()
def validate(module: Any, policy: Policy, reward_fn: Callable, batch: dict[str, list[str]], batch_idx: int,
             max_new_tokens: int, sampled_temperature: float | None = None, top_k: int = 0, top_p: float = 1.0,
             fast: bool = False) -> tuple[list[str], torch.Tensor]:
    """Held-out metrics of a sampling algorithm, logged on ``module``: greedy ``val/accuracy`` (normalised
    exact match, when the rows have targets) and ``val/score`` (the reward's mean); with
    ``sampled_temperature`` also ``val/sampled_accuracy`` and ``val/sampled_score`` of one sample per prompt
    at that temperature (the distribution the algorithm optimises), seeded by ``batch_idx`` so that every
    evaluation draws the same samples, without moving the training RNG.

    Returns:
        the greedy answers and their scores ``[B]``.
    """
    prompts, targets = task_batch(batch, "validation")
    n = len(prompts)
    outputs = policy.generate_text(prompts, max_new_tokens=max_new_tokens, do_sample=False, fast=fast)
    scores = score_responses(reward_fn, prompts, outputs, targets, module.device)
    module.log("val/score", scores.mean(), batch_size=n, sync_dist=True)
    if targets[0] is not None:
        module.log("val/accuracy", exact_match(outputs, targets).mean().to(module.device), batch_size=n,
                   sync_dist=True, prog_bar=True)
    if sampled_temperature is not None:
        devices = [module.device] if module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(10_007 + batch_idx)
            sampled = policy.generate_text(prompts, max_new_tokens=max_new_tokens, do_sample=True,
                                           temperature=sampled_temperature, top_k=top_k, top_p=top_p, fast=fast)
        sampled_scores = score_responses(reward_fn, prompts, sampled, targets, module.device)
        module.log("val/sampled_score", sampled_scores.mean(), batch_size=n, sync_dist=True)
        if targets[0] is not None:
            module.log("val/sampled_accuracy", exact_match(sampled, targets).mean().to(module.device),
                       batch_size=n, sync_dist=True)
    return outputs, scores


def optimizer_step(module: Any, optimizer: Any, last: bool) -> None:
    """One optimizer step of a manual-optimisation module that takes SEVERAL per training step.

    Only the ``last`` step of the iteration goes through Lightning's optimizer wrapper, which is what
    advances ``trainer.global_step``: one Lightning step = one iteration. The others take the same
    precision/strategy path (gradient scaling, DDP) without the step-progress hooks.

    Args:
        module: the LightningModule (attached to a trainer).
        optimizer: ``self.optimizers()`` (Lightning's wrapper).
        last: whether this is the iteration's last optimizer step.
    """
    if last:
        optimizer.step()
    else:
        module.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None, model=module)


class OnlinePolicyModule(L.LightningModule):
    """The frame of a plugin that samples from one policy and updates it (RLOO, GRPO; yours).

    The subclass's ``__init__`` sets ``self.model_config`` (a :class:`~feedback_lm.models.ModelConfig`) and
    ``self.reward_fn`` (:func:`require_reward`), saves its hyperparameters with
    ``save_hyperparameters(ignore=["reward"])`` and sets ``automatic_optimization = False``; it must have the
    hyperparameters ``lr``, ``weight_decay``, ``max_grad_norm``, ``temperature``, ``eval_max_new_tokens``,
    ``eval_sampled`` and ``fast_generation``. Then it writes ``training_step`` (collect -> score -> buffer ->
    update, calling :meth:`update` once per minibatch). This class gives it:

    - ``configure_model``: ``self.policy``, ``self.ref`` (the frozen initial policy; None under LoRA, where
      the reference is the same weights with the adapters off) and ``self.buffer`` (a rollout buffer);
    - ``on_fit_start``: the reward (a reward model, say) moved to the module's device;
    - :meth:`update`: zero grad, backward, gradient clipping, and an optimizer step that counts one
      Lightning step per iteration (:func:`optimizer_step`);
    - ``validation_step``: :func:`validate` (greedy, and one sample per prompt when ``eval_sampled``);
    - ``configure_optimizers``: AdamW; ``save_pretrained``: the policy in Hugging Face format (LoRA merged).
    """

    DATA_KIND = "tasks"

    def configure_model(self) -> None:
        if hasattr(self, "policy"):
            return
        self.policy = Policy.from_config(self.model_config)
        self.ref = frozen_reference(self.policy)  # the initial policy; None under LoRA (adapters off)
        self.buffer = RolloutBuffer(pad_token_id=self.policy.pad_token_id, seed=0)

    def on_fit_start(self) -> None:
        if hasattr(self.reward_fn, "to"):
            self.reward_fn.to(self.device)

    def update(self, optimizer: Any, loss: torch.Tensor, last: bool) -> None:
        """One optimizer step on ``loss``; ``last``: the iteration's last one (advances ``global_step``)."""
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.hparams.max_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm,
                                gradient_clip_algorithm="norm")
        optimizer_step(self, optimizer, last)

    def validation_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        hp = self.hparams
        validate(self, self.policy, self.reward_fn, batch, batch_idx, hp.eval_max_new_tokens,
                 hp.temperature if hp.eval_sampled else None, fast=hp.fast_generation)

    def configure_optimizers(self):
        return build_adamw(self.parameters(), self.hparams.lr, self.hparams.weight_decay)

    def save_pretrained(self, directory: str) -> None:
        """The trained policy in Hugging Face format (LoRA adapters merged)."""
        save_policy(self.policy, directory)
