"""Shared pieces of the online algorithms: sample k and score, sequence log-probs of given texts, the
reference policy (frozen copy, or LoRA adapters off), several optimizer steps per Lightning step."""

from __future__ import annotations

import pytest
import torch

from feedback_lm import ops
from feedback_lm.errors import UserError
from feedback_lm.online import sample_and_score, score_responses, sequence_logprobs
from feedback_lm.policy import Policy
from feedback_lm.reference import frozen_reference, reference_logprobs, reference_policy
from feedback_lm.testing import compose


def _policy(model="tiny-gpt2", lora=0) -> Policy:
    torch.manual_seed(0)
    return Policy.from_config(compose([f"model={model}", f"model.lora.r={lora}"]).model)


def test_score_responses_checks_what_the_reward_returns():
    assert score_responses(lambda p, r, t: [1, 2], ["a", "b"], ["x", "y"], [None, None]).tolist() == [1.0, 2.0]
    with pytest.raises(UserError, match="3 scores for 2 responses"):
        score_responses(lambda p, r, t: [1, 2, 3], ["a", "b"], ["x", "y"], [None, None])
    with pytest.raises(UserError, match="NaN"):
        score_responses(lambda p, r, t: [float("nan"), 0], ["a", "b"], ["x", "y"], [None, None])


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_sample_and_score_k_per_prompt(model):
    policy = _policy(model)
    ref = frozen_reference(policy)
    seen = {}

    def reward(prompts, responses, targets):
        seen.update(prompts=prompts, targets=targets)
        return [float(len(r)) for r in responses]

    ro = sample_and_score(policy, ["Q: a\nA:", "Q: bb\nA:"], ["a", "bb"], reward, k=3, max_new_tokens=6,
                          ref=ref, with_reference=True)
    assert len(ro) == 6 and seen["prompts"] == ["Q: a\nA:"] * 3 + ["Q: bb\nA:"] * 3  # prompt-major
    assert seen["targets"] == ["a"] * 3 + ["bb"] * 3
    assert ro.scores.tolist() == [float(len(r)) for r in ro.response]
    # π = ρ at the start: the stored log-probs equal the reference's, and match a fresh forward
    torch.testing.assert_close(ro.logprobs, ro.ref_logprobs, atol=1e-5, rtol=0)
    assert not ro.logprobs.requires_grad
    fresh = policy.logprobs(ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
    torch.testing.assert_close(ro.logprobs, fresh.detach(), atol=1e-5, rtol=0)


def test_sequence_logprobs_sum_the_response_and_its_eos():
    policy = _policy()
    s = sequence_logprobs(policy, ["Q: a\nA:"], [" a"])
    enc = policy.encode_batch(["Q: a\nA:"], [" a"])
    lp = ops.gather_logprobs(policy(**enc).logits, enc["response_ids"])
    assert enc["response_ids"][0, -1].item() == policy.eos_token_id
    assert s.item() == pytest.approx(lp.sum().item(), abs=1e-5)
    assert s.requires_grad


def test_frozen_copy_reference_does_not_follow_the_policy():
    policy = _policy()
    ref = frozen_reference(policy)
    assert not any(p.requires_grad for p in ref.parameters())
    enc = policy.encode_batch(["Q: a\nA:"], [" a b"])
    before = reference_logprobs(policy, ref, *enc.values())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.testing.assert_close(reference_logprobs(policy, ref, *enc.values()), before)
    ref.train()  # Lightning may flip the mode; reference forwards still run in eval mode, then restore it
    with reference_policy(policy, ref) as model:
        assert not model.training and not torch.is_grad_enabled()
    assert ref.training


def test_lora_reference_is_the_policy_with_adapters_off():
    policy = _policy(lora=4)
    assert frozen_reference(policy) is None
    enc = policy.encode_batch(["Q: a\nA:"], [" a b"])
    before = reference_logprobs(policy, None, *enc.values())
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    after_policy = policy.logprobs(*enc.values()).detach()
    torch.testing.assert_close(reference_logprobs(policy, None, *enc.values()), before)
    assert (after_policy - before).abs().max() > 1e-3


def test_require_reward_and_task_batch_refuse_with_the_option_to_use():
    from feedback_lm.data.comparisons import Comparison
    from feedback_lm.online import require_reward, task_batch

    with pytest.raises(UserError, match="algo=rloo needs a reward: reward=verifier"):
        require_reward(None, "rloo")
    assert task_batch({"prompt": ["a", "b"], "target": ["x", "y"]}, "grpo") == (["a", "b"], ["x", "y"])
    assert task_batch({"prompt": ["a"]}, "grpo") == (["a"], [None])
    with pytest.raises(UserError, match="not data=comparisons"):
        task_batch([Comparison(prompt="p", responses=["a", "b"], tiers=[[0], [1]])], "grpo")
