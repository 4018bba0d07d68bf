"""Reward functions for online algorithms, behind one protocol (the ``reward=`` config group).

    reward=verifier                          the task's verifier (graded score in [0, 1])
    reward=model reward.path=<run>/model     a reward model trained with algo=reward_model
    reward._target_=my_module.my_reward      any callable with the signature below

A reward function maps a batch of (prompt, response, target) texts to one score per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from feedback_lm.data import tasks


@runtime_checkable
class RewardFn(Protocol):
    def __call__(self, prompts: Sequence[str], responses: Sequence[str],
                 targets: Sequence[str | None]) -> torch.Tensor:
        """Scores ``[B]`` (fp32, on the CPU or any device)."""
        ...


class VerifierReward:
    """The task verifier as reward: 1 for a correct answer (normalised exact match, spec §5.1), partial
    credit for near misses when ``graded`` (``feedback_lm.data.tasks.score``), else 0/1."""

    def __init__(self, task: str, graded: bool = True):
        self.task, self.graded = task, graded

    def __call__(self, prompts, responses, targets) -> torch.Tensor:
        if self.graded:
            return torch.tensor([tasks.score(self.task, r, t) for r, t in zip(responses, targets)])
        return torch.tensor([float(tasks.is_correct(r, t)) for r, t in zip(responses, targets)])


class ModelReward:
    """A trained reward model (``RewardModel.save_pretrained`` output), frozen, scoring in chunks."""

    def __init__(self, path: str, batch_size: int = 64, device: str | None = None):
        from plugins.reward_model import load_reward_model

        self.model = load_reward_model(path, device or "cpu")
        self.batch_size = batch_size

    def to(self, device) -> ModelReward:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, prompts, responses, targets=None) -> torch.Tensor:
        out = [self.model.rewards(prompts[i: i + self.batch_size], responses[i: i + self.batch_size])
               for i in range(0, len(prompts), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0)


class LengthReward:
    """A toy reward: ``-|len(response) - target_chars| / target_chars`` (0 at the target length).

    No task knowledge and a signal from the first step, even for an untrained model: handy for smoke
    tests and for watching a policy learn (``reward._target_=feedback_lm.rewards.LengthReward``).
    """

    def __init__(self, target_chars: int = 8):
        self.target_chars = target_chars

    def __call__(self, prompts, responses, targets=None) -> torch.Tensor:
        t = self.target_chars
        return torch.tensor([-abs(len(r) - t) / t for r in responses])
