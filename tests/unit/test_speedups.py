"""``feedback_lm.speedups``: the fused GELU computes the same function as ``gelu_new``; T5's feed-forward
blocks without the no-op up-cast give bit-identical outputs and gradients under bf16 autocast."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, T5Config
from transformers.activations import ACT2FN
from transformers.models.t5 import modeling_t5 as t5

from feedback_lm.policy import Policy
from feedback_lm.speedups import autocast_t5_feed_forward, fuse_gelu

PROMPTS = ["Q: Sort: pear fig apple\nA:", "Q: x\nA:", "Q: Sort the words: zebra cat\nA:"]
RESPONSES = [" apple fig pear", " x", " cat zebra and more"]


def test_gelu_new_and_the_fused_kernel_are_the_same_function():
    x = torch.linspace(-8, 8, 10001, dtype=torch.float64)
    new, fused = ACT2FN["gelu_new"](x), ACT2FN["gelu_pytorch_tanh"](x)
    assert torch.allclose(new, fused, atol=1e-12, rtol=0)


def test_fuse_gelu_renames_gelu_new_only():
    gpt2 = GPT2Config()
    assert gpt2.activation_function == "gelu_new"
    assert fuse_gelu(gpt2) == ["activation_function"] and gpt2.activation_function == "gelu_pytorch_tanh"
    flan = T5Config(feed_forward_proj="gated-gelu")  # FLAN-T5's setting
    assert flan.dense_act_fn == "gelu_new"
    assert fuse_gelu(flan) == ["dense_act_fn"] and flan.dense_act_fn == "gelu_pytorch_tanh"
    relu = T5Config(feed_forward_proj="relu")
    assert fuse_gelu(relu) == [] and relu.dense_act_fn == "relu"


def _policy(preset: str, **kw) -> Policy:
    torch.manual_seed(0)
    return Policy.from_config({"preset": preset, "tokenizer": "byte", "dropout": 0.0, **kw}).eval()


def test_load_model_fuses_gelu_unless_told_not_to():
    fused, plain = _policy("tiny-gpt2"), _policy("tiny-gpt2", fused_gelu=False)
    assert fused.model.config.activation_function == "gelu_pytorch_tanh"
    assert plain.model.config.activation_function == "gelu_new"
    enc = fused.encode_batch(PROMPTS, RESPONSES)
    args = (enc["prompt_ids"], enc["prompt_mask"], enc["response_ids"], enc["response_mask"])
    with torch.no_grad():  # same seed, same weights: fp32 log-probs agree to float rounding
        a, b = fused.logprobs(*args), plain.logprobs(*args)
    mask = enc["response_mask"].bool()
    assert torch.allclose(a[mask], b[mask], atol=1e-5)


def _t5_pair(gated: bool):
    cfg = T5Config(vocab_size=64, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
                   feed_forward_proj="gated-gelu" if gated else "relu", dropout_rate=0.0,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    reference = t5.T5ForConditionalGeneration(cfg)
    swapped = copy.deepcopy(reference)
    return reference, swapped, autocast_t5_feed_forward(swapped)


@pytest.mark.parametrize("gated", [False, True])
def test_t5_feed_forward_without_the_upcast_is_bit_identical_under_autocast(gated):
    reference, swapped, n = _t5_pair(gated)
    assert n == 4  # 2 encoder + 2 decoder blocks
    ff = (m.encoder.block[0].layer[1].DenseReluDense for m in (reference, swapped))
    assert [type(m).__name__ for m in ff] == (["T5DenseGatedActDense", "_AutocastT5DenseGatedActDense"] if gated
                                              else ["T5DenseActDense", "_AutocastT5DenseActDense"])
    torch.manual_seed(1)
    ids, labels = torch.randint(2, 64, (3, 9)), torch.randint(2, 64, (3, 7))
    results = []
    for model in (reference, swapped):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        results.append((out.logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    (la, ga), (lb, gb) = results
    assert la.dtype == torch.bfloat16 and torch.equal(la, lb)
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)


def test_t5_feed_forward_runs_hugging_faces_forward_without_autocast():
    reference, swapped, _ = _t5_pair(gated=True)
    ids = torch.randint(2, 64, (2, 5))
    with torch.no_grad():
        a = reference(input_ids=ids, decoder_input_ids=ids).logits
        b = swapped(input_ids=ids, decoder_input_ids=ids).logits
    assert torch.equal(a, b)


def test_load_model_swaps_t5_feed_forward_blocks():
    policy = _policy("tiny-t5")
    ff = [m for m in policy.model.modules() if isinstance(m, t5.T5DenseActDense)]
    assert ff and all(type(m).__name__ == "_AutocastT5DenseActDense" for m in ff)
    assert copy.deepcopy(policy.model) is not None  # the swapped classes live at module level
