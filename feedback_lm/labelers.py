"""Labelers: who says which of K sampled responses is better.

The papers' step 1 collects *comparisons*: K responses to one prompt, ordered by a human (InstructGPT
§3.5 ranks K = 4..9 responses; Ziegler et al. 2019 §2 asks for the best of 4). A labeler is anything
with a :meth:`Labeler.label` method, so a person behind a web app, a file of existing labels or
another model can stand in for the simulated one here.

:class:`SimulatedLabeler` plays the human with the task's verifier: every response gets the graded
:func:`feedback_lm.data.tasks.score` (1.0 for a correct answer, partial credit that still orders the
wrong ones), and the label is read off the scores. ``noise`` makes it err like a person does, so the
effect of label noise on a reward model can be measured.

A label is a list of *tiers*: indices of responses that are equally good, best tier first. Pairs are
formed only across tiers (ties are dropped, InstructGPT C.2, spec ``ALGORITHMS.md`` §2.b). A label
whose responses all tie has a single tier and gives no pair; callers skip such rows
(``feedback_lm.collect`` counts them).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from feedback_lm.data import tasks
from feedback_lm.errors import UserError

__all__ = ["MODES", "Label", "Labeler", "SimulatedLabeler", "tiers_from_scores"]

MODES = ("rank", "best")

# Scores are compared after rounding, so two answers that earn the same credit through different
# float operations (e.g. 0.9 * (0.25 + 0.75) / 2 and 0.9 * (0.5 + 0.5) / 2) land in the same tier.
_SCORE_DECIMALS = 9


@dataclass
class Label:
    """One prompt's label over its K responses.

    Attributes:
        tiers: partition of ``range(K)`` into groups of equally good responses, best group first;
            indices within a tier ascend. One tier means everything tied: no comparison pairs.
        best: index of the response chosen as best (best-of-K labels), or None (rankings, or no
            choice possible because all tied).
        meta: provenance, e.g. ``{"labeler": "simulated", "scores": [...], "noisy": False}``.
    """

    tiers: list[list[int]]
    best: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def has_pairs(self) -> bool:
        """True when at least one (better, worse) pair can be formed, i.e. there are >= 2 tiers."""
        return len(self.tiers) >= 2


@runtime_checkable
class Labeler(Protocol):
    """Anything that can label K responses to one prompt (a person, a model, the verifier)."""

    def label(self, prompt: str, responses: list[str], target: str | None) -> Label:
        """Label ``responses`` (K >= 1) to ``prompt``; ``target`` is the gold answer when known."""
        ...


class SimulatedLabeler:
    """The task verifier as the "human" labeler.

    Args:
        task: task name, selects the partial-credit rule of :func:`tasks.score` (registered tasks by
            their kind, other names, e.g. real BBH files, by the target's shape).
        mode: ``"rank"``: tiers = responses grouped by equal score, best first, ``best=None``.
            ``"best"``: ``best`` = the highest-scoring response (a seeded coin decides among exact
            ties), tiers ``[[best], [the others]]`` as in best-of-K labelling (Ziegler et al. 2019).
        noise: per label, the probability of one mistake. Rank mode swaps two adjacent tiers chosen
            uniformly; best mode picks a uniformly random *other* response as best. A label with a
            single tier (all responses tied) cannot be wrong and is returned unchanged.
        seed: seed of the labeler's own random streams (one for tie breaks, one for mistakes); the
            same seed and the same sequence of calls give the same labels, and a noisy labeler breaks
            ties exactly like the noiseless one with the same seed.

    All-tied responses give ``Label(tiers=[[0, ..., K-1]], best=None)`` in both modes: no pair can
    be formed and the caller should skip the row.
    """

    def __init__(self, task: str, mode: str = "rank", noise: float = 0.0, seed: int = 0):
        if mode not in MODES:
            raise UserError(f"labeler mode must be one of {', '.join(MODES)}, got {mode!r}")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0.0 <= noise <= 1.0:
            raise UserError(f"labeler noise must be a probability in [0, 1], got {noise!r}")
        self.task, self.mode, self.noise, self.seed = task, mode, float(noise), seed
        # Two streams, so that tie breaks are the same at every noise level: a noisy labeler errs
        # relative to exactly the label the noiseless one (same seed) gives.
        self._tie_rng = random.Random(seed)
        self._noise_rng = random.Random(f"{seed}:noise")

    def label(self, prompt: str, responses: list[str], target: str | None) -> Label:
        """Score each response against ``target`` and turn the scores into a label.

        ``prompt`` is not read: the verifier only needs the gold answer.

        Raises:
            ValueError: no responses, or no target (the verifier cannot judge without one).
        """
        if not responses:
            raise ValueError("SimulatedLabeler.label needs at least one response")
        if target is None:
            raise ValueError("SimulatedLabeler needs the gold target to score responses")
        scores = [tasks.score(self.task, r, target) for r in responses]
        tiers = tiers_from_scores(scores)
        best = None
        if self.mode == "best" and len(tiers) > 1:
            best = self._tie_rng.choice(tiers[0])  # random among exact ties
            tiers = [[best], [i for i in range(len(responses)) if i != best]]
        noisy = self._noise_rng.random() < self.noise and len(tiers) > 1
        if noisy:
            if self.mode == "rank":
                j = self._noise_rng.randrange(len(tiers) - 1)
                tiers[j], tiers[j + 1] = tiers[j + 1], tiers[j]
            else:
                best = self._noise_rng.choice([i for i in range(len(responses)) if i != best])
                tiers = [[best], [i for i in range(len(responses)) if i != best]]
        meta = {"labeler": "simulated", "mode": self.mode, "scores": scores, "noisy": noisy}
        return Label(tiers=tiers, best=best, meta=meta)

    def label_all(self, prompts: Sequence[str], responses_per_prompt: Sequence[Sequence[str]],
                  targets: Sequence[str | None]) -> list[Label]:
        """:meth:`label` for each prompt in order; the three sequences must have equal lengths."""
        if not len(prompts) == len(responses_per_prompt) == len(targets):
            raise ValueError(f"label_all needs as many response lists and targets as prompts, got "
                             f"{len(prompts)} prompts, {len(responses_per_prompt)} response lists, "
                             f"{len(targets)} targets")
        return [self.label(p, list(rs), t) for p, rs, t in zip(prompts, responses_per_prompt, targets)]


def tiers_from_scores(scores: Sequence[float]) -> list[list[int]]:
    """Group response indices by equal score (rounded to 9 decimals), highest score first.

    Example: ``tiers_from_scores([0.2, 1.0, 0.2, 0.0]) == [[1], [0, 2], [3]]``.
    """
    groups: dict[float, list[int]] = {}
    for i, s in enumerate(scores):
        groups.setdefault(round(float(s), _SCORE_DECIMALS), []).append(i)
    return [groups[s] for s in sorted(groups, reverse=True)]
