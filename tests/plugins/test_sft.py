"""SFT: docs/algorithms.md §1.6 tests, plus the plugin contract for both families."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import ByT5Tokenizer

from feedback_lm import ops
from feedback_lm.policy import Policy
from plugins.sft import sft_loss
from tests.conftest import tiny_policy


class FixedLogits(nn.Module):
    """A 'causal LM' whose logits are a parameter: lets the tests see exactly which positions count."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.config = SimpleNamespace(is_encoder_decoder=False, pad_token_id=0, decoder_start_token_id=0)

    def forward(self, input_ids, logits_to_keep=0, **kwargs):
        out = self.logits if not logits_to_keep else self.logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=out)


def _causal_example():
    # Spec §1.6 #1: V=3, z = [2 | 0, 1]: one prompt token, response [0, 1].
    logits = torch.tensor([[[1.0, 0, 0], [0, 2.0, 0], [5.0, -3, 1]]])
    policy = Policy(FixedLogits(logits), ByT5Tokenizer())
    batch = dict(prompt_ids=torch.tensor([[2]]), prompt_mask=torch.tensor([[True]]),
                 response_ids=torch.tensor([[0, 1]]), response_mask=torch.tensor([[True, True]]))
    return policy, batch


def test_analytic_causal_loss():
    policy, batch = _causal_example()
    loss = sft_loss(policy(**batch).logits, batch["response_ids"], batch["response_mask"])
    assert loss.item() == pytest.approx(0.395495, abs=1e-6)


def test_prompt_positions_get_no_loss_and_no_gradient():
    """Spec §1.6 #2: logits that predict prompt tokens (and the position after the last token) do not
    change the loss, and their gradient is exactly 0."""
    logits = torch.randn(1, 5, 7)
    policy = Policy(FixedLogits(logits.clone()), ByT5Tokenizer())
    batch = dict(prompt_ids=torch.tensor([[3, 4, 5]]), prompt_mask=torch.ones(1, 3, dtype=torch.bool),
                 response_ids=torch.tensor([[6, 1]]), response_mask=torch.ones(1, 2, dtype=torch.bool))
    loss = sft_loss(policy(**batch).logits, batch["response_ids"], batch["response_mask"])
    loss.backward()
    grad = policy.model.logits.grad[0]
    assert (grad[:2] == 0).all() and (grad[4] == 0).all(), "positions 0,1 predict prompt tokens; 4 predicts nothing"
    assert (grad[2:4] != 0).any()
    noisy = logits.clone()
    noisy[:, :2] += 10 * torch.randn(1, 2, 7)
    policy2 = Policy(FixedLogits(noisy), ByT5Tokenizer())
    loss2 = sft_loss(policy2(**batch).logits, batch["response_ids"], batch["response_mask"])
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-6)


def test_normalisations():
    """Spec §1.6 #4: token_mean vs sequence_mean vs sum on sequences with 1 and 3 target tokens."""
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 0, 0], [2, 3, 4]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    nll = -ops.gather_logprobs(logits, targets)
    l1, l2, l3, l4 = nll[0, 0], nll[1, 0], nll[1, 1], nll[1, 2]
    assert sft_loss(logits, targets, mask, "token_mean").item() == pytest.approx(((l1 + l2 + l3 + l4) / 4).item(), abs=1e-6)
    assert sft_loss(logits, targets, mask, "sequence_mean").item() == pytest.approx(
        ((l1 + (l2 + l3 + l4) / 3) / 2).item(), abs=1e-6)
    assert sft_loss(logits, targets, mask, "sum").item() == pytest.approx((l1 + l2 + l3 + l4).item(), abs=1e-5)
    with pytest.raises(ValueError, match="normalize"):
        sft_loss(logits, targets, mask, "bogus")


def test_padding_invariance(policy):
    """Spec §1.6 #3: per-token losses are equal padded in a batch and unpadded one at a time."""
    prompts, responses = ["Q: ab\nA:", "Q: a longer one\nA:"], [" xyz wvu", " q"]
    enc = policy.encode_batch(prompts, responses)
    nll = -ops.gather_logprobs(policy(**enc).logits, enc["response_ids"])
    for i in range(2):
        one = policy.encode_batch(prompts[i:i + 1], responses[i:i + 1])
        n = int(one["response_mask"].sum())
        alone = -ops.gather_logprobs(policy(**one).logits, one["response_ids"])[0, :n]
        torch.testing.assert_close(nll[i, :n], alone, atol=1e-5, rtol=0)


def test_encoder_decoder_parity_with_hf():
    """Spec §1.6 #5: equals HF's loss with -100 label padding; decoder inputs are shift_right(labels)."""
    policy = tiny_policy("tiny-t5")
    enc = policy.encode_batch(["Q: one\nA:", "Q: two two\nA:"], [" 1", " 22 22"])
    labels = enc["response_ids"].masked_fill(~enc["response_mask"], -100)
    model = policy.model
    assert torch.equal(policy.decoder_input_ids(enc["response_ids"]), model._shift_right(labels))
    hf = model(input_ids=enc["prompt_ids"], attention_mask=enc["prompt_mask"].long(), labels=labels).loss
    ours = sft_loss(policy(**enc).logits, enc["response_ids"], enc["response_mask"])
    assert ours.item() == pytest.approx(hf.item(), abs=1e-5)


def test_causal_parity_with_hf():
    """Spec §1.6 #6: one sequence, equals HF's loss with the prompt labels set to -100."""
    policy = tiny_policy("tiny-gpt2")
    enc = policy.encode_batch(["Q: one two\nA:"], [" 12"])
    ids = torch.cat([enc["prompt_ids"], enc["response_ids"]], 1)
    labels = ids.clone()
    labels[:, : enc["prompt_ids"].shape[1]] = -100
    hf = policy.model(input_ids=ids, labels=labels).loss
    ours = sft_loss(policy(**enc).logits, enc["response_ids"], enc["response_mask"])
    assert ours.item() == pytest.approx(hf.item(), abs=1e-5)


def test_overfit_one_pair():
    """Spec §1.6 #7: a tiny GPT-2 memorises one pair to loss < 0.05 within 300 steps at lr 1e-3."""
    policy = tiny_policy("tiny-gpt2")
    enc = policy.encode_batch(["Q: sort c a b\nA:"], [" a b c"])
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for step in range(300):
        loss = sft_loss(policy(**enc).logits, enc["response_ids"], enc["response_mask"])
        if loss.item() < 0.05:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, f"loss {loss.item():.3f} after {step} steps"
    assert math.isfinite(loss.item())


def test_sft_plugin_contract():
    """docs/architecture.md §3: both tiny architectures, finite loss, params change, save -> resume."""
    from feedback_lm.testing import check_plugin

    results = check_plugin("sft", overrides=["algo.max_new_tokens=8"])
    for metrics in results.values():
        assert {"train/loss", "val/accuracy", "val/loss"} <= set(metrics)
