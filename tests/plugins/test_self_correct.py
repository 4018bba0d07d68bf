"""Self-correction: docs/algorithms.md §6.6 tests on the pure functions, the plugin contract for both families, and
the toy integration (#8, slow)."""

import itertools
import random
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import ByT5Tokenizer

from feedback_lm.errors import UserError
from feedback_lm.policy import Policy
from feedback_lm.rollout import RolloutBuffer
from feedback_lm.values import Judgement, judge
from plugins.self_correct import (
    correct_iteratively,
    correction_metrics,
    corrector_loss,
    corrector_prompt,
    explore,
    improving_pairs,
    levenshtein,
    oracle_stop,
    pair_probabilities,
    sample_pairs,
    token_similarity,
)


class LengthValue:
    """A test value: longer outputs (up to 8 characters) are better, so random outputs always form
    improving pairs and the contract test never stalls on ties."""

    max_value = 1.0

    def __init__(self, **kwargs):
        pass

    def __call__(self, prompt, output, target):
        return Judgement(min(len(output), 8) / 8, f"length {len(output)}")


class OrderedValue:
    """Spec §6.6 #8: v = share of adjacent character pairs in non-decreasing order (0 below 2 characters)."""

    max_value = 1.0

    def __init__(self, **kwargs):
        pass

    def __call__(self, prompt, output, target):
        s = output.strip()
        if len(s) < 2:
            return Judgement(0.0, "too short")
        ok = sum(a <= b for a, b in itertools.pairwise(s))
        return Judgement(ok / (len(s) - 1), f"{len(s) - 1 - ok} pairs out of order")


# ------------------------------------------------------------------------------------- 1. pairing
def test_pairing_count_strictly_improving():
    """#1: values [0, 1, 1, 0.5] -> exactly 0->1, 0->1, 0->0.5, 0.5->1, 0.5->1; no pair for the tie."""
    pairs = improving_pairs(["x"] * 4, [0.0, 1.0, 1.0, 0.5])
    assert sorted(pairs) == [(0, 1), (0, 2), (0, 3), (3, 1), (3, 2)]
    assert (1, 2) not in pairs and (2, 1) not in pairs


def test_keep_pairs_are_opt_in_and_only_for_maximal_values():
    """[PROJECT] keep pairs (y, y) for right hypotheses; Eq. 3's pairs are unchanged beside them."""
    values = [0.0, 1.0, 1.0, 0.5]
    assert improving_pairs(["x"] * 4, values) == improving_pairs(["x"] * 4, values, keep_value=None)
    pairs = improving_pairs(["x"] * 4, values, keep_value=1.0)
    assert sorted(pairs) == [(0, 1), (0, 2), (0, 3), (1, 1), (2, 2), (3, 1), (3, 2)]
    assert [i for i, _ in pairs] == sorted(i for i, _ in pairs), "grouped by hypothesis"


def test_no_cross_prompt_pairs():
    """#4: two prompts with disjoint values pair only within themselves."""
    groups = ["a", "a", "a", "b", "b", "b"]
    pairs = improving_pairs(groups, [0.0, 0.1, 0.2, 0.5, 0.6, 0.7])
    assert pairs and all(groups[i] == groups[j] for i, j in pairs)
    assert len(pairs) == 6


# ------------------------------------------------------------------------------------ 2./3. sampling
def test_sampling_probabilities_from_the_spec():
    """#2: one hypothesis, corrections (Δv 1.0, s 0.5) and (Δv 0.5, s 0.9)."""
    hyp, imp, sim = torch.tensor([0, 0]), torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.9])
    torch.testing.assert_close(pair_probabilities(hyp, imp, sim, 1.0, 1.0), torch.tensor([0.524979, 0.475021]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(pair_probabilities(hyp, imp, sim, 0.0, 0.0), torch.tensor([0.5, 0.5]))
    p = pair_probabilities(hyp, imp, sim, 10.0, 0.0)
    assert p[0] > 0.99 and p.sum().item() == pytest.approx(1.0)
    draws = sample_pairs(hyp, imp, sim, 10.0, 0.0, 2000, torch.Generator().manual_seed(0))
    assert (draws == 0).float().mean() > 0.99


def test_z_normalises_per_hypothesis():
    """#3: y_a has 1 correction, y_b has 9: hypotheses are drawn 0.5/0.5 over 1e5 draws, not 0.1/0.9."""
    hyp = torch.tensor([0] + [1] * 9)
    imp, sim = torch.rand(10, generator=torch.Generator().manual_seed(1)) + 0.1, torch.rand(10)
    p = pair_probabilities(hyp, imp, sim, 1.0, 1.0)
    assert p[0].item() == pytest.approx(0.5) and p[1:].sum().item() == pytest.approx(0.5)
    draws = sample_pairs(hyp, imp, sim, 1.0, 1.0, 100_000, torch.Generator().manual_seed(0))
    share_a = (hyp[draws] == 0).float().mean().item()
    assert abs(share_a - 0.5) < 0.01
    # within y_b the draws follow its softmax
    within = torch.bincount(draws[draws > 0], minlength=10)[1:].float()
    torch.testing.assert_close(within / within.sum(), p[1:] / p[1:].sum(), atol=0.01, rtol=0)


def test_levenshtein_similarity():
    assert levenshtein("kitten", "sitting") == 3 and levenshtein([], [1, 2]) == 2
    assert token_similarity([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert token_similarity([1, 2, 3, 4], [1, 9, 3]) == pytest.approx(1 - 2 / 4)
    assert token_similarity([], []) == 1.0 and token_similarity([1], []) == 0.0


# ------------------------------------------------------------------------------------ 5. exploration
def test_exploration_bookkeeping():
    """#5: one pass, 1 correction per x: every |D_x| grows by 1 and each new entry carries the v and f
    the supplied functions computed (mock counters)."""
    pool = {p: [{"response": f"{p}{i}", "feedback": "f", "target": "t", "value": 0.1 * i} for i in range(1 + k)]
            for k, p in enumerate(["a", "b", "c"])}
    calls = Counter()

    def correct(prompts, hyps, fbs):
        calls["correct"] += len(prompts)
        return [h + "+fix" for h in hyps]

    def judge_fn(prompts, outs, targets):
        calls["judge"] += len(outs)
        return torch.tensor([100.0 + calls["judge"] + i for i in range(len(outs))]), [f"fb:{o}" for o in outs]

    buffer = RolloutBuffer(dedupe_key=lambda r: (r["prompt"], r["response"]))
    rows = [{"prompt_ids": torch.tensor([1]), "response_ids": torch.tensor([2]), "prompt": p,
             "response": e["response"], "scores": torch.tensor(e["value"])} for p, es in pool.items() for e in es]
    buffer.add(rows)
    sizes = Counter(r["prompt"] for r in buffer.rows)
    new = explore(pool, list(pool), correct, judge_fn, random.Random(0))
    buffer.add([{"prompt_ids": torch.tensor([1]), "response_ids": torch.tensor([2]), "prompt": e["prompt"],
                 "response": e["response"], "scores": torch.tensor(e["value"])} for e in new])
    after = Counter(r["prompt"] for r in buffer.rows)
    assert all(after[p] == sizes[p] + 1 for p in pool)
    assert calls == {"correct": 3, "judge": 3}
    for n, e in enumerate(new):
        assert e["value"] == 103.0 + n and e["feedback"] == f"fb:{e['response']}"
        assert e["response"].endswith("+fix") and e["response"][:-4] in {h["response"] for h in pool[e["prompt"]]}
        assert e["hypothesis_value"] in {h["value"] for h in pool[e["prompt"]]}


# ----------------------------------------------------------------------------------- 6. inference
def test_inference_loop_fixed_k_and_oracle_stop():
    """#6: a mock corrector that appends one token per call: called 3 times with T=3 and no oracle,
    twice when the oracle is satisfied after call 2."""
    calls = []

    def correct(idx, outs, fbs):
        calls.append(list(idx))
        return [o + "x" for o in outs]

    def judge_fn(idx, outs):
        return torch.tensor([len(o) / 3 for o in outs]), ["" for _ in outs]

    values, history = correct_iteratively(["", ""], torch.zeros(2), ["", ""], correct, judge_fn, k=3)
    assert len(calls) == 3 and history[-1] == ["xxx", "xxx"]
    torch.testing.assert_close(values[:, 0], torch.tensor([0, 1 / 3, 2 / 3, 1.0]))
    calls.clear()

    def judge_oracle(idx, outs):  # the oracle is satisfied once the output has 2 tokens
        return torch.tensor([1.0 if len(o) >= 2 else 0.5 for o in outs]), ["" for _ in outs]

    values, history = correct_iteratively([""], torch.zeros(1), [""], correct, judge_oracle, k=3, stop_value=1.0)
    assert len(calls) == 2 and history[-1] == ["xx"]
    torch.testing.assert_close(values[:, 0], torch.tensor([0.0, 0.5, 1.0, 1.0]))


def test_oracle_stop_and_metrics():
    values = torch.tensor([[0.0, 1.0, 0.5, 1.0],
                           [1.0, 0.0, 0.5, 1.0],
                           [0.5, 1.0, 1.0, 1.0]])  # [k+1=3, B=4]
    oracle = oracle_stop(values, 1.0)
    torch.testing.assert_close(oracle, torch.tensor([[0.0, 1.0, 0.5, 1.0], [1.0, 1.0, 0.5, 1.0],
                                                     [1.0, 1.0, 1.0, 1.0]]))
    m = correction_metrics(values, 1.0)
    assert m["value@0"] == pytest.approx(0.625) and m["value@2"] == pytest.approx(0.875)
    assert m["fixed"] == 0.25 and m["broken"] == 0.0 and m["improved"] == 0.5 and m["worsened"] == 0.0
    m = correction_metrics(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), 1.0)
    assert m["broken"] == 0.5 and m["fixed"] == 0.0 and m["worsened"] == 0.5


# -------------------------------------------------------------------------------- 7. loss masking
class FixedLogits(nn.Module):
    """A 'causal LM' whose logits are a parameter (as in the SFT tests)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.config = SimpleNamespace(is_encoder_decoder=False, pad_token_id=0, decoder_start_token_id=0)

    def forward(self, input_ids, logits_to_keep=0, **kwargs):
        return SimpleNamespace(logits=self.logits if not logits_to_keep else self.logits[:, -logits_to_keep:])


def test_corrector_loss_ignores_x_y_and_feedback():
    """#7: noise on the logits at positions that predict x, y and f tokens changes neither the loss nor
    gives them gradient; only the correction's tokens count (docs/algorithms.md §1.6 #1-#2 on the corrector input)."""
    tok = ByT5Tokenizer()
    text = corrector_prompt("Q: 2 1\nA:", " 2 1", "misplaced: 2")
    assert text == "Q: 2 1\nA:\nHypothesis: 2 1\nFeedback: misplaced: 2\nCorrection:"
    assert corrector_prompt("x", "y", None) == "x\nHypothesis:y\nCorrection:"
    # prompt_last: the input ends as the generator's prompt does (a corrector started from the generator
    # starts out answering the question); no correction separator
    assert corrector_prompt("Q: 2 1\nA:", " 2 1", "misplaced: 2", layout="prompt_last") == \
        "Hypothesis: 2 1\nFeedback: misplaced: 2\nQ: 2 1\nA:"
    assert corrector_prompt("x", "y", None, layout="prompt_last") == "Hypothesis:y\nx"
    with pytest.raises(UserError, match="prompt_first"):
        corrector_prompt("x", "y", None, layout="middle")
    P = len(text.encode())
    policy = Policy(FixedLogits(torch.zeros(1, 1, 1)), tok)
    enc = policy.encode_batch([text], [" 1 2"])
    R = enc["response_ids"].shape[1]
    logits = torch.randn(1, P + R, 384)
    policy.model.logits = nn.Parameter(logits.clone())
    loss = corrector_loss(policy(**enc).logits, enc["response_ids"], enc["response_mask"])
    loss.backward()
    grad = policy.model.logits.grad[0]
    assert (grad[: P - 1] == 0).all() and (grad[-1] == 0).all() and (grad[P - 1:-1] != 0).any()
    noisy = logits.clone()
    noisy[:, : P - 1] += 10 * torch.randn(1, P - 1, 384)
    policy2 = Policy(FixedLogits(noisy), tok)
    loss2 = corrector_loss(policy2(**enc).logits, enc["response_ids"], enc["response_mask"])
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-6)
    # the analytic value: mean NLL of the 5 target tokens (" 1 2" + EOS) at positions P-1..P+3
    lp = torch.log_softmax(logits[0, P - 1:P - 1 + R], -1).gather(-1, enc["response_ids"][0, :, None])
    assert loss.item() == pytest.approx(-lp.mean().item(), abs=1e-5)


# ------------------------------------------------------------------------------------ contract
QUICK = ["algo.max_new_tokens=8", "algo.generator_sft_steps=2", "algo.batch_size=4", "algo.updates_per_step=1",
         f"algo.value={{name:{__name__}.LengthValue}}"]


def test_self_correct_plugin_contract():
    """docs/architecture.md §3 for both families: finite loss, the corrector changes, save -> resume (pool included)."""
    from feedback_lm.testing import check_plugin

    results = check_plugin("self_correct", overrides=QUICK)
    for metrics in results.values():
        assert {"train/loss", "val/value", "val/generator_value", "self_correct/value@0", "self_correct/value@3",
                "self_correct/oracle_value@3", "self_correct/fixed", "self_correct/broken"} <= set(metrics)
        assert metrics["self_correct/pairs"] > 0 and metrics["self_correct/pool_size"] > 0


def test_bad_settings_are_user_errors():
    from feedback_lm.errors import UserError
    from plugins.self_correct import SelfCorrect

    tiny = {"name": "tiny-t5", "preset": "tiny-t5", "tokenizer": "byte"}
    with pytest.raises(UserError, match="corrector_init"):
        SelfCorrect(tiny, corrector_init="magic")
    with pytest.raises(UserError, match="num_samples"):
        SelfCorrect(tiny, num_samples=0)
    with pytest.raises(UserError, match="unknown algo.value.name"):
        SelfCorrect(tiny, value={"name": "nope"})


# ------------------------------------------------------------------------------ 8. toy integration
@pytest.mark.slow
def test_toy_integration_sorted_digits(tmp_path):
    """#8: tiny GPT-2, output the sorted digits of x, v = share of adjacent pairs in order, generator =
    the untrained sampler (alpha=5 favours the larger improvements). Three iterations raise the mean v after
    one correction above the generator's
    (both sampled at temperature 1: the greedy decode of an untrained model is one repeated character)."""
    import lightning as L

    from feedback_lm.data import tasks
    from feedback_lm.data.datamodule import TaskDataModule
    from plugins.self_correct import SelfCorrect

    @tasks.register_task("sc_sorted_digits", kind="words", overwrite=True)
    def sorted_digits(rng, n=5):
        digits = [rng.choice("0123456789") for _ in range(n)]
        return tasks.Example(input=" ".join(digits), target="".join(sorted(digits)))

    L.seed_everything(0)
    tiny = {"name": "tiny-gpt2", "preset": "tiny-gpt2", "tokenizer": "byte"}
    module = SelfCorrect(tiny, corrector_init="scratch", value={"name": f"{__name__}.OrderedValue"},
                         use_feedback=False, alpha=5.0, batch_size=16, updates_per_step=40, lr=3e-3, max_new_tokens=8,
                         num_corrections=1)
    data = TaskDataModule(task="sc_sorted_digits", num_train=64, num_val=32, batch_size=16, eval_batch_size=32)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        val_check_interval=None, check_val_every_n_epoch=None, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=data)
    assert int(module.iterations) == 3 and trainer.global_step == 3  # one Lightning step = one iteration
    # v of the untrained sampler's outputs vs v after one (sampled) correction of those same outputs
    prompts = [r["prompt"] for r in data.val_rows for _ in range(8)]
    targets = [r["target"] for r in data.val_rows for _ in range(8)]
    torch.manual_seed(1)
    y0 = module.generator.generate_text(prompts, max_new_tokens=8, do_sample=True)
    v0, f0 = judge(module.value_fn, prompts, y0, targets)
    y1 = module._sample_corrections(prompts, y0, f0)
    v1, _ = judge(module.value_fn, prompts, y1, targets)
    assert v1.mean() > v0.mean() + 0.03, (v0.mean(), v1.mean())
    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert {"self_correct/value@0", "self_correct/value@1", "val/value"} <= set(metrics)
    assert (tmp_path / "self_correct_curve.png").is_file()
