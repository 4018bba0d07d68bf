"""The policy adapter: alignment of logits with response tokens, padding, generation (docs/algorithms.md §0.3)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import ByT5Tokenizer, TopKLogitsWarper, TopPLogitsWarper

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


# --------------------------------------------------------------------------------- sampled generation
def test_sample_categorical_draws_from_softmax_and_never_a_masked_entry():
    """ops.sample_categorical (inverse CDF, fp64 running sums): frequencies match softmax(logits) within
    4 standard errors, a -inf entry is never drawn, and chunking the rows changes no draw."""
    logits = torch.tensor([[0.0, 1.0, 2.0, float("-inf"), -1.0, 0.5]]).repeat(40000, 1)
    g = torch.Generator().manual_seed(0)
    token = ops.sample_categorical(logits, generator=g)
    p = torch.softmax(logits[0], -1)
    freq = torch.bincount(token, minlength=6).double() / len(token)
    se = (p.double() * (1 - p.double()) / len(token)).sqrt()
    assert bool(((freq - p.double()).abs() <= 4 * se + 1e-12).all()), (freq, p)
    assert freq[3] == 0
    again = ops.sample_categorical(logits, generator=torch.Generator().manual_seed(0), chunk_elements=600)
    assert torch.equal(again, token)


def test_sample_categorical_edges():
    one_hot = torch.full((5, 7), float("-inf"))
    one_hot[:, 4] = 3.0
    assert ops.sample_categorical(one_hot).tolist() == [4] * 5
    with pytest.raises(FloatingPointError, match="diverged"):
        ops.sample_categorical(torch.tensor([[0.0, float("nan")]]))


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-t5"])
def test_sampled_first_tokens_follow_the_model_distribution(preset):
    """Plain generate's sampler (warpers + inverse-CDF draw, taken by HF's argmax) samples the first new
    token from softmax(logits / τ) of the forward pass, with top-k applied as Hugging Face applies it."""
    torch.manual_seed(0)
    policy = tiny_policy(preset)
    with torch.no_grad():  # a peaked distribution (top token ~0.85 / 0.5 at τ=0.8, ~0.57 / 0.26 at τ=1)
        policy.model.get_output_embeddings().weight.mul_({"tiny-gpt2": 3.0, "tiny-t5": 1.3}[preset])
    ids, mask = policy.encode_prompts(["Q: x\nA:"])
    n, tau = 6000, 0.8
    probe = policy.encode_batch(["Q: x\nA:"], [" "])
    with torch.no_grad():
        logits = policy(**probe).logits[0, 0].float() / tau
    for top_k, top_p in ((0, 1.0), (3, 1.0), (0, 0.6)):
        torch.manual_seed(1)
        gen = policy.generate(ids, mask, max_new_tokens=1, temperature=tau, top_k=top_k, top_p=top_p,
                              num_return_sequences=n, stop_at_eos=False)
        assert gen.response_ids.shape == (n, 1)
        z = logits.clone()[None]
        if top_k:
            z = TopKLogitsWarper(top_k)(None, z)
        if top_p < 1:
            z = TopPLogitsWarper(top_p)(None, z)
        p = torch.softmax(z[0], -1).double()
        freq = torch.bincount(gen.response_ids[:, 0], minlength=p.numel()).double() / n
        se = (p * (1 - p) / n).sqrt()
        assert bool(((freq - p).abs() <= 4.5 * se + 2 / n).all()), (top_k, top_p, (freq - p).abs().max())
        assert bool((freq[p == 0] == 0).all())  # nothing outside the top-k / top-p set


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-t5"])
def test_several_samples_per_prompt_are_prompt_major(preset):
    """num_return_sequences=n: rows come out prompt-major; with top_k=1 every row is its prompt's greedy
    answer (T5 runs its encoder once per prompt and repeats the states)."""
    policy = tiny_policy(preset)
    ids, mask = policy.encode_prompts(PROMPTS)
    greedy = policy.generate(ids, mask, max_new_tokens=6, do_sample=False, stop_at_eos=False)
    torch.manual_seed(0)
    many = policy.generate(ids, mask, max_new_tokens=6, top_k=1, num_return_sequences=3, stop_at_eos=False,
                           output_logprobs=True)
    assert torch.equal(many.response_ids, greedy.response_ids.repeat_interleave(3, 0))
    lp = policy.logprobs(ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), many.response_ids,
                         many.response_mask)
    assert torch.equal(many.logprobs, torch.zeros_like(lp))  # top-1: the draw has probability 1
