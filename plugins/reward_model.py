"""Reward modelling from comparisons (spec §2): Ziegler et al. 2019 best-of-K (arXiv 1909.08593) and
InstructGPT K-wise ranking (arXiv 2203.02155 §3.5).

The reward model is the language model with its unembedding unused and a fresh scalar head
(``N(0, 1/sqrt(d+1))``, spec §2.0) read at the last real token of ``[prompt; response]`` (for
encoder-decoder models the prompt goes to the encoder and the head reads the decoder state at the
response's EOS). ``pooling=mean`` [PROJECT] averages the head over every response position instead
(on simulated word_sorting labels it was far more accurate: bench/README.md, reward-model accuracy).
The wrapped reward is ``gain * r_raw + bias`` with ``gain``/``bias`` non-trainable buffers set by the
normalisation (spec §2.a Ziegler, §2.b InstructGPT), saved with the model.

Each batch element is one prompt with all of its K responses: K forward passes per prompt, never
2*C(K,2) (InstructGPT §3.5).

Run: ``python train.py algo=reward_model data=comparisons`` (generated comparisons of the default task),
``data=comparisons data.source=jsonl data.path=labels.jsonl``, ``data.source=hh_rlhf``.

Logs: ``train/loss``, ``val/loss``, ``val/accuracy`` (held-out pairwise accuracy), ``val/top1`` (the
best response gets the highest reward), ``val/reward_chosen``, ``val/reward_rejected`` (mean reward of the best and worst tiers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from feedback_lm.checkpoint import load_state_dict_safely
from feedback_lm.data.comparisons import Comparison
from feedback_lm.errors import UserError
from feedback_lm.models import ModelConfig, ScalarHead
from feedback_lm.optim import build_adamw, build_scheduler
from feedback_lm.policy import Policy

LOSSES = ("ranking", "best_of_k")
POOLINGS = ("last", "mean")
NORMALIZATIONS = ("none", "ziegler", "demos")
HEAD_FILE = "reward_head.safetensors"


# ------------------------------------------------------------------------------------ pure functions
def best_of_k_loss(rewards: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Ziegler softmax cross-entropy over the K candidates (spec §2.a; the paper's Eq. 1 lacks the minus).

    Args:
        rewards: ``[B,K]``; missing candidates (K varies) hold ``-inf``.
        best: ``[B]`` index of the chosen candidate.
    """
    return F.cross_entropy(rewards.float(), best)


def ranking_pairs(tiers: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """All (winner, loser) pairs of a ranking given best-first tiers; ties give no pair."""
    return [(w, lo) for i, tier in enumerate(tiers) for w in tier for lower in tiers[i + 1:] for lo in lower]


def ranking_loss(rewards: torch.Tensor, rankings: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
    """InstructGPT Eq. 1 with the per-prompt normalisation (spec §2.b).

    ``mean_b mean_{(w,l) in pairs_b} softplus(-(r[b,w] - r[b,l]))``: every prompt weighs the same,
    whatever its K. For K=2 this is Bradley-Terry.

    Args:
        rewards: ``[B,K]`` (padding beyond a prompt's K is never indexed).
        rankings: per prompt, best-first tiers of response indices (``[[2], [0, 3], [1]]``).
    """
    b_idx, w_idx, l_idx, weight = [], [], [], []
    for b, tiers in enumerate(rankings):
        pairs = ranking_pairs(tiers)
        if not pairs:
            raise ValueError(f"ranking {tiers} of batch element {b} has no strictly ordered pair")
        for w, lo in pairs:
            b_idx.append(b), w_idx.append(w), l_idx.append(lo), weight.append(1.0 / len(pairs))
    r = rewards.float()
    b_t = torch.tensor(b_idx, device=r.device)
    margin = r[b_t, torch.tensor(w_idx, device=r.device)] - r[b_t, torch.tensor(l_idx, device=r.device)]
    weight_t = torch.tensor(weight, device=r.device)
    return (weight_t * F.softplus(-margin)).sum() / len(rankings)


def ziegler_gain_bias(raw: torch.Tensor, target_mean: float = 0.0, target_std: float = 1.0) -> tuple[float, float]:
    """Gain and bias that give ``g*raw + c`` the target mean and population std (spec §2.a)."""
    raw = raw.double()
    mu = raw.mean()
    sigma = torch.sqrt((raw**2).mean() - mu**2)
    if not torch.isfinite(sigma) or sigma <= 0:
        raise ValueError("rewards of the normalisation samples have zero variance")
    g = target_std / sigma
    return float(g), float(target_mean - g * mu)


def demonstration_bias(raw_demo_rewards: torch.Tensor) -> float:
    """InstructGPT: the bias that makes the demonstrations' mean reward 0 (spec §2.b)."""
    return float(-raw_demo_rewards.double().mean())


def pairwise_accuracy(rewards: torch.Tensor, rankings: Sequence[Sequence[Sequence[int]]]) -> tuple[int, int]:
    """(correctly ordered pairs, pairs); ties in reward count as wrong."""
    right = total = 0
    for b, tiers in enumerate(rankings):
        for w, lo in ranking_pairs(tiers):
            right += int(rewards[b, w] > rewards[b, lo])
            total += 1
    return right, total


# ------------------------------------------------------------------------------------------ module
class RewardModel(L.LightningModule):
    """A scalar reward model trained on comparisons.

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
        pooling: ``last``: the head reads the state at the last real token (spec §2.0); ``mean``: the
            head scores every response position and the reward is their mean [PROJECT].
    """

    def __init__(self, policy: ModelConfig | Mapping[str, Any], init_from: str | None = None,
                 loss: str = "ranking", lr: float = 5e-5, weight_decay: float = 0.0, adam_eps: float = 1e-5,
                 schedule: str = "linear", warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                 normalize: str = "none", normalize_samples: int = 256, sample_temperature: float = 1.0,
                 max_new_tokens: int = 32, max_grad_norm: float | None = 1.0, pooling: str = "last"):
        super().__init__()
        if pooling not in POOLINGS:
            raise UserError(f"unknown algo.pooling '{pooling}'; choose one of {list(POOLINGS)}")
        if loss not in LOSSES:
            raise UserError(f"unknown algo.loss '{loss}'; choose one of {list(LOSSES)}")
        if normalize not in NORMALIZATIONS:
            raise UserError(f"unknown algo.normalize '{normalize}'; choose one of {list(NORMALIZATIONS)}")
        cfg = ModelConfig.coerce(policy)
        cfg.dropout = 0.0  # spec §0.5: no dropout in the reward model
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
        self.policy = Policy.from_config(self.model_config)
        if self.hparams.init_from and self.hparams.init_from.endswith(".ckpt"):
            _load_policy_weights(self.policy, self.hparams.init_from)
        out, inp = self.policy.model.get_output_embeddings(), self.policy.model.get_input_embeddings()
        if out is not None and out.weight is not inp.weight:
            out.weight.requires_grad_(False)  # the unembedding is not part of a reward model (spec §2.0)
        self.head = ScalarHead(self.policy.hidden_size, init="normal")

    # -------------------------------------------------------------------------------------- reward
    def raw_rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Head output at the last real token (``pooling=last``) or averaged over the response
        positions (``pooling=mean``), before gain/bias: ``[N]`` fp32."""
        enc = self.policy.encode_batch(prompts, responses, self.device)
        out = self.policy(**enc, output_hidden=True)
        if self.hparams.pooling == "last":
            return self.head(out.last_hidden)
        # mean: the head on every response position (state t has read y_<t), averaged over the response
        mask = enc["response_mask"].float()
        return (self.head(out.hidden) * mask).sum(-1) / mask.sum(-1)

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Normalised rewards ``gain * r_raw + bias``: ``[N]`` fp32."""
        return self.gain * self.raw_rewards(prompts, responses) + self.bias

    def _batch_rewards(self, batch: list[Comparison]) -> torch.Tensor:
        """One forward over every (prompt, response) of the batch -> ``[B,Kmax]`` with ``-inf`` padding."""
        prompts = [c.prompt for c in batch for _ in c.responses]
        responses = [r for c in batch for r in c.responses]
        flat = self.rewards(prompts, responses)
        k_max = max(len(c.responses) for c in batch)
        out = flat.new_full((len(batch), k_max), -math.inf)
        i = 0
        for b, c in enumerate(batch):
            out[b, : len(c.responses)] = flat[i: i + len(c.responses)]
            i += len(c.responses)
        return out

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
        self.policy.model.save_pretrained(directory)
        self.policy.tokenizer.save_pretrained(directory)
        tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        tensors.update(gain=self.gain.detach().cpu().reshape(1), bias=self.bias.detach().cpu().reshape(1))
        save_file(tensors, str(Path(directory) / HEAD_FILE), metadata={"pooling": self.hparams.pooling})


def load_reward_model(directory: str, device: str | torch.device = "cpu") -> RewardModel:
    """Load a reward model written by :meth:`RewardModel.save_pretrained` (frozen, eval mode, with the
    pooling it was trained with)."""
    head_path = Path(directory) / HEAD_FILE
    if not head_path.is_file():
        raise UserError(f"{directory} is not a reward model of ours (no {HEAD_FILE}); train one with "
                        f"`python train.py algo=reward_model` and point at its run's model/ directory")
    with safe_open(str(head_path), framework="pt") as f:
        pooling = (f.metadata() or {}).get("pooling", "last")  # files written before pooling existed: last
    rm = RewardModel({"name": "reward_model", "name_or_path": str(directory)}, pooling=pooling)
    rm.configure_model()
    tensors = load_file(str(head_path))
    rm.head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
    rm.gain.fill_(float(tensors["gain"]))
    rm.bias.fill_(float(tensors["bias"]))
    rm.requires_grad_(False)
    return rm.eval().to(device)


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
