"""The rollout fast path (feedback_lm.sampling): same distribution and layout as plain generate."""

from __future__ import annotations

import pytest
import torch

from feedback_lm import ops
from feedback_lm.policy import Policy

PROMPTS = ["Q: abc def\nA:", "Q: a\nA:", "Q: sort these words please, all of them\nA:"]


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-t5"])
def policy(request):
    torch.manual_seed(0)
    return Policy.from_config({"name": request.param, "preset": request.param, "tokenizer": "byte"}).eval()


def test_greedy_fast_path_equals_plain_generate(policy):
    with torch.no_grad():  # make EOS likely so that rows stop at different times
        emb = policy.model.get_output_embeddings().weight
        emb[policy.eos_token_id] *= 3
    ids, mask = policy.encode_prompts(PROMPTS)
    plain = policy.generate(ids, mask, max_new_tokens=20, do_sample=False)
    fast = policy.generate(ids, mask, max_new_tokens=20, do_sample=False, fast=True)
    assert torch.equal(fast.response_ids, plain.response_ids)
    assert torch.equal(fast.response_mask, plain.response_mask)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_the_forward_pass(policy, temperature):
    ids, mask = policy.encode_prompts(PROMPTS)
    torch.manual_seed(1)
    gen = policy.generate(ids, mask, max_new_tokens=16, temperature=temperature, output_logprobs=True, fast=True)
    forward = policy.logprobs(ids, mask, gen.response_ids, gen.response_mask, temperature)
    torch.testing.assert_close(gen.logprobs, forward, atol=1e-5, rtol=0)
    assert torch.equal(gen.response_mask, ops.response_mask(gen.response_ids.masked_fill(~gen.response_mask,
                                                                                          policy.eos_token_id),
                                                            policy.eos_token_id) & gen.response_mask)


def test_fixed_length_and_repeated_calls_reuse_the_cache(policy):
    ids, mask = policy.encode_prompts(PROMPTS)
    a = policy.generate(ids, mask, max_new_tokens=9, stop_at_eos=False, fast=True, num_return_sequences=2)
    assert a.response_ids.shape == (6, 9) and bool(a.response_mask.all())
    b = policy.generate(ids, mask, max_new_tokens=9, stop_at_eos=False, fast=True, num_return_sequences=2)
    assert len(policy._fast_sampler._caches) == 1
    assert not torch.equal(a.response_ids, b.response_ids)  # fresh samples, a reset cache


def test_gumbel_max_draws_from_softmax():
    from feedback_lm.sampling import _draw

    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).repeat(20000, 1)
    token, _ = _draw(logits, torch.tensor(0.5), greedy=False)
    freq = torch.bincount(token, minlength=4).float() / len(token)
    torch.testing.assert_close(freq, torch.softmax(logits[0] / 0.5, -1), atol=0.01, rtol=0)
