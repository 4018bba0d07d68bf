"""GSM8K loaders: final answers, the graded-solutions file, clear errors on bad rows."""

import json

import pytest

from feedback_lm.data.gsm8k import (
    GRADED_MODELS,
    correction_pairs,
    final_answer,
    load_graded_solutions,
    load_gsm8k,
    prompt_for,
)
from feedback_lm.errors import UserError
from feedback_lm.values import FinalAnswerValue


def test_final_answer_formats():
    assert final_answer("x\n#### 1,234") == 1234.0
    assert final_answer("so\nA: 18") == 18.0
    assert final_answer("A: $-2.5") == -2.5
    assert final_answer("He pays $<<2*3=6>>6 in total") is None


def _graded_row(correct=False):
    return {"question": "Q?", "ground_truth": "2*3=<<2*3=6>>6\nA: 6",
            **{m: {"is_correct": correct, "solution": "2*3=<<2*3=7>>7\nA: 7"} for m in GRADED_MODELS}}


def test_graded_solutions_and_pairs(tmp_path):
    path = tmp_path / "sol.jsonl"
    path.write_text(json.dumps(_graded_row()) + "\n" + json.dumps(_graded_row(correct=True)) + "\n")
    sols = load_graded_solutions(path, models=["6b_finetuning"])
    assert [s.is_correct for s in sols] == [False, True] and sols[0].answer == "6"
    pairs = correction_pairs(sols)
    assert pairs == [{"prompt": prompt_for("Q?"), "hypothesis": "2*3=<<2*3=7>>7\nA: 7",
                      "correction": "2*3=<<2*3=6>>6\nA: 6", "target": "6"}]
    v = FinalAnswerValue()
    assert v(pairs[0]["prompt"], pairs[0]["hypothesis"], "6").value == 0.0
    assert v(pairs[0]["prompt"], pairs[0]["correction"], "6").value == 1.0


def test_bad_rows_give_clear_errors(tmp_path):
    path = tmp_path / "sol.jsonl"
    row = _graded_row()
    row["6b_verification"] = {"solution": 3}
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=r"row 1: field '6b_verification' must be an object"):
        load_graded_solutions(path)
    path.write_text("{not json\n")
    with pytest.raises(UserError, match=r"sol.jsonl:1: not valid JSON"):
        load_graded_solutions(path)
    with pytest.raises(UserError, match="unknown GSM8K graded model"):
        load_graded_solutions(path, models=["7b"])
    qa = tmp_path / "train.jsonl"
    qa.write_text(json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(UserError, match="no final answer line"):
        load_gsm8k(qa)


def test_real_files(shared_data):
    root = shared_data / "gsm8k"
    test = load_gsm8k(root / "test.jsonl")
    assert len(test) == 1319 and test[0].answer == "18"
    sols = load_graded_solutions(root / "example_model_solutions.jsonl")
    assert len(sols) == 4 * 1319
    counts = {m: sum(s.is_correct for s in sols if s.model == m) for m in GRADED_MODELS}
    assert counts == {"6b_finetuning": 286, "6b_verification": 515, "175b_finetuning": 458,
                      "175b_verification": 742}  # the README's numbers
    # The grades agree with our final-answer value on every solution that has a final line.
    v = FinalAnswerValue()
    checked = [s for s in sols if final_answer(s.solution) is not None]
    agree = sum((v("", s.solution, s.answer).value == 1.0) == s.is_correct for s in checked)
    assert len(sols) - len(checked) == 11 and agree / len(checked) > 0.99
    assert len(correction_pairs(sols)) == 4 * 1319 - sum(counts.values())
