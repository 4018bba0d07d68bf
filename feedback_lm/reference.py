"""The frozen reference policy π_ref of KL-regularised algorithms (PPO, DPO, RLOO, GRPO), and saving a
policy whatever its adapters.

The reference is the INITIAL policy. Without LoRA it is a frozen copy, built once in
``configure_model`` before any update (``self.ref = frozen_reference(self.policy)``; a submodule, so
Lightning moves it with the module and checkpoints keep it). With LoRA adapters there is no copy:
the reference is the same weights with the adapters switched off (``frozen_reference`` returns
``None``), which is exactly the initial policy because the adapters start at zero (Hu et al. 2021).

Every reference forward runs without gradients and in eval mode (no dropout), whatever mode
Lightning left the module in.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from feedback_lm.policy import Policy


def uses_lora(policy: Policy) -> bool:
    """Whether the policy's model carries (peft) LoRA adapters."""
    return hasattr(policy.model, "disable_adapter")


def frozen_reference(policy: Policy) -> Policy | None:
    """A frozen, eval-mode copy of ``policy`` now, or ``None`` under LoRA (adapters off = the reference)."""
    if uses_lora(policy):
        return None
    return copy.deepcopy(policy).requires_grad_(False).eval()


@contextlib.contextmanager
def reference_policy(policy: Policy, ref: Policy | None) -> Iterator[Policy]:
    """The policy to run reference forwards with: ``ref``, or ``policy`` with its adapters disabled when
    ``ref`` is None; eval mode and no gradients inside, the previous mode restored after."""
    model = policy if ref is None else ref
    was_training = model.training
    model.eval()
    adapters_off = policy.model.disable_adapter() if ref is None else contextlib.nullcontext()
    try:
        with torch.no_grad(), adapters_off:
            yield model
    finally:
        model.train(was_training)


def reference_logprobs(policy: Policy, ref: Policy | None, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                       response_ids: torch.Tensor, response_mask: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """Per-token fp32 log-probs ``[B,R]`` of the responses under the reference (0 on padding), at the
    sampling temperature (Ziegler et al. 2019 build the reference with the policy's temperature).

    Args:
        prompt_ids, prompt_mask: ``[B,P]`` left-padded. response_ids, response_mask: ``[B,R]`` right-padded.
    """
    with reference_policy(policy, ref) as model:
        return model.logprobs(prompt_ids, prompt_mask, response_ids, response_mask, temperature)


def save_policy(policy: Policy, directory: str) -> None:
    """The policy in Hugging Face format with its tokenizer; LoRA adapters are merged (into a copy) so
    that ``model.name_or_path=<directory>`` loads it like any model."""
    model = copy.deepcopy(policy.model).merge_and_unload() if uses_lora(policy) else policy.model
    model.save_pretrained(directory)
    policy.tokenizer.save_pretrained(directory)
