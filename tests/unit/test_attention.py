"""``model.attention`` picks the attention kernel; the kernels compute the same log-probs. ``hidden_only``
skips the LM head and leaves the hidden states as they are."""

from __future__ import annotations

import pytest
import torch

from feedback_lm.errors import UserError
from feedback_lm.models import ModelConfig
from feedback_lm.policy import Policy
from feedback_lm.testing import compose

PROMPTS = ["Q: Sort: pear fig apple\nA:", "Q: x\nA:", "Q: Sort the words: zebra cat\nA:"]
RESPONSES = [" apple fig pear", " x", " cat zebra and more"]


def _logprobs(preset: str, attention: str | None) -> tuple[Policy, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    policy = Policy.from_config({"preset": preset, "tokenizer": "byte", "dropout": 0.0, "attention": attention}).eval()
    enc = policy.encode_batch(PROMPTS, RESPONSES)
    with torch.no_grad():
        lp = policy.logprobs(enc["prompt_ids"], enc["prompt_mask"], enc["response_ids"], enc["response_mask"])
    return policy, lp, enc["response_mask"].bool()


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-t5"])
def test_eager_and_sdpa_give_the_same_logprobs(preset):
    eager, a, mask = _logprobs(preset, "eager")
    sdpa, b, _ = _logprobs(preset, "sdpa")
    assert eager.model.config._attn_implementation == "eager"
    assert sdpa.model.config._attn_implementation == "sdpa"
    assert torch.allclose(a[mask], b[mask], atol=1e-5)


def test_presets_pick_their_kernel():
    assert compose(["model=tiny-gpt2"]).model.attention == "eager"   # faster at this size on the CPU
    assert compose(["model=tiny-t5"]).model.attention == "eager"     # the same
    assert compose(["model=gpt2"]).model.attention is None           # the library's default


def test_an_unknown_kernel_is_one_clear_error():
    with pytest.raises(UserError, match=r"model.attention='fast' is not an attention kernel; choose one of"):
        ModelConfig.coerce({"preset": "tiny-t5", "attention": "fast"})


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-t5"])
def test_hidden_only_gives_the_same_hidden_states_without_logits(preset):
    torch.manual_seed(0)
    policy = Policy.from_config({"preset": preset, "tokenizer": "byte", "dropout": 0.0}).eval()
    enc = policy.encode_batch(PROMPTS, RESPONSES)
    with torch.no_grad():
        full = policy(**enc, output_hidden=True)
        only = policy(**enc, hidden_only=True)
    assert only.logits is None and full.logits is not None
    assert torch.equal(only.hidden, full.hidden) and torch.equal(only.last_hidden, full.last_hidden)
