"""pad == eos (GPT-2, SmolLM2's <|im_end|>, most causal checkpoints): responses are cut after the first
EOS, that EOS stays a real token (the model must learn to stop), nothing before it is dropped, and prompt
tokens that happen to equal the EOS id (every chat-template turn ends with one) stay real. The same on the
real SmolLM2 tokenizer and chat template: tests/integration/test_smollm2.py."""

from __future__ import annotations

import pytest
import torch

from feedback_lm.rollout import Rollout
from plugins.sft import sft_loss
from tests.conftest import tiny_policy

MAX_NEW = 6


def pad_is_eos_policy():
    """A tiny causal policy whose pad id is its EOS id, as for SmolLM2 (pad = eos = <|im_end|>)."""
    p = tiny_policy("tiny-gpt2")
    p.pad_token_id = p.eos_token_id
    p.model.config.pad_token_id = p.eos_token_id
    p.model.generation_config.pad_token_id = p.eos_token_id
    return p


def force_eos(policy, at_step: dict[int, int]):
    """Make greedy decoding emit EOS at decode step ``at_step[row]`` for the given rows (a hook on the LM
    head; call 0 is the prompt, call k the k-th new token), and a non-EOS token everywhere else."""
    calls = {"n": 0}
    eos = policy.eos_token_id

    def hook(module, args, logits):
        step = calls["n"]
        calls["n"] += 1
        logits = logits.clone()
        logits[..., eos] = -1e4  # no EOS unless forced
        for row, k in at_step.items():
            if step == k:
                logits[row, -1, eos] = 1e4
        return logits

    return policy.model.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("fast", [False, True])
def test_generation_keeps_the_first_eos_and_everything_before_it(fast):
    policy = pad_is_eos_policy()
    ids, mask = policy.encode_prompts(["Q: a\nA:", "Q: a longer prompt\nA:", "Q: b\nA:"])
    handle = force_eos(policy, {0: 2, 2: 0})  # row 0: 2 tokens + EOS; row 1: no EOS; row 2: EOS first
    try:
        gen = policy.generate(ids, mask, max_new_tokens=MAX_NEW, do_sample=False, fast=fast)
    finally:
        handle.remove()
    eos = policy.eos_token_id
    assert gen.response_mask.sum(-1).tolist() == [3, MAX_NEW, 1]
    assert gen.response_ids[0, 2] == eos and gen.response_ids[2, 0] == eos, "the EOS itself is a real token"
    assert (gen.response_ids[0, :2] != eos).all() and (gen.response_ids[1] != eos).all()
    assert (gen.response_ids[~gen.response_mask] == eos).all(), "padding after the EOS is the pad (= eos) id"


def test_sft_targets_keep_eos_and_mask_only_padding():
    policy = pad_is_eos_policy()
    enc = policy.encode_batch(["Q: a\nA:", "Q: b\nA:"], [" xy", " x"])
    eos = policy.eos_token_id
    # " xy" + EOS = 4 targets, " x" + EOS = 3 targets then one pad (= EOS id) that must not be a target
    assert enc["response_mask"].tolist() == [[True] * 4, [True] * 3 + [False]]
    assert enc["response_ids"][0, 3] == eos and enc["response_ids"][1, 2] == eos and enc["response_ids"][1, 3] == eos

    # the loss averages exactly those 7 targets: logits that put log-prob log(1/2) on each target and
    # anything else on the padding position give loss log 2
    V = len(policy.tokenizer)
    logits = torch.full((2, 4, V), -1e4)
    targets = enc["response_ids"]
    for b in range(2):
        for t in range(4):
            logits[b, t, targets[b, t]] = 0.0
            logits[b, t, (targets[b, t] + 1) % V] = 0.0  # two equal logits: p = 1/2
    logits[1, 3] = 0.0  # the padding position: uniform, would change the mean if it counted
    loss = sft_loss(logits, targets, enc["response_mask"])
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)


def test_rollout_collate_with_pad_equal_to_eos():
    eos = 1
    rows = [{"prompt_ids": torch.tensor([5, eos, 6]), "response_ids": torch.tensor([7, eos])},
            {"prompt_ids": torch.tensor([5]), "response_ids": torch.tensor([7, 8, 9, eos])}]
    r = Rollout.collate(rows, pad_token_id=eos)
    assert r.response_mask.tolist() == [[True, True, False, False], [True] * 4]
    assert r.prompt_mask.tolist() == [[True] * 3, [False, False, True]], "the EOS inside a prompt is real"
    back = r.rows()
    assert back[0]["response_ids"].tolist() == [7, eos] and back[0]["prompt_ids"].tolist() == [5, eos, 6]
