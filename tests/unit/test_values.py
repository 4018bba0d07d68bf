"""Value/feedback functions and the restricted program evaluator (feedback_lm.values)."""

import time

import pytest
import torch

from feedback_lm.errors import UserError
from feedback_lm.values import (
    FinalAnswerValue,
    Judgement,
    LexicalValue,
    ProgramError,
    ProgramLimits,
    ProgramValue,
    TaskValue,
    ValueFn,
    build_value_fn,
    judge,
    run_program,
    task_feedback,
    words_present,
)


@pytest.mark.parametrize("src, expected", [
    ("2 + 3 * 4", 14),
    ("a = 2 * 100\nb = 3 * 50\nc = 500 - a - b  # fix\nanswer = c\nprint(answer)", 150),  # the paper's example
    ("x = 7\nx += 3\nx", 10),
    ("print(round(10 / 4, 1))", 2.5),
    ("-(2 ** 10) // 3 % 7", (-(2 ** 10) // 3) % 7),
    ("answer = max(1, 5, 3) - min(2, abs(-4))", 3),
    ("a = 1\nanswer = 2\na + 100", 2),  # `answer` wins over the last expression
])
def test_run_program_computes_arithmetic(src, expected):
    assert run_program(src) == pytest.approx(expected)


@pytest.mark.parametrize("src, message", [
    ("__import__('os').system('true')", "is not allowed"),
    ("__import__('os')", "only the calls"),
    ("open('/etc/passwd')", "only the calls"),
    ("(1).__class__", "Attribute is not allowed"),
    ("[1, 2][0]", "is not allowed"),
    ("'a' * 3", "only numbers"),
    ("lambda: 1", "Lambda is not allowed"),
    ("while True:\n    pass", "While is not allowed"),
    ("for i in range(9): pass", "For is not allowed"),
    ("import os", "Import is not allowed"),
    ("x = y + 1", "name 'y' is not defined"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("9 ** 9 ** 9", "exponent too large"),
    ("10 ** 20", "number too large"),
    ("99999999 * 99999999 * 99999999", "number too large"),
    ("1e300 * 1e300", "number too large"),
    ("(-8) ** 0.5", "fractional power"),
    ("True + 1", "only numbers"),
    ("a, b = 1, 2", "is not allowed"),
    ("x = 1", "no result"),
    ("2 +", "syntax error"),
    ("print(1, 2)", "print()"),
    ("1 + 1\n" * 300, "too large"),
    ("1" * 3000, "too long"),
])
def test_run_program_refuses_and_fails_cleanly(src, message):
    with pytest.raises(ProgramError, match=message):
        run_program(src)


def test_run_program_time_limit_and_caps_are_configurable():
    with pytest.raises(ProgramError, match="time limit"):
        run_program("1 + 1", ProgramLimits(timeout_s=-1.0))
    with pytest.raises(ProgramError, match="exponent too large"):
        run_program("2 ** 5", ProgramLimits(max_exponent=4))
    with pytest.raises(ProgramError, match="number too large"):
        run_program("1000 * 1000", ProgramLimits(max_abs=1e5))
    start = time.perf_counter()
    deep = "-" * 1990 + "1"  # deep nesting: refused quickly, no RecursionError, even with the node cap lifted
    with pytest.raises(ProgramError, match="too large"):
        run_program(deep)
    with pytest.raises(ProgramError, match="nested"):
        run_program(deep, ProgramLimits(max_nodes=10**6, timeout_s=5.0))
    assert time.perf_counter() - start < 2.0


def test_program_value_and_feedback():
    v = ProgramValue()
    assert v("q", "a = 3 * 4\nanswer = a", "12") == Judgement(1.0, "")
    assert v("q", "12.0000000001", "12").value == 1.0  # float tolerance
    assert v("q", "3 * 5", "12") == Judgement(0.0, "the program returns 15")
    assert v("q", "3 / 0", "12") == Judgement(0.0, "error: division by zero")
    assert v("q", "3 * 4", "1,000") == Judgement(0.0, "the program returns 12")
    with pytest.raises(UserError, match="not a number"):
        v("q", "1", "twelve")


def test_lexical_value_share_and_missing_words():
    v = LexicalValue()
    assert v("q", "The dogs run to catch a frisbee.", "dog, frisbee, throw") == Judgement(2 / 3, "missing: throw")
    assert v("q", "throwing", "throw") == Judgement(1.0, "")
    assert v("q", "", "a b") == Judgement(0.0, "missing: a, b")
    assert words_present(["cat", "run", "dog"], "Cats runs") == [True, True, False]
    with pytest.raises(UserError, match="no required words"):
        v("q", "x", " , ")


def test_task_value_matches_verifier_and_explains():
    v = TaskValue("word_sorting")
    assert v("q", " apple banana cherry", "apple banana cherry") == Judgement(1.0, "")
    wrong = v("q", " banana apple cherry", "apple banana cherry")
    assert 0 < wrong.value < 1 and wrong.feedback == "misplaced: banana, apple"
    assert v("q", " apple banana", "apple banana cherry").feedback == "missing: cherry"
    assert "extra: kiwi" in v("q", " apple banana cherry kiwi", "apple banana cherry").feedback
    assert TaskValue("word_sorting", graded=False)("q", " banana apple cherry", "apple banana cherry").value == 0.0
    assert TaskValue("object_counting")("q", " 7", "5").feedback == "too high"
    assert task_feedback("object_counting", " 3", "5") == "too low"
    assert task_feedback("object_counting", " lots", "5") == "not a number"
    assert task_feedback("logical_deduction_three_objects", "(B)", "(A)") == "not (B)"
    assert task_feedback("logical_deduction_three_objects", "B", "(A)") == "not an option"


def test_final_answer_value_checks_calculator_steps():
    v = FinalAnswerValue()
    assert v("q", "2*9=<<2*9=18>>18\nA: 18", "18") == Judgement(1.0, "")
    assert v("q", "3*4=<<3*4=13>>13\nA: 13", "12").feedback == "wrong step: 3*4=13 (it is 12)"
    assert v("q", "3*4=<<3*4=12>>12\nA: 13", "12").feedback == "the final answer 13 is wrong"
    assert v("q", "3*4=<<3*4=12>>12 and then", "12").feedback == "no final answer"


def test_judge_batches_and_build_value_fn():
    fn = build_value_fn({"name": "task", "task": "word_sorting"})
    assert isinstance(fn, TaskValue) and isinstance(fn, ValueFn)
    values, feedback = judge(fn, ["q", "q"], [" a b", " b a"], ["a b", "a b"])
    assert values.dtype == torch.float32 and values[0] == 1.0 and values[1] < 1.0 and feedback[0] == ""
    assert isinstance(build_value_fn({"name": "feedback_lm.values.LexicalValue"}), LexicalValue)
    assert build_value_fn(fn) is fn
    with pytest.raises(UserError, match="unknown algo.value.name"):
        build_value_fn({"name": "nope"})
    with pytest.raises(UserError, match="cannot import"):
        build_value_fn({"name": "no_such_pkg.Value"})
    with pytest.raises(UserError, match="bad settings"):
        build_value_fn({"name": "lexical", "colour": 3})
    with pytest.raises(UserError, match="not a value function"):
        build_value_fn({"name": "builtins.dict"})
    with pytest.raises(ValueError, match="outputs"):
        judge(fn, ["q"], [], ["a"])


@pytest.mark.parametrize("src, expected", [
    ("round(1, -10**8)", 0), ("round(1, -10**7)", 0), ("round(1, -100000000)", 0), ("round(123456789, -3)", 123457000),
    ("round(7, 100000000)", 7), ("round(2.5, 100000000)", 2.5), ("round(1.23456, 2)", 1.23),
    ("round(999999999999999, -100000000)", 0),
])
def test_round_with_a_huge_ndigits_finishes_with_the_exact_result(src, expected):
    """round(x, n) is O(|n|) inside one built-in call (round(1, -10**8) ran for minutes): n is clamped to a
    range that cannot change the result of any number under the magnitude cap (issue 14)."""
    assert run_program(src) == pytest.approx(expected)
