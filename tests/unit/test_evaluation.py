"""Every metric of feedback_lm.evaluation against hand-computed values on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from feedback_lm import evaluation as ev
from feedback_lm.values import FinalAnswerValue, TaskValue
from tests.conftest import tiny_policy


def test_task_scores_word_sorting_exact_and_graded():
    # "a b" is right; "a b c" vs "a b": positions 2/3, pairs 1/1 -> 0.9 * (2/3 + 1) / 2 = 0.75; "b a": 0
    exact, score = ev.task_scores(TaskValue("word_sorting"), ["p"] * 3, ["a b", "a b c", "b a"], ["a b"] * 3)
    assert exact.tolist() == [1.0, 0.0, 0.0]
    assert score == pytest.approx([1.0, 0.75, 0.0])


def test_task_scores_number_and_gsm8k_final_answer():
    # object_counting: 0.5 / (1 + |5 - 3|) = 1/6
    exact, score = ev.task_scores(TaskValue("object_counting"), ["p"], ["5"], ["3"])
    assert exact.tolist() == [0.0] and score == pytest.approx([1 / 6])
    exact, score = ev.task_scores(FinalAnswerValue(), ["p", "p"], ["2 + 10 = 12\n#### 12", "A: 11"], ["12", "12"])
    assert exact.tolist() == [1.0, 0.0] and score.tolist() == [1.0, 0.0]


def test_distinct_n():
    # unigrams a b a | a b: 5, distinct {a, b}: 2 -> 0.4; bigrams ab ba | ab: 3, distinct 2 -> 2/3
    assert ev.distinct_n(["a b a", "a b"], 1) == pytest.approx(0.4)
    assert ev.distinct_n(["a b a", "a b"], 2) == pytest.approx(2 / 3)
    assert ev.distinct_n(["a", ""], 2) == 0.0


def test_copy_counts():
    # response bigrams: (cat sat) (sat on) in the prompt; (on a) (a mat) not -> 2 of 4; one-word response: 0 of 0
    copied, total = ev.copy_counts(["the cat sat on the mat", "x y"], ["cat sat on a mat", "x"], n=2)
    assert copied.tolist() == [2.0, 0.0] and total.tolist() == [4.0, 0.0]


def test_response_lengths():
    assert ev.response_lengths(["a b c", "", "d"]).tolist() == [3.0, 0.0, 1.0]


def test_rouge_against_hand_counts():
    # "the cat sat" vs "the cat ran": unigram overlap 2/3 both ways -> F 2/3; bigrams (the cat) of 2 -> 1/2;
    # LCS "the cat" = 2 -> 2/3. Identical texts -> 1, disjoint -> 0.
    r = ev.rouge(["the cat sat", "a b", "x y"], ["the cat ran", "a b", "z w"])
    assert r["rouge1"] == pytest.approx([2 / 3, 1.0, 0.0], abs=1e-4)
    assert r["rouge2"] == pytest.approx([0.5, 1.0, 0.0], abs=1e-4)
    assert r["rougeL"] == pytest.approx([2 / 3, 1.0, 0.0], abs=1e-4)


def test_wins_ties_count_half():
    w = ev.wins([1.0, 0.0, 0.5, 0.3], [0.0, 1.0, 0.5, 0.3 + 1e-9])
    assert w.tolist() == [1.0, 0.0, 0.5, 0.5]
    assert ev.mean_estimate(w)["value"] == pytest.approx(0.5)


def test_kl_per_sample():
    # sum_t log pi - log rho = (log .5 - log .25) + (log .5 - log .5) + padding 0 = log 2
    lp = torch.log(torch.tensor([[0.5, 0.5, 1.0]]))
    lr = torch.log(torch.tensor([[0.25, 0.5, 1.0]]))
    assert ev.kl_per_sample(lp, lr) == pytest.approx([math.log(2)])


def test_response_logprobs_match_the_policy_and_kl_to_itself_is_zero():
    policy = tiny_policy("tiny-gpt2")
    prompts = ["Q: a\nA:", "Q: bb\nA:"]
    r_ids, r_mask = policy.encode_responses(["x y", "z"])
    lp = ev.response_logprobs(policy, prompts, r_ids, r_mask, temperature=0.7, batch_size=1)
    p_ids, p_mask = policy.encode_prompts(prompts)
    with torch.no_grad():
        expected = policy.logprobs(p_ids, p_mask, r_ids, r_mask, temperature=0.7)
    assert torch.allclose(lp, expected, atol=1e-5)
    assert ev.kl_per_sample(lp, lp) == pytest.approx([0.0, 0.0])


class _Tok:
    def __init__(self, vocab, eos=1):
        self.vocab, self.eos_token_id = vocab, eos

    def __len__(self):
        return len(self.vocab)

    def get_vocab(self):
        return self.vocab


def test_vocabulary_mismatch_says_why():
    assert ev.vocabulary_mismatch(_Tok({"a": 0, "b": 1}), _Tok({"a": 0, "b": 1})) is None
    assert "size" in ev.vocabulary_mismatch(_Tok({"a": 0}), _Tok({"a": 0, "b": 1}))
    assert "different ids" in ev.vocabulary_mismatch(_Tok({"a": 0, "b": 1}), _Tok({"a": 1, "b": 0}))
    assert "EOS" in ev.vocabulary_mismatch(_Tok({"a": 0, "b": 1}, eos=0), _Tok({"a": 0, "b": 1}, eos=1))


def test_bootstrap_constant_empty_and_normal_approximation():
    assert ev.mean_estimate([0.25] * 10) == {"value": 0.25, "ci": [0.25, 0.25], "n": 10}
    assert all(math.isnan(x) for x in ev.mean_estimate([])["ci"])
    # 400 coin flips, half heads: the 95 % interval is about 0.5 +- 1.96 * sqrt(0.25 / 400) = 0.5 +- 0.049
    lo, hi = ev.mean_estimate([0.0, 1.0] * 200)["ci"]
    assert lo == pytest.approx(0.451, abs=0.012) and hi == pytest.approx(0.549, abs=0.012)


def test_bootstrap_is_seeded():
    values = np.random.default_rng(1).random(50)
    assert ev.mean_estimate(values, seed=3) == ev.mean_estimate(values, seed=3)


def test_ratio_and_distinct_estimates_contain_their_value():
    est = ev.ratio_estimate([1, 2], [2, 2])   # (1 + 2) / (2 + 2)
    assert est["value"] == pytest.approx(0.75) and est["n"] == 2
    assert ev.ratio_estimate([0, 0], [0, 0])["value"] == 0.0
    responses = [f"w{i % 7} w{i % 3}" for i in range(40)]
    d = ev.distinct_estimate(responses, 1)
    assert d["value"] == pytest.approx(7 / 80)   # w0..w6 (w0..w2 again in second place): 7 distinct of 80
    assert d["ci"][0] <= d["value"] <= d["ci"][1]


def test_mean_se():
    m, se = ev.mean_se([1.0, 2.0, 3.0])   # sd 1 -> se 1 / sqrt(3)
    assert m == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    assert math.isnan(ev.mean_se([4.0])[1])


# ------------------------------------------------------------------------------ people as judges
def test_pairwise_items_random_order_records_who_wrote_what():
    from feedback_lm.label.pairwise import pairwise_items

    items = pairwise_items(["p0", "p1", "p2", "p3"], ["r0", "r1", "r2", "r3"], ["b0", "b1", "b2", "b3"], "ppo", "sft",
                           seed=0)
    for i, item in enumerate(items):
        runs = item["meta"]["pairwise"]["runs"]
        assert sorted(runs) == ["ppo", "sft"] and item["meta"]["pairwise"]["baseline"] == "sft"
        assert item["responses"][runs.index("ppo")] == f"r{i}" and item["responses"][runs.index("sft")] == f"b{i}"
    assert len({tuple(it["meta"]["pairwise"]["runs"]) for it in items}) == 2   # both orders occur (seed 0)


def test_human_win_rate_ties_half_and_labels_averaged_per_item():
    from feedback_lm.label.pairwise import human_win_rates

    def row(item, runs, tiers):
        return {"item_id": item, "tiers": tiers, "meta": {"pairwise": {"runs": runs, "baseline": "sft"}}}

    rows = [row(1, ["ppo", "sft"], [[0], [1]]),          # ppo shown first and ranked first: 1
            row(2, ["sft", "ppo"], [[0], [1]]),          # sft ranked first: 0
            row(3, ["sft", "ppo"], [[0, 1]]),            # tie: 0.5
            row(4, ["ppo", "sft"], [[0], [1]]),          # two people disagree on item 4: (1 + 0) / 2
            row(4, ["ppo", "sft"], [[1], [0]]),
            {"item_id": 9, "tiers": [[0], [1]], "meta": {}}]   # not a pairwise item: ignored
    rates = human_win_rates(rows, n_boot=50)
    assert set(rates) == {"ppo"} and rates["ppo"]["baseline"] == "sft" and rates["ppo"]["labels"] == 5
    assert rates["ppo"]["win_rate"]["value"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)
    assert rates["ppo"]["win_rate"]["n"] == 4


def test_bootstrap_interval_reaches_the_estimate_when_every_resample_is_below_it():
    # 20 responses, no word repeated: dist-1 = 1, and every resample that repeats a response is below 1
    d = ev.distinct_estimate([f"w{i}" for i in range(20)], 1, n_boot=200)
    assert d["value"] == 1.0 and d["ci"][1] == 1.0 and d["ci"][0] < 1.0


def test_text_metrics_per_task_breakdown_and_prompt_set_from_jsonl(tmp_path):
    from feedback_lm.evaluate import load_prompt_set, text_metrics, value_fns

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "Q: sort b a\\nA:", "response": "a b", "task": "word_sorting"}\n'
                    '{"prompt": "Q: sort d c\\nA:", "response": "c d", "task": "word_sorting"}\n'
                    '{"prompt": "Q: how many\\nA:", "target": "3", "task": "object_counting"}\n'
                    '{"prompt": "Q: say hi\\nA:"}\n')
    rows, _ = load_prompt_set(str(path), None, 10, 0)
    assert [r["target"] for r in rows] == ["a b", "c d", "3", None]
    m = text_metrics(rows, ["a b", "d c", "5", "hi there"], value_fns("task", rows), copy_n=1, boot={"n_boot": 20})
    # word_sorting: right, wrong ("d c": no right position, no right pair: 0) -> 1/2; counting: 5 vs 3 -> 0, 1/6
    assert m["exact_match/word_sorting"]["value"] == 0.5 and m["exact_match/object_counting"]["value"] == 0.0
    assert m["score/object_counting"]["value"] == pytest.approx(1 / 6)
    assert m["exact_match"]["value"] == pytest.approx(1 / 3) and m["exact_match"]["n"] == 3
    assert m["rouge1"]["n"] == 3                      # the row without a reference has no ROUGE
    assert m["length"]["value"] == pytest.approx((2 + 2 + 1 + 2) / 4)
    # copied unigrams: a, b (of 2) | d, c (of 2) | none (5) | hi, not there (of 2): 5 of 7
    assert m["copy"]["value"] == pytest.approx(5 / 7)


def test_answer_match_reads_the_answer_out_of_a_sentence():
    from feedback_lm.evaluation import answer_match, extract_answer

    assert extract_answer("The correct answer is (C). The yellow book", "(C)") == "(C)"
    assert extract_answer("A: the answer is (b)", "(B)") == "(B)"
    assert extract_answer("There are 7 fruits.", "7") == "7"
    assert extract_answer("I have twelve vegetables", "12") == "12"
    assert extract_answer("apple banana", "apple banana") == "apple banana"
    outputs = ["The correct answer is (C).", "(A) or (C)", "", "There are 3 pigs", "3"]
    targets = ["(C)", "(C)", "(B)", "4", "3"]
    assert answer_match(outputs, targets).tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    from feedback_lm.evaluation import exact_match
    assert exact_match(outputs, targets).tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
