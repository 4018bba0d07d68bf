"""Evaluation metrics shared by the plugins."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from feedback_lm.data.tasks import is_correct


def exact_match(outputs: Sequence[str], targets: Sequence[str],
                match: Callable[[str, str], bool] = is_correct) -> torch.Tensor:
    """Normalised exact match per sample (spec §5.1 normalisers), as a float tensor ``[B]`` of 0/1."""
    return torch.tensor([float(match(o, t)) for o, t in zip(outputs, targets)])


@torch.no_grad()
def greedy_eval(policy, prompts: Sequence[str], targets: Sequence[str], max_new_tokens: int,
                device: torch.device | None = None) -> tuple[list[str], torch.Tensor]:
    """Greedy-decode ``prompts`` and score them against ``targets``.

    Returns:
        (outputs, correct ``[B]`` float 0/1).
    """
    ids, mask = policy.encode_prompts(prompts)
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    gen = policy.generate(ids, mask, max_new_tokens=max_new_tokens, do_sample=False)
    outputs = policy.decode(gen.response_ids, gen.response_mask)
    return outputs, exact_match(outputs, targets)
