"""Reward functions for online algorithms, behind one protocol (the ``reward=`` config group).

    reward=verifier                          the task's verifier (graded score in [0, 1])
    reward=model reward.path=<run>/model     a reward model trained with algo=reward_model
    reward=callable reward.fn=my_module.my_reward     any function with the signature below (or a class,
                                             built with reward.kwargs), importable from PYTHONPATH
    reward=letters                           a toy reward with a signal from the first step

A reward function maps a batch of (prompt, response, target) texts to one score per sample. Hydra builds
it before the algorithm and passes the object as the plugin's ``reward`` argument, so a plugin keeps it
out of its hyperparameters: ``self.save_hyperparameters(ignore=["reward"])``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from feedback_lm.data import tasks
from feedback_lm.errors import UserError
from feedback_lm.reward_head import load_reward_model


@runtime_checkable
class RewardFn(Protocol):
    def __call__(self, prompts: Sequence[str], responses: Sequence[str],
                 targets: Sequence[str | None]) -> torch.Tensor:
        """Scores ``[B]`` (fp32, on the CPU or any device)."""
        ...


class VerifierReward:
    """The task verifier as reward: 1 for a correct answer (normalised exact match), partial
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
    tests and for watching a policy learn (``reward=callable reward.fn=feedback_lm.rewards.LengthReward``).
    """

    def __init__(self, target_chars: int = 8):
        self.target_chars = target_chars

    def __call__(self, prompts, responses, targets=None) -> torch.Tensor:
        t = self.target_chars
        return torch.tensor([-abs(len(r) - t) / t for r in responses])


class CallableReward:
    """``reward=callable reward.fn=<module>.<name>``: a function ``(prompts, responses, targets) -> [N]``, or a
    class built with ``reward.kwargs`` whose instances are called that way."""

    def __init__(self, fn: str, kwargs: Mapping[str, Any] | None = None):
        module, _, name = fn.rpartition(".")
        try:
            target = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as e:
            raise UserError(f"reward.fn={fn}: cannot import it ({e}). Give <module>.<function> and put the module's "
                            f"directory on PYTHONPATH") from None
        if isinstance(target, type):
            target = target(**(kwargs or {}))
        elif kwargs:
            raise UserError(f"reward.kwargs is for a class; reward.fn={fn} is a function: drop reward.kwargs")
        if not callable(target):
            raise UserError(f"reward.fn={fn} is not callable")
        self.fn = target

    def to(self, device) -> CallableReward:
        if hasattr(self.fn, "to"):
            self.fn.to(device)
        return self

    def __call__(self, prompts, responses, targets=None) -> torch.Tensor:
        return torch.as_tensor(self.fn(prompts, responses, targets), dtype=torch.float32)
