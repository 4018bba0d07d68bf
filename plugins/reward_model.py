"""Reward modelling from comparisons: Ziegler et al. 2019 best-of-K (arXiv 1909.08593) and
InstructGPT K-wise ranking (arXiv 2203.02155 §3.5).

The reward model is the language model with its unembedding unused and a fresh scalar head
(``N(0, 1/sqrt(d+1))``) read at the last real token of ``[prompt; response]`` (for
encoder-decoder models the prompt goes to the encoder and the head reads the decoder state at the
response's EOS). ``pooling=mean`` [PROJECT] averages the head over every response position instead
(on simulated word_sorting labels it was far more accurate: bench/README.md, reward-model accuracy).
The wrapped reward is ``gain * r_raw + bias`` with ``gain``/``bias`` non-trainable buffers set by the
normalisation (Ziegler: mean 0, std 1 on samples of the initial LM; InstructGPT: the demonstrations
average 0), saved with the model. Head, losses, normalisation and loading live in
:mod:`feedback_lm.reward_head` (shared with PPO, ``reward=model`` and the online refits).

Each batch element is one prompt with all of its K responses: K forward passes per prompt, never
2*C(K,2) (InstructGPT §3.5).

Run: ``python train.py algo=reward_model data=comparisons`` (generated comparisons of the default task),
``data=comparisons data.source=jsonl data.path=labels.jsonl``, ``data.source=hh_rlhf``.

Logs: ``train/loss``, ``val/loss``, ``val/accuracy`` (held-out pairwise accuracy), ``val/top1`` (the
best response gets the highest reward), ``val/reward_chosen``, ``val/reward_rejected`` (mean reward of the best and worst tiers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F

from feedback_lm.checkpoint import load_state_dict_safely
from feedback_lm.checks import check_args
from feedback_lm.data.comparisons import Comparison
from feedback_lm.errors import UserError
from feedback_lm.models import ModelConfig, ScalarHead
from feedback_lm.optim import build_adamw, build_scheduler
from feedback_lm.policy import Policy
from feedback_lm.reward_head import (  # noqa: F401  (re-exported: the names users import from here)
    POOLINGS,
    comparison_rewards,
    demonstration_bias,
    load_reward_model,
    pairwise_accuracy,
    ranking_loss,
    ranking_pairs,
    raw_rewards,
    reward_backbone,
    save_reward_model,
    ziegler_gain_bias,
)

LOSSES = ("ranking", "best_of_k")
NORMALIZATIONS = ("none", "ziegler", "demos")


# ------------------------------------------------------------------------------------ pure functions
def best_of_k_loss(rewards: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Ziegler softmax cross-entropy over the K candidates (the paper's Eq. 1 lacks the minus sign).

    Args:
        rewards: ``[B,K]``; missing candidates (K varies) hold ``-inf``.
        best: ``[B]`` index of the chosen candidate.
    """
    return F.cross_entropy(rewards.float(), best)


# ------------------------------------------------------------------------------------------ module
class RewardModel(L.LightningModule):
    """A scalar reward model trained on comparisons (``data=comparisons``: batches are ``list[Comparison]``).

    Args:
        policy: the LM the reward model starts from (``conf/model/*.yaml``); dropout is forced to 0.
        init_from: a directory with a Hugging Face model (e.g. an SFT run's ``model/``) or an SFT
            ``.ckpt`` of ours; its LM weights replace ``policy``'s.
        loss: ``ranking`` (InstructGPT, all pairs of a ranking) or ``best_of_k`` (Ziegler).
        lr: peak learning rate.
        adam_eps: Adam epsilon (LHP uses 1e-5).
        schedule: ``linear`` to 0 over training (LHP), ``cosine`` to ``min_lr_ratio`` (InstructGPT), ``constant``.
        normalize: ``none``; ``ziegler`` (gain and bias to mean 0 / std 1 on samples from the initial LM,
            before and after training); ``demos`` (bias so the task demonstrations average 0).
        normalize_samples: prompts sampled for the Ziegler normalisation.
        sample_temperature / max_new_tokens: how the normalisation samples are drawn.
        pooling: ``last``: the head reads the state at the last real token (Ziegler et al. 2019); ``mean``: the
            head scores every response position and the reward is their mean [PROJECT].
    """

    DATA_KIND: ClassVar[str] = "comparisons"

    def __init__(self, policy: ModelConfig | Mapping[str, Any], init_from: str | None = None,
                 loss: str = "ranking", lr: float = 5e-5, weight_decay: float = 0.0, adam_eps: float = 1e-5,
                 schedule: str = "linear", warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                 normalize: str = "none", normalize_samples: int = 256, sample_temperature: float = 1.0,
                 max_new_tokens: int = 32, max_grad_norm: float | None = 1.0, pooling: str = "last"):
        super().__init__()
        check_args("algo", lr=(lr, "> 0"), weight_decay=(weight_decay, ">= 0"), adam_eps=(adam_eps, "> 0"),
                   warmup_steps=(warmup_steps, ">= 0"), min_lr_ratio=(min_lr_ratio, "[0, 1]"),
                   normalize_samples=(normalize_samples, ">= 2"), sample_temperature=(sample_temperature, "> 0"),
                   max_new_tokens=(max_new_tokens, ">= 1"), max_grad_norm=(max_grad_norm, "> 0"))
        if pooling not in POOLINGS:
            raise UserError(f"unknown algo.pooling '{pooling}'; choose one of {list(POOLINGS)}")
        if loss not in LOSSES:
            raise UserError(f"unknown algo.loss '{loss}'; choose one of {list(LOSSES)}")
        if normalize not in NORMALIZATIONS:
            raise UserError(f"unknown algo.normalize '{normalize}'; choose one of {list(NORMALIZATIONS)}")
        cfg = ModelConfig.coerce(policy)
        cfg.dropout = 0.0  # no dropout in a reward model (Ziegler et al. 2019)
        if init_from and not init_from.endswith(".ckpt"):
            cfg.name_or_path, cfg.preset, cfg.tokenizer = init_from, None, None
        self.model_config = cfg
        self.save_hyperparameters()
        self.hparams.policy = cfg.to_dict()
        self.register_buffer("gain", torch.tensor(1.0))
        self.register_buffer("bias", torch.tensor(0.0))
        self._rho_samples: list[tuple[str, str]] = []

    def configure_model(self) -> None:
        if hasattr(self, "policy"):
            return
        self.policy = reward_backbone(self.model_config)
        if self.hparams.init_from and self.hparams.init_from.endswith(".ckpt"):
            _load_policy_weights(self.policy, self.hparams.init_from)
        self.head = ScalarHead(self.policy.hidden_size, init="normal")

    # -------------------------------------------------------------------------------------- reward
    def raw_rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Before gain/bias: ``[N]`` fp32 (see :func:`feedback_lm.reward_head.raw_rewards`)."""
        return raw_rewards(self.policy, self.head, prompts, responses, self.hparams.pooling)

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Normalised rewards ``gain * r_raw + bias``: ``[N]`` fp32."""
        return self.gain * self.raw_rewards(prompts, responses) + self.bias

    def _batch_rewards(self, batch: list[Comparison]) -> torch.Tensor:
        """One forward over every (prompt, response) of the batch -> ``[B,Kmax]`` with ``-inf`` padding."""
        return comparison_rewards(self.rewards, batch)

    def _loss(self, batch: list[Comparison], rewards: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "best_of_k":
            # best-of-K labels, or rankings whose top tier is a single response
            best = [c.best if c.best is not None else (c.tiers[0][0] if len(c.tiers[0]) == 1 else None) for c in batch]
            if None in best:
                raise UserError("algo.loss=best_of_k needs one best response per prompt ({'best': i}, or a ranking "
                                "without a tie at the top); use algo.loss=ranking")
            return best_of_k_loss(rewards, torch.tensor(best, device=rewards.device))
        return ranking_loss(rewards, [c.tiers for c in batch])

    # ------------------------------------------------------------------------------------ training
    def training_step(self, batch: list[Comparison], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, self._batch_rewards(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: list[Comparison], batch_idx: int) -> None:
        rewards = self._batch_rewards(batch)
        n = len(batch)
        right, total = pairwise_accuracy(rewards, [c.tiers for c in batch])
        top1 = [float(rewards[b, : len(c.responses)].argmax() in c.tiers[0]) for b, c in enumerate(batch)]
        chosen = torch.stack([rewards[b, c.tiers[0]].mean() for b, c in enumerate(batch)])
        rejected = torch.stack([rewards[b, c.tiers[-1]].mean() for b, c in enumerate(batch)])
        # the pairwise (ranking) loss on held-out data, whatever the training loss: comparable across both
        self.log("val/loss", ranking_loss(rewards, [c.tiers for c in batch]), batch_size=n, sync_dist=True)
        self.log("val/accuracy", torch.tensor(right / max(total, 1), device=self.device), batch_size=total,
                 sync_dist=True, prog_bar=True)
        self.log("val/top1", torch.tensor(sum(top1) / n, device=self.device), batch_size=n, sync_dist=True)
        self.log("val/reward_chosen", chosen.mean(), batch_size=n, sync_dist=True)
        self.log("val/reward_rejected", rejected.mean(), batch_size=n, sync_dist=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip = self.hparams.max_grad_norm if gradient_clip_val is None else gradient_clip_val
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def configure_optimizers(self):
        hp = self.hparams
        opt = build_adamw(self.parameters(), hp.lr, hp.weight_decay, eps=hp.adam_eps)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = build_scheduler(opt, total, hp.schedule, hp.warmup_steps, hp.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------------------- normalisation
    def on_fit_start(self) -> None:
        if self.hparams.normalize == "ziegler" and self.global_step == 0:
            # Ziegler samples y ~ rho(.|x) from the initial LM: draw both sets now, before the
            # backbone moves (one for normalize_before, fresh ones for normalize_after).
            self._rho_samples = self._sample_from_initial_lm(2 * self.hparams.normalize_samples)
            self._normalize_ziegler(self._rho_samples[: self.hparams.normalize_samples])

    def on_train_end(self) -> None:
        if self.hparams.normalize == "ziegler" and self._rho_samples:
            self._normalize_ziegler(self._rho_samples[self.hparams.normalize_samples:])
        elif self.hparams.normalize == "demos":
            demos = _datamodule_demos(self.trainer)
            with torch.no_grad():
                raw = self._raw_in_chunks(demos)
            self.gain.fill_(1.0)
            self.bias.fill_(demonstration_bias(raw))

    @torch.no_grad()
    def _sample_from_initial_lm(self, n: int) -> list[tuple[str, str]]:
        prompts = _datamodule_prompts(self.trainer, n)
        pairs = []
        for i in range(0, len(prompts), 64):
            chunk = prompts[i: i + 64]
            texts = self.policy.generate_text(chunk, max_new_tokens=self.hparams.max_new_tokens, do_sample=True,
                                              temperature=self.hparams.sample_temperature)
            pairs += list(zip(chunk, texts))
        return pairs

    @torch.no_grad()
    def _normalize_ziegler(self, samples: list[tuple[str, str]]) -> None:
        was_training = self.training
        self.eval()
        raw = self._raw_in_chunks(samples)
        self.train(was_training)
        g, c = ziegler_gain_bias(raw)
        self.gain.fill_(g)
        self.bias.fill_(c)

    def _raw_in_chunks(self, pairs: Sequence[tuple[str, str]], size: int = 64) -> torch.Tensor:
        return torch.cat([self.raw_rewards([p for p, _ in pairs[i: i + size]], [r for _, r in pairs[i: i + size]])
                          for i in range(0, len(pairs), size)])

    # ---------------------------------------------------------------------------------------- export
    def save_pretrained(self, directory: str) -> None:
        """The LM backbone in Hugging Face format plus ``reward_head.safetensors`` (head, gain, bias; the
        pooling in its metadata): what ``reward=model reward.path=<directory>`` loads."""
        save_reward_model(directory, self.policy, self.head, self.gain, self.bias, self.hparams.pooling)


def _load_policy_weights(policy: Policy, ckpt_path: str) -> None:
    state = load_state_dict_safely(ckpt_path, "algo.init_from")
    weights = {k[len("policy."):]: v for k, v in state.items() if k.startswith("policy.")}
    if not weights:
        raise UserError(f"algo.init_from={ckpt_path} holds no policy weights (expected an SFT checkpoint)")
    try:
        policy.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"algo.init_from={ckpt_path} does not fit model={policy.model.config.model_type}: "
                        f"use the model settings it was trained with ({str(e).splitlines()[0]})") from None


def _datamodule_prompts(trainer, n: int) -> list[str]:
    dm = trainer.datamodule
    prompts = getattr(dm, "prompts", None)
    if not prompts:
        raise UserError("algo.normalize=ziegler needs prompts from the data (the comparison datamodule's prompts)")
    g = torch.Generator().manual_seed(0)
    return [prompts[i] for i in torch.randint(len(prompts), (n,), generator=g).tolist()]


def _datamodule_demos(trainer) -> list[tuple[str, str]]:
    demos = getattr(trainer.datamodule, "demos", None)
    if not demos:
        raise UserError("algo.normalize=demos needs demonstrations (data.source=generated provides the task's "
                        "gold answers); use algo.normalize=ziegler or none otherwise")
    return demos
