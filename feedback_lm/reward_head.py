"""The reward model as a core concept: its scalar head, its losses on comparisons, its normalisation,
saving and loading. Used by the reward-model plugin (training), the ``reward=model`` reward function,
PPO (a value network started from a reward model) and the online refits (:mod:`feedback_lm.refit`).

A reward model is a language model whose unembedding is unused, plus ``ScalarHead`` (``Linear(d, 1)``,
``N(0, 1/sqrt(d+1))``; Ziegler et al. 2019, arXiv 1909.08593) read at the last real token of
``[prompt; response]`` (``pooling="last"``; for encoder-decoder models the decoder state at the
response's EOS) or averaged over the response positions (``pooling="mean"``, our choice). The wrapped
reward is ``gain * r_raw + bias``: ``gain``/``bias`` are non-trainable buffers set by the normalisation
(Ziegler: mean 0 and std 1 on samples of the initial policy; InstructGPT, arXiv 2203.02155 §3.5: a bias
that gives the demonstrations mean 0), saved beside the backbone in ``reward_head.safetensors``.

Shapes: ``B`` prompts, ``K`` responses per prompt (rankings may have different K; ``[B,Kmax]`` tensors
hold ``-inf`` beyond a prompt's K), ``N`` flat (prompt, response) pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from feedback_lm.data.comparisons import Comparison
from feedback_lm.errors import UserError
from feedback_lm.models import ModelConfig, ScalarHead
from feedback_lm.policy import Policy

POOLINGS = ("last", "mean")
HEAD_FILE = "reward_head.safetensors"
Tiers = Sequence[Sequence[int]]


# ------------------------------------------------------------------------------------ pure functions
def ranking_pairs(tiers: Tiers) -> list[tuple[int, int]]:
    """All (winner, loser) pairs of a ranking given best-first tiers; ties give no pair."""
    return [(w, lo) for i, tier in enumerate(tiers) for w in tier for lower in tiers[i + 1:] for lo in lower]


def pair_index(rankings: Sequence[Tiers], device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
    """Flat indices of every ordered pair of a batch of rankings, with per-prompt weights.

    Returns:
        ``(b, w, l, weight)``, each ``[n_pairs]``: prompt, winner and loser indices, and ``1/|pairs_b|``
        so that ``(weight * x).sum() / B`` is the mean over prompts of each prompt's mean over its pairs
        (InstructGPT §3.5: all C(K,2) comparisons of a prompt form one batch element).

    Raises:
        ValueError: a ranking has no strictly ordered pair.
    """
    b_idx, w_idx, l_idx, weight = [], [], [], []
    for b, tiers in enumerate(rankings):
        pairs = ranking_pairs(tiers)
        if not pairs:
            raise ValueError(f"ranking {tiers} of batch element {b} has no strictly ordered pair")
        for w, lo in pairs:
            b_idx.append(b), w_idx.append(w), l_idx.append(lo), weight.append(1.0 / len(pairs))
    as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)
    return as_long(b_idx), as_long(w_idx), as_long(l_idx), torch.tensor(weight, device=device)


def ranking_loss(rewards: torch.Tensor, rankings: Sequence[Tiers]) -> torch.Tensor:
    """InstructGPT Eq. 1 with the per-prompt normalisation (arXiv 2203.02155 §3.5).

    ``mean_b mean_{(w,l) in pairs_b} softplus(-(r[b,w] - r[b,l]))``: every prompt weighs the same,
    whatever its K. For K=2 this is Bradley-Terry.

    Args:
        rewards: ``[B,Kmax]`` (padding beyond a prompt's K is never indexed).
        rankings: per prompt, best-first tiers of response indices (``[[2], [0, 3], [1]]``).
    """
    r = rewards.float()
    b, w, lo, weight = pair_index(rankings, r.device)
    return (weight * F.softplus(-(r[b, w] - r[b, lo]))).sum() / len(rankings)


def pairwise_accuracy(rewards: torch.Tensor, rankings: Sequence[Tiers]) -> tuple[int, int]:
    """(correctly ordered pairs, pairs); ties in reward count as wrong."""
    right = total = 0
    for b, tiers in enumerate(rankings):
        for w, lo in ranking_pairs(tiers):
            right += int(rewards[b, w] > rewards[b, lo])
            total += 1
    return right, total


def ziegler_gain_bias(raw: torch.Tensor, target_mean: float = 0.0, target_std: float = 1.0) -> tuple[float, float]:
    """Gain and bias that give ``g*raw + c`` the target mean and population std (Ziegler et al. 2019,
    lm-human-preferences ``train_reward.py``)."""
    raw = raw.double()
    mu = raw.mean()
    sigma = torch.sqrt((raw**2).mean() - mu**2)
    if not torch.isfinite(sigma) or sigma <= 0:
        raise ValueError("rewards of the normalisation samples have zero variance")
    g = target_std / sigma
    return float(g), float(target_mean - g * mu)


def demonstration_bias(raw_demo_rewards: torch.Tensor) -> float:
    """InstructGPT §3.5: the bias that makes the demonstrations' mean reward 0."""
    return float(-raw_demo_rewards.double().mean())


def comparison_rewards(score: Callable[[list[str], list[str]], torch.Tensor],
                       batch: Sequence[Comparison]) -> torch.Tensor:
    """Score every (prompt, response) of a batch of comparisons in ONE call (K calls per prompt, never
    2·C(K,2)) and lay the scores out as ``[B,Kmax]`` with ``-inf`` beyond each prompt's K.

    Args:
        score: ``(prompts [N], responses [N]) -> [N]`` (a reward model, or DPO's implicit reward).
        batch: ``B`` comparisons.
    """
    flat = score([c.prompt for c in batch for _ in c.responses], [r for c in batch for r in c.responses])
    k_max = max(len(c.responses) for c in batch)
    out = flat.new_full((len(batch), k_max), -math.inf)
    i = 0
    for b, c in enumerate(batch):
        out[b, : len(c.responses)] = flat[i: i + len(c.responses)]
        i += len(c.responses)
    return out


# ---------------------------------------------------------------------------------------- the model
def reward_backbone(cfg: ModelConfig) -> Policy:
    """The language model a reward model reads from: dropout off (Ziegler: "we turn off dropout"), the
    untied unembedding frozen (it is not part of a reward model)."""
    cfg = ModelConfig.coerce(cfg)
    cfg.dropout = 0.0
    policy = Policy.from_config(cfg)
    out, inp = policy.model.get_output_embeddings(), policy.model.get_input_embeddings()
    if out is not None and out.weight is not inp.weight:
        out.weight.requires_grad_(False)
    return policy


def raw_rewards(policy: Policy, head: ScalarHead, prompts: Sequence[str], responses: Sequence[str],
                pooling: str = "last") -> torch.Tensor:
    """Head output at the last real token (``last``) or averaged over the response positions
    (``mean``; the state at t has read ``y_<t``), before gain/bias: ``[N]`` fp32."""
    device = next(head.parameters()).device
    enc = policy.encode_batch(prompts, responses, device)
    out = policy(**enc, hidden_only=True)  # no LM head: a reward head reads hidden states only
    if pooling == "last":
        return head(out.last_hidden)
    mask = enc["response_mask"].float()
    return (head(out.hidden) * mask).sum(-1) / mask.sum(-1)


def save_reward_model(directory: str | Path, policy: Policy, head: ScalarHead, gain: torch.Tensor,
                      bias: torch.Tensor, pooling: str) -> None:
    """The backbone in Hugging Face format plus ``reward_head.safetensors`` (head, gain, bias; the pooling
    in its metadata): what ``reward=model reward.path=<directory>`` and :func:`load_reward_model` read."""
    policy.model.save_pretrained(str(directory))
    policy.tokenizer.save_pretrained(str(directory))
    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    tensors.update(gain=gain.detach().cpu().reshape(1), bias=bias.detach().cpu().reshape(1))
    save_file(tensors, str(Path(directory) / HEAD_FILE), metadata={"pooling": pooling})


class RewardScorer(nn.Module):
    """A trained reward model for scoring (and refitting): ``policy`` (backbone), ``head``, and the
    ``gain``/``bias`` buffers of its normalisation. Built by :func:`load_reward_model`."""

    def __init__(self, policy: Policy, head: ScalarHead, pooling: str = "last"):
        super().__init__()
        if pooling not in POOLINGS:
            raise UserError(f"unknown reward-model pooling '{pooling}'; choose one of {list(POOLINGS)}")
        self.policy, self.head, self.pooling = policy, head, pooling
        self.register_buffer("gain", torch.tensor(1.0))
        self.register_buffer("bias", torch.tensor(0.0))

    def raw_rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Before gain/bias: ``[N]`` fp32."""
        return raw_rewards(self.policy, self.head, prompts, responses, self.pooling)

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Normalised rewards ``gain * r_raw + bias``: ``[N]`` fp32."""
        return self.gain * self.raw_rewards(prompts, responses) + self.bias

    def batch_rewards(self, batch: Sequence[Comparison]) -> torch.Tensor:
        """Normalised rewards of a batch of comparisons: ``[B,Kmax]`` with ``-inf`` padding."""
        return comparison_rewards(self.rewards, batch)

    def reset_head(self) -> None:
        """A fresh random head and gain 1, bias 0 (Ziegler's online refits start from a new head)."""
        device = next(self.head.parameters()).device
        self.head = ScalarHead(self.policy.hidden_size, init="normal").to(device)
        self.gain.fill_(1.0)
        self.bias.fill_(0.0)

    def save_pretrained(self, directory: str | Path) -> None:
        save_reward_model(directory, self.policy, self.head, self.gain, self.bias, self.pooling)


def load_reward_model(directory: str, device: str | torch.device = "cpu") -> RewardScorer:
    """Load a reward model written by :func:`save_reward_model` (frozen, eval mode, with the pooling it
    was trained with)."""
    head_path = Path(directory) / HEAD_FILE
    if not head_path.is_file():
        raise UserError(f"{directory} is not a reward model of ours (no {HEAD_FILE}); train one with "
                        f"`python train.py algo=reward_model` and point at its run's model/ directory")
    try:
        with safe_open(str(head_path), framework="pt") as f:
            pooling = (f.metadata() or {}).get("pooling", "last")  # files written before pooling existed: last
        tensors = load_file(str(head_path))
        head_state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
        gain, bias = float(tensors["gain"]), float(tensors["bias"])
    except (SafetensorError, KeyError, ValueError, OSError) as e:
        raise UserError(f"{head_path} is corrupt or not a reward head of ours ({str(e)[:160]}); train the reward "
                        f"model again (python train.py algo=reward_model) or restore its model/ directory") from None
    policy = reward_backbone(ModelConfig.coerce({"name": "reward_model", "name_or_path": str(directory)}))
    rm = RewardScorer(policy, ScalarHead(policy.hidden_size, init="normal"), pooling)
    try:
        rm.head.load_state_dict(head_state)
    except RuntimeError as e:
        raise UserError(f"{head_path} does not fit the backbone in {directory}: {str(e).splitlines()[0]}") from None
    rm.gain.fill_(gain)
    rm.bias.fill_(bias)
    rm.requires_grad_(False)
    return rm.eval().to(device)
