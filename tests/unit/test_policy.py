"""The policy adapter: alignment of logits with response tokens, padding, generation (docs/algorithms.md §0.3)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import ByT5Tokenizer

from feedback_lm import ops
from feedback_lm.policy import Policy, pad_sequences
from tests.conftest import tiny_policy

PROMPTS = ["Q: sort b a\nA:", "Q: a much longer prompt than the first one\nA:", "Q: x\nA:"]
RESPONSES = [" a b", " the answer is long", " y"]


def test_pad_sequences_sides():
    ids, mask = pad_sequences([[5, 6], [7]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[True, True], [False, True]]
    ids, mask = pad_sequences([[5, 6], [7]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6], [7, 0]] and mask.tolist() == [[True, True], [True, False]]


def test_encoding_layout(policy):
    ids, mask = policy.encode_prompts(PROMPTS)
    assert mask[:, -1].all(), "prompts are left-padded"
    ends_with_eos = (ids[:, -1] == policy.eos_token_id).all().item()
    assert ends_with_eos == policy.is_encoder_decoder, "T5 encoders get EOS, causal prompts do not"
    rids, rmask = policy.encode_responses(RESPONSES)
    assert rmask[:, 0].all(), "responses are right-padded"
    last = ops.last_index(rmask)
    assert (rids[torch.arange(3), last] == policy.eos_token_id).all(), "EOS appended to every response"
    assert policy.decode(rids, rmask) == RESPONSES


def test_decode_drops_ids_past_the_tokenizer_vocabulary(policy):
    """A padded embedding matrix (T5: 32128 rows, 32100 tokens) lets a sampler draw ids no tokenizer knows."""
    rids, rmask = policy.encode_responses([" a b"])
    past = len(policy.tokenizer)
    ids = torch.cat([rids[:, :2], torch.tensor([[past, past + 500]]), rids[:, 2:]], dim=1)
    mask = torch.cat([rmask[:, :2], torch.ones(1, 2, dtype=torch.bool), rmask[:, 2:]], dim=1)
    assert policy.decode(ids, mask) == [" a b"]


def test_byte_fast_path_matches_tokenizer():
    p = tiny_policy("tiny-gpt2")
    texts = ["héllo wörld ✓", "plain"]
    assert p._tokenize(texts) == ByT5Tokenizer()(texts, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generation_logprobs_match_forward_with_left_padding(policy, temperature):
    """Spec §3.9 #9: logprobs seen while sampling equal the forward pass at the same temperature."""
    torch.manual_seed(1)
    ids, mask = policy.encode_prompts(PROMPTS)
    gen = policy.generate(ids, mask, max_new_tokens=10, do_sample=True, temperature=temperature,
                          output_logprobs=True)
    lp = policy.logprobs(ids, mask, gen.response_ids, gen.response_mask, temperature=temperature)
    torch.testing.assert_close(lp, gen.logprobs, atol=1e-5, rtol=0)
    assert not (gen.response_ids[~gen.response_mask] != policy.pad_token_id).any(), "padded after EOS"


def test_per_token_logprobs_independent_of_batch_padding(policy):
    """Spec §1.6 #3: the same example scores the same alone and inside a padded batch."""
    enc = policy.encode_batch(PROMPTS, RESPONSES)
    batch_lp = policy.logprobs(**enc)
    for i in range(len(PROMPTS)):
        one = policy.encode_batch(PROMPTS[i:i + 1], RESPONSES[i:i + 1])
        alone = policy.logprobs(**one)[0]
        n = int(one["response_mask"].sum())
        torch.testing.assert_close(batch_lp[i, :n], alone[:n], atol=1e-5, rtol=0)
        assert (batch_lp[i, n:] == 0).all()


def test_hidden_states_shapes(policy):
    enc = policy.encode_batch(PROMPTS, RESPONSES)
    out = policy(**enc, output_hidden=True)
    B, R = enc["response_ids"].shape
    assert out.logits.shape[:2] == (B, R)
    assert out.hidden.shape == (B, R, policy.hidden_size)
    assert out.last_hidden.shape == (B, policy.hidden_size)


def _full_logits(policy, enc) -> torch.Tensor:
    """The reference path: the LM head on EVERY position, then the R response-aligned rows picked out."""
    if policy.is_encoder_decoder:  # the decoder reads the response only: every position is a response one
        with sdpa_kernel(SDPBackend.MATH):  # the kernel Policy.forward pins on the CPU
            return policy.model(input_ids=enc["prompt_ids"], attention_mask=enc["prompt_mask"].long(),
                                decoder_input_ids=policy.decoder_input_ids(enc["response_ids"])).logits
    P, R = enc["prompt_ids"].shape[1], enc["response_ids"].shape[1]
    attention = torch.cat([enc["prompt_mask"], enc["response_mask"]], 1).long()
    logits = policy.model(input_ids=torch.cat([enc["prompt_ids"], enc["response_ids"]], 1), attention_mask=attention,
                          position_ids=(attention.cumsum(-1) - 1).clamp(min=0)).logits
    assert logits.shape[1] == P + R  # really every position
    return logits[:, P - 1:P + R - 1]


@torch.no_grad()
def test_lm_head_only_on_response_positions_gives_the_same_logprobs(policy):
    """Slicing the hidden states to the R response positions before the LM head changes no number."""
    enc = policy.encode_batch(PROMPTS, RESPONSES)
    full = _full_logits(policy, enc)
    out = policy(**enc, output_hidden=True)
    assert out.logits.shape == full.shape
    assert torch.equal(out.logits, full)
    expected = ops.gather_logprobs(full, enc["response_ids"]) * enc["response_mask"]
    assert torch.equal(policy.logprobs(**enc), expected)


def test_last_hidden_ignores_right_padding(policy):
    """Spec §2.d #8: the read-out at the last real token does not move with extra padding."""
    enc = policy.encode_batch(PROMPTS[:1], RESPONSES[:1])
    pad = 5
    padded = dict(enc)
    padded["response_ids"] = torch.nn.functional.pad(enc["response_ids"], (0, pad), value=policy.pad_token_id)
    padded["response_mask"] = torch.nn.functional.pad(enc["response_mask"], (0, pad), value=False)
    a = policy(**enc, output_hidden=True).last_hidden
    b = policy(**padded, output_hidden=True).last_hidden
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_greedy_generation_is_deterministic(policy):
    ids, mask = policy.encode_prompts(PROMPTS)
    a = policy.generate(ids, mask, max_new_tokens=8, do_sample=False)
    b = policy.generate(ids, mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(a.response_ids, b.response_ids)
    assert a.response_ids.shape[1] <= 8


def test_lora_trains_only_adapters_for_both_families():
    for preset in ("tiny-t5", "tiny-gpt2"):
        p = tiny_policy(preset, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None})
        trainable = [n for n, q in p.named_parameters() if q.requires_grad]
        assert trainable and all("lora_" in n for n in trainable), trainable[:3]
        enc = p.encode_batch(PROMPTS, RESPONSES)
        p.logprobs(**enc).sum().backward()
        assert all(q.grad is not None for n, q in p.named_parameters() if q.requires_grad)


def test_policy_from_pretrained_directory(tmp_path):
    """The real loading path (from_pretrained by path) on a tiny model saved to disk."""
    src = tiny_policy("tiny-gpt2")
    src.model.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    loaded = Policy.from_config({"name": "local", "name_or_path": str(tmp_path)})
    enc = src.encode_batch(PROMPTS, RESPONSES)
    torch.testing.assert_close(loaded.logprobs(**enc), src.logprobs(**enc))
