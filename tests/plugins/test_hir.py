"""HIR: docs/algorithms.md §5.9 tests (pure functions on hand-made tensors), wiring of the module on tiny models, and
the plugin contract for both families."""

import math
from collections import Counter

import pytest
import torch
from transformers.trainer_pt_utils import LabelSmoother

from feedback_lm import ops
from feedback_lm.data.tasks import is_correct
from feedback_lm.errors import UserError
from feedback_lm.rollout import Rollout, RolloutBuffer
from plugins.hir import (
    HIR,
    INSTR_CORRECT,
    INSTR_ORIGINAL,
    INSTR_WRONG,
    batch_contrastive_loss,
    contrastive_loss,
    contrastive_terms,
    dedupe_key,
    hir_loss,
    insert_prefix,
    label_smoothing_terms,
    make_input,
    mean_entropy,
    relabel,
    relabeled_input,
    sample_sub_output,
    split_and_cap,
    sub_output_labels,
    supervised_loss,
)


# ----------------------------------------------------------------------------- §5.9 #1 relabel table
def test_relabel_table_reproduces_the_code_strings():
    assert INSTR_ORIGINAL == "Solve the question with correct answer."
    assert relabel("Q: x\nA:", " a", INSTR_ORIGINAL, True) == (
        "Solve question with correct answer.", "Solve the question with wrong answer.")
    assert relabel("Q: x\nA:", " b", INSTR_ORIGINAL, False) == (
        "Solve the question with wrong answer.", "Solve the question with correct answer.")
    # the switch fixes the missing "the"; feedback may be a mapping with "correct"
    assert relabel("q", "o", INSTR_ORIGINAL, {"correct": True}, fix_instruction_typo=True) == (
        "Solve the question with correct answer.", INSTR_WRONG)
    text = make_input(INSTR_ORIGINAL, "Q: x\nA:")
    assert text == "Solve the question with correct answer.\n\nQ: x\nA:"
    assert relabeled_input(text, INSTR_CORRECT) == "Solve question with correct answer.\n\nQ: x\nA:"
    with pytest.raises(ValueError, match="binary feedback"):
        relabel("q", "o", INSTR_ORIGINAL, "good")


# --------------------------------------------------------------------------------- §5.9 #2 normaliser
def test_correctness_normaliser():
    assert is_correct("(A).", "(a)")
    assert is_correct(" ( B ) ", "(B)")
    assert not is_correct("(C)", "(B)")


# ------------------------------------------------------------------------------ §5.9 #3/#4 contrastive
def test_contrastive_value():
    lp_pos, lp_neg = torch.tensor([-1.0]), torch.tensor([-2.0])
    pos, neg = contrastive_terms(lp_pos, lp_neg)
    assert pos.item() == pytest.approx(0.313262, abs=1e-6)
    assert neg.item() == pytest.approx(1.313262, abs=1e-6)
    assert contrastive_loss(lp_pos, lp_neg, 0.2).item() == pytest.approx(0.513262, abs=1e-6)
    # the code's form -log(P/(P+N) + 1e-8), up to the 1e-8
    P, N = math.exp(-1), math.exp(-2)
    code = 0.8 * -math.log(P / (P + N) + 1e-8) + 0.2 * -math.log(N / (P + N) + 1e-8)
    assert contrastive_loss(lp_pos, lp_neg, 0.2).item() == pytest.approx(code, abs=1e-6)


def test_contrastive_gradient_matches_formula():
    eps = 0.2
    lp_pos = torch.tensor([-1.0, -0.3, -4.0], requires_grad=True)
    lp_neg = torch.tensor([-2.0, -0.9, -1.0], requires_grad=True)
    contrastive_loss(lp_pos, lp_neg, eps).backward()
    d = (lp_neg - lp_pos).detach()
    expected = (-(1 - eps) * torch.sigmoid(d) + eps * torch.sigmoid(-d)) / 3  # mean over the batch
    torch.testing.assert_close(lp_pos.grad, expected)
    torch.testing.assert_close(lp_neg.grad, -expected)  # symmetric: the loss depends on lp_neg - lp_pos only
    assert (lp_neg.grad != 0).all()


def test_batch_contrastive_reduces_to_the_pair_form():
    """Spec §5.5: two examples whose relabeled instructions are each other's negative -> the batch softmax
    is the 2-way softmax without smoothing; with duplicated instructions the columns count twice."""
    m = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])   # m[i, j] = mean log P(o_i | q_i, p_j)
    pair = contrastive_loss(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -0.5]), eps=0.0)
    assert batch_contrastive_loss(m).item() == pytest.approx(pair.item(), abs=1e-6)
    m3 = torch.tensor([[-1.0, -1.0, -2.0], [-1.5, -1.5, -0.5], [-3.0, -3.0, -0.2]])  # p_0 == p_1
    expected = -sum(m3[i, i] - torch.logsumexp(m3[i], 0) for i in range(3)) / 3
    assert batch_contrastive_loss(m3).item() == pytest.approx(expected.item(), abs=1e-6)


# ------------------------------------------------------------------------------ §5.9 #5 label smoother
def test_label_smoother_values_and_hf_parity():
    logits = torch.tensor([[[2.0, 0.0, 0.0]]])
    labels, mask = torch.tensor([[0]]), torch.tensor([[True]])
    nll, smooth = label_smoothing_terms(logits, labels, mask)
    assert nll.item() == pytest.approx(0.239545, abs=1e-6)
    assert smooth.item() == pytest.approx(1.572878, abs=1e-6)
    assert supervised_loss(logits, labels, mask, 0.2).item() == pytest.approx(0.506211, abs=1e-6)
    # one example with padding: equals HF's LabelSmoother with -100 labels
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 11)
    labels = torch.tensor([[3, 1, 4, 0, 0]])
    mask = torch.tensor([[True, True, True, False, False]])
    hf = LabelSmoother(epsilon=0.2)({"logits": logits}, labels.masked_fill(~mask, -100))
    assert supervised_loss(logits, labels, mask, 0.2).item() == pytest.approx(hf.item(), abs=1e-6)


# ----------------------------------------------------------------------------------- §5.9 #6 entropy
def test_entropy_value_uniform_and_sign():
    mask = torch.tensor([[True]])
    assert mean_entropy(torch.tensor([[[2.0, 0.0, 0.0]]]), mask).item() == pytest.approx(0.665573, abs=1e-6)
    assert mean_entropy(torch.zeros(1, 1, 7), mask).item() == pytest.approx(math.log(7), abs=1e-6)
    # padding does not count
    padded = torch.tensor([[[2.0, 0.0, 0.0], [50.0, -50.0, 3.0]]])
    assert mean_entropy(padded, torch.tensor([[True, False]])).item() == pytest.approx(0.665573, abs=1e-6)
    ent = torch.tensor(1.0, requires_grad=True)
    hir_loss(torch.tensor(2.0), torch.tensor(0.5), ent, 1.0, 0.001).backward()
    assert ent.grad.item() == pytest.approx(-0.001)  # a bonus: more entropy, lower loss


# ------------------------------------------------------------------------- §5.9 #7 sub-output sampler
@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_sub_output_short_outputs_are_kept_whole(length):
    assert sample_sub_output(length) == (0, length)


@pytest.mark.parametrize("length", [4, 5, 8])
def test_sub_output_sampler_support(length):
    g = torch.Generator().manual_seed(0)
    draws = Counter(sample_sub_output(length, g) for _ in range(10_000))
    support = {(s, e) for s in range(0, length - 3, 2) for e in range(s + 1, length + 1, 2)}
    assert set(draws) == support
    if length == 4:
        assert support == {(0, 1), (0, 3)}
    if length == 8:
        assert {s for s, _ in support} == {0, 2, 4} and all((e - s) % 2 == 1 for s, e in support)


# ------------------------------------------------------------------------------------ §5.9 #8 swap rule
def _decode(ids):
    return "".join(chr(i) for i in ids if i != 1)


def test_swap_rule():
    eos = 1
    o = [ord(c) for c in " (B) then more"] + [eos]
    # wrong output whose prefix " (B)" normalises to the target: swap, labels re-terminated with EOS
    prefix, labels, swap = sub_output_labels(o, 2, 4, "(B)", False, _decode, eos)
    assert swap and prefix == o[:2] and labels == o[2:4] + [eos]
    # prefix " (" is a substring of the target: swap, no EOS (the code does not re-tokenise there)
    _, labels, swap = sub_output_labels(o, 0, 2, "(B)", False, _decode, eos)
    assert swap and labels == o[:2]
    # a prefix that is not part of the target: no swap
    _, labels, swap = sub_output_labels(o, 0, 7, "(B)", False, _decode, eos)
    assert not swap and labels == o[:7] + [eos]
    # a correct output never swaps, truncated or not
    good = [ord(c) for c in " (B)"] + [eos]
    assert not sub_output_labels(good, 0, 1, "(B)", True, _decode, eos)[2]
    _, labels, swap = sub_output_labels(good, 0, len(good), "(B)", True, _decode, eos)
    assert not swap and labels == good  # whole output: one EOS, not two
    # [PROJECT] switch: truncated chunks without EOS; a whole output keeps its EOS
    assert sub_output_labels(o, 0, 7, "(B)", False, _decode, eos, truncated_eos=False)[1] == o[:7]
    assert sub_output_labels(good, 0, len(good), "(B)", True, _decode, eos, truncated_eos=False)[1] == good


def test_insert_prefix_goes_before_the_encoder_eos():
    assert insert_prefix([5, 6, 1], [9, 8], 1, 512) == [5, 6, 9, 8, 1]   # T5: before EOS
    assert insert_prefix([5, 6], [9, 8], 0, 512) == [5, 6, 9, 8]         # causal: at the end
    assert insert_prefix([5, 6, 1], [9], 1, 3) == [6, 9, 1]              # keeps the last max_length


# --------------------------------------------------------------------------------- §5.9 #9 accounting
def _round(pool, round_, outputs):
    n = len(pool)
    return Rollout(torch.ones(n, 2, dtype=torch.long), torch.ones(n, 2, dtype=torch.bool),
                   torch.ones(n, 3, dtype=torch.long), torch.ones(n, 3, dtype=torch.bool), prompt=pool,
                   response=outputs, instruction=[INSTR_ORIGINAL] * n, target=["t"] * n,
                   feedback=[{"correct": False, "round": round_}] * n)


def test_loop_accounting():
    """|D| = (i+1)|pool| after round i (NUM_SAMPLE=1, the same outputs every round still accumulate,
    as in the code); the train split is 90% of D capped at 4|pool|; within a round duplicates go."""
    pool = [f"q{i}" for i in range(10)]
    buf = RolloutBuffer(dedupe_key=dedupe_key("round"))
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        assert buf.add(_round(pool, i, [f"o{j}" for j in range(10)])) == 10
        assert len(buf) == (i + 1) * len(pool)
        train, val = split_and_cap(len(buf), len(pool), 3, g)
        assert len(train) == min(len(buf) - int(0.1 * len(buf)), 4 * len(pool))
        assert len(val) == min(int(0.1 * len(buf)), 4 * 3)
        assert not set(train) & set(val) and max(train + val) < len(buf)
    assert buf.add(_round(pool[:2] * 2, 6, ["x", "y", "x", "y"])) == 2  # unique outputs per query per round
    glob = RolloutBuffer(dedupe_key=dedupe_key("global"))
    glob.add(_round(pool, 0, ["o"] * 10))
    assert glob.add(_round(pool, 1, ["o"] * 10)) == 0


# ------------------------------------------------------------------------------- the module, wiring
TINY_T5 = {"name": "tiny-t5", "preset": "tiny-t5", "tokenizer": "byte"}

def _module(preset="tiny-t5", **kw):
    torch.manual_seed(0)
    m = HIR({"name": preset, "preset": preset, "tokenizer": "byte"}, **kw)
    m.configure_model()
    return m


def _rows(module, outputs, correct, targets):
    prompts = [make_input(INSTR_ORIGINAL, f"Q: which is twice? {t} {t} z\nA:") for t in targets]
    enc = module.policy.encode_batch(prompts, outputs)
    return Rollout(enc["prompt_ids"], enc["prompt_mask"], enc["response_ids"], enc["response_mask"],
                   prompt=prompts, response=outputs, instruction=[INSTR_ORIGINAL] * len(prompts), target=targets,
                   feedback=[{"correct": c, "round": 0} for c in correct]).rows()


@pytest.mark.parametrize("preset", ["tiny-t5", "tiny-gpt2"])
def test_gradients_flow_through_both_passes(preset):
    """Spec §5.9 #4 at the model: the contrastive loss reaches the parameters through the positive AND
    the negative forward pass (nothing detached)."""
    m = _module(preset)
    rows = _rows(m, [" a b", " qq", " zz top"], [True, False, False], ["a", "b", "c"])
    terms = m._loss_terms(rows, sub_output=True)
    assert all(torch.isfinite(terms[k]) for k in ("loss", "sup", "con", "ent"))
    params = [p for p in m.parameters() if p.requires_grad]
    for name in ("lp_pos", "lp_neg"):
        grads = torch.autograd.grad(terms[name].sum(), params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"no gradient through {name}"
    d_pos, d_neg = torch.autograd.grad(terms["con"], [terms["lp_pos"], terms["lp_neg"]], retain_graph=True)
    assert (d_neg != 0).all() and (d_pos != 0).all()
    terms["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_pair_terms_match_the_pure_functions():
    """The module's forward passes feed the pure functions: recompute sup/con/entropy by hand."""
    m = _module("tiny-gpt2")
    rows = _rows(m, [" a b", " qq"], [True, False], ["a", "b"])
    terms = m._loss_terms(rows, sub_output=False)
    pol = m.policy
    pos_prompts = [make_input(INSTR_CORRECT, r["prompt"].split("\n\n", 1)[1]) for r in rows[:1]] + \
                  [make_input(INSTR_WRONG, r["prompt"].split("\n\n", 1)[1]) for r in rows[1:]]
    neg_prompts = [make_input(INSTR_WRONG, rows[0]["prompt"].split("\n\n", 1)[1]),
                   make_input(INSTR_ORIGINAL, rows[1]["prompt"].split("\n\n", 1)[1])]
    enc_pos = pol.encode_batch(pos_prompts, [" a b", " qq"])
    enc_neg = pol.encode_batch(neg_prompts, [" a b", " qq"])
    lpos, lneg = pol(**enc_pos).logits, pol(**enc_neg).logits
    ids, mask = enc_pos["response_ids"], enc_pos["response_mask"]
    seq = lambda lg: ops.seq_logprob_mean(ops.gather_logprobs(lg, ids), mask)  # noqa: E731
    torch.testing.assert_close(terms["sup"], supervised_loss(lpos, ids, mask, 0.2), atol=1e-5, rtol=0)
    torch.testing.assert_close(terms["con"], contrastive_loss(seq(lpos), seq(lneg), 0.2), atol=1e-5, rtol=0)
    torch.testing.assert_close(terms["ent"], mean_entropy(lpos, mask).mean(), atol=1e-5, rtol=0)


def test_batch_contrastive_mode_runs():
    m = _module("tiny-t5", contrastive="batch")
    rows = _rows(m, [" a", " qq", " b"], [True, False, True], ["a", "b", "b"])
    terms = m._loss_terms(rows, sub_output=True)
    assert torch.isfinite(terms["con"]) and terms["con"].requires_grad
    terms["loss"].backward()


def test_custom_relabel_and_config_errors():
    calls = []

    def my_relabel(query, output, instruction, feedback):
        calls.append((query, output, instruction))
        return "Be right.", "Be wrong."

    m = _module("tiny-gpt2", relabel_fn=my_relabel)
    m._loss_terms(_rows(m, [" a"], [True], ["a"]), sub_output=False)
    assert calls == [("Q: which is twice? a a z\nA:", " a", INSTR_ORIGINAL)]
    assert HIR(TINY_T5, relabel_fn="plugins.hir.relabel")._relabel is relabel
    with pytest.raises(UserError, match="relabel_fn"):
        HIR(TINY_T5, relabel_fn="plugins.hir.nope")
    with pytest.raises(UserError, match="contrastive"):
        HIR(TINY_T5, contrastive="triplet")
    with pytest.raises(UserError, match="dedupe"):
        HIR(TINY_T5, dedupe="never")
    with pytest.raises(UserError, match="instr_wrong"):
        HIR(TINY_T5, instr_wrong="two\n\nlines")


def test_checkpoint_state_roundtrip():
    """A checkpoint mid-iteration carries D, the remaining minibatch plan and the generator."""
    m = _module("tiny-t5")
    m.buffer.add(_rows(m, [" a", " b"], [True, False], ["a", "b"]))
    m._iteration, m._plan, m._val_idx = 2, [[1, 0], [0]], [1]
    torch.rand(3, generator=m._gen)
    ckpt = {}
    m.on_save_checkpoint(ckpt)
    m2 = _module("tiny-t5")
    m2.on_load_checkpoint(ckpt)
    assert (m2._iteration, m2._plan, m2._val_idx) == (2, [[1, 0], [0]], [1])
    assert [r["response"] for r in m2.buffer.rows] == [" a", " b"]
    assert torch.equal(torch.rand(3, generator=m2._gen), torch.rand(3, generator=m._gen))


# ------------------------------------------------------------------------------------ plugin contract
QUICK_HIR = ["algo.max_new_tokens=6", "algo.warm_start_steps=1", "algo.pool_size=6", "algo.eval_size=4",
             "algo.batch_size=4", "algo.epochs_per_iteration=1", "algo.sample_batch_size=8",
             "algo.num_samples_shown=0", "algo.num_samples=1"]


def test_hir_plugin_contract():
    """docs/architecture.md §3 for both families: a warm-start step, then an iteration boundary (evaluate, sample,
    buffer, plan) and offline steps; save -> resume mid-iteration."""
    from feedback_lm.testing import check_plugin

    results = check_plugin("hir", overrides=QUICK_HIR, steps=2)
    for metrics in results.values():
        assert {"train/loss", "hir/sup_loss", "hir/contrastive_loss", "hir/entropy", "hir/accuracy",
                "hir/correct_share", "hir/pool_size", "val/accuracy", "warm_start/loss"} <= set(metrics)
        assert metrics["hir/pool_size"] == 6  # one round of 6 queries, NUM_SAMPLE=1

