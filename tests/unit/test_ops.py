"""Unit tests of feedback_lm.ops against the hand-computed numbers of docs/algorithms.md §0.4 and §3.9."""

import math

import pytest
import torch
from torch.testing import assert_close

from feedback_lm import ops


def t(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


# --- §0.4 primitives -------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gather_logprobs_matches_manual_log_softmax(temperature):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=gen) * 4
    tokens = torch.randint(0, 5, (2, 3), generator=gen)
    manual = torch.zeros(2, 3)
    for b in range(2):
        for i in range(3):
            z = logits[b, i].double() / temperature
            manual[b, i] = float(z[tokens[b, i]] - math.log(z.exp().sum()))
    out = ops.gather_logprobs(logits, tokens, temperature)
    assert out.shape == (2, 3) and out.dtype == torch.float32
    assert_close(out, manual, atol=1e-6, rtol=0)


def test_gather_logprobs_is_fp32_for_bf16_logits():
    logits = torch.randn(1, 4, 7).to(torch.bfloat16)
    tokens = torch.tensor([[0, 3, 6, 2]])
    out = ops.gather_logprobs(logits, tokens, temperature=0.5)
    expected = torch.log_softmax(logits.float() / 0.5, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)
    assert out.dtype == torch.float32
    assert_close(out, expected, atol=1e-6, rtol=0)


def test_entropy_from_logits():
    assert ops.entropy_from_logits(t([2.0, 0.0, 0.0])).item() == pytest.approx(0.665573, abs=1e-6)
    uniform = ops.entropy_from_logits(torch.full((2, 3, 11), 5.0))
    assert uniform.shape == (2, 3)
    assert_close(uniform, torch.full((2, 3), math.log(11)), atol=1e-6, rtol=0)


def test_entropy_is_stable_for_large_logits():
    assert ops.entropy_from_logits(t([1000.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_masked_mean_sum_var():
    x = t([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert ops.masked_sum(x, mask).item() == pytest.approx(15.0)
    assert ops.masked_mean(x, mask).item() == pytest.approx(3.0)
    assert_close(ops.masked_sum(x, mask, dim=-1), t([3.0, 12.0]))
    assert_close(ops.masked_mean(x, mask, dim=-1), t([1.5, 4.0]))
    assert_close(ops.masked_mean(x, mask.float(), dim=0), t([2.0, 3.0, 5.0]))
    # population variance of [1, 2, 3, 4, 5]
    assert ops.masked_var(x, mask).item() == pytest.approx(2.0)


def test_masked_ops_ignore_garbage_at_masked_positions():
    x = t([[1.0, float("inf")], [3.0, float("nan")]])
    mask = torch.tensor([[True, False], [True, False]])
    assert ops.masked_mean(x, mask).item() == pytest.approx(2.0)
    assert_close(ops.masked_whiten(x, mask), t([[-1.0, 0.0], [1.0, 0.0]]), atol=1e-6, rtol=0)


def test_masked_whiten_spec_numbers():
    # docs/algorithms.md §3.9 #3
    x = t([[1.0, 2.0], [3.0, 4.0]])
    ones = torch.ones(2, 2, dtype=torch.bool)
    shifted = t([[-1.341641, -0.447214], [0.447214, 1.341641]])
    assert_close(ops.masked_whiten(x, ones, shift_mean=True), shifted, atol=1e-5, rtol=0)
    assert_close(ops.masked_whiten(x, ones, shift_mean=False), shifted + 2.5, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_uses_only_valid_elements(shift_mean):
    x = t([[1.0, 2.0], [3.0, 50.0]])
    mask = torch.tensor([[True, True], [True, False]])
    # valid elements [1, 2, 3]: mean 2, population variance 2/3
    std = math.sqrt(2.0 / 3.0 + 1e-8)
    expected = t([[-1.0 / std, 0.0], [1.0 / std, 0.0]])
    if not shift_mean:
        expected = expected + 2.0 * mask
    assert_close(ops.masked_whiten(x, mask, shift_mean=shift_mean), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([5, 6, 2, 7, 2], [1, 1, 1, 0, 0]),  # first EOS kept, everything after dropped
        ([5, 6, 7, 8, 9], [1, 1, 1, 1, 1]),  # no EOS: all valid
        ([2, 6, 7, 8, 9], [1, 0, 0, 0, 0]),  # EOS at position 0
        ([5, 6, 7, 8, 2], [1, 1, 1, 1, 1]),  # EOS at the last position
    ],
)
def test_response_mask(ids, expected):
    out = ops.response_mask(torch.tensor([ids]), eos_token_id=2)
    assert out.dtype == torch.bool
    assert out.tolist() == [[bool(v) for v in expected]]


def test_response_mask_batched_with_pad_mask():
    ids = torch.tensor([[5, 2, 0, 0], [5, 6, 7, 0]])
    pad = torch.tensor([[True, True, True, True], [True, True, True, False]])
    out = ops.response_mask(ids, eos_token_id=2, pad_mask=pad)
    assert out.tolist() == [[True, True, False, False], [True, True, True, False]]


def test_last_index():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    out = ops.last_index(mask)
    assert out.dtype == torch.long
    assert out.tolist() == [2, 0, 3, 0]


def test_seq_logprob_and_mean():
    lp = t([[-1.0, -2.0, -9.0], [-0.5, -0.5, -2.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert_close(ops.seq_logprob(lp, mask), t([-3.0, -3.0]))
    assert_close(ops.seq_logprob_mean(lp, mask), t([-1.5, -1.0]))


# --- §3.3 rewards -----------------------------------------------------------------------------------


def test_kl_penalty_rewards_spec_numbers():
    # docs/algorithms.md §3.9 #1
    logprobs = t([[-1.0, -2.0, -0.5]])
    ref = t([[-1.5, -1.0, -0.5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    rewards, kl = ops.kl_penalty_rewards(logprobs, ref, t([2.0]), mask, beta=0.1)
    assert_close(kl, t([[0.5, -1.0, 0.0]]))
    assert_close(rewards, t([[-0.05, 0.10, 2.00]]))
    assert_close(ops.sequence_kl(kl, mask), t([-0.5]))


def test_kl_penalty_rewards_puts_score_at_last_valid_token():
    logprobs = t([[-1.0, -2.0, -0.5, -7.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = t([[-1.5, -1.0, -0.5, 3.0], [-1.0, -1.0, -1.0, -1.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    rewards, kl = ops.kl_penalty_rewards(logprobs, ref, t([2.0, -1.0]), mask, beta=0.1)
    assert_close(rewards, t([[-0.05, 0.10, 2.00, 0.0], [-1.0, 0.0, 0.0, 0.0]]))
    assert_close(kl, t([[0.5, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert_close(ops.sequence_kl(kl, mask), t([-0.5, 0.0]))


# --- §3.4 GAE ---------------------------------------------------------------------------------------


def test_gae_spec_numbers():
    # docs/algorithms.md §3.9 #2
    rewards = t([[-0.1, -0.2, 1.0]])
    values = t([[0.5, 0.4, 0.3]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, returns = ops.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert_close(adv, t([[0.14675, 0.365, 0.7]]), atol=1e-6, rtol=0)
    assert_close(returns, t([[0.64675, 0.765, 1.0]]), atol=1e-6, rtol=0)


def test_gae_with_discount():
    rewards = t([[1.0, 2.0]])
    values = t([[0.5, 1.0]])
    adv, returns = ops.gae(rewards, values, torch.ones(1, 2), gamma=0.9, lam=0.5)
    # t=1: delta = 2 - 1 = 1; t=0: delta = 1 + 0.9*1 - 0.5 = 1.4, adv = 1.4 + 0.45*1 = 1.85
    assert_close(adv, t([[1.85, 1.0]]))
    assert_close(returns, t([[2.35, 2.0]]))


def test_gae_ignores_tokens_after_eos():
    # Row 0 is the spec example followed by two garbage tokens; row 1 is the clean spec example.
    rewards = t([[-0.1, -0.2, 1.0, 7.0, -3.0], [-0.1, -0.2, 1.0, 0.0, 0.0]])
    values = t([[0.5, 0.4, 0.3, 9.0, 4.0], [0.5, 0.4, 0.3, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    adv, returns = ops.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    expected_adv = t([0.14675, 0.365, 0.7, 0.0, 0.0]).expand(2, 5)
    expected_ret = t([0.64675, 0.765, 1.0, 0.0, 0.0]).expand(2, 5)
    assert_close(adv, expected_adv, atol=1e-6, rtol=0)
    assert_close(returns, expected_ret, atol=1e-6, rtol=0)


def test_gae_rows_of_different_lengths():
    # Row 1 ends after one token, so that token is terminal: adv = r - V.
    rewards = t([[-0.1, -0.2, 1.0], [2.0, 5.0, 5.0]])
    values = t([[0.5, 0.4, 0.3], [0.5, 8.0, 8.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.float32)
    adv, returns = ops.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert_close(adv, t([[0.14675, 0.365, 0.7], [1.5, 0.0, 0.0]]), atol=1e-6, rtol=0)
    assert_close(returns, t([[0.64675, 0.765, 1.0], [2.0, 0.0, 0.0]]), atol=1e-6, rtol=0)
