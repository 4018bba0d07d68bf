"""GSM8K loaders (Cobbe et al. 2021, github.com/openai/grade-school-math), for self-correction.

Two file shapes (see ``<shared data>/gsm8k/README.md``):

* ``train.jsonl`` / ``test.jsonl`` / ``test_socratic.jsonl``: ``{"question", "answer"}``; the answer is a
  worked solution whose last line is ``#### <number>``.
* ``example_model_solutions.jsonl``: one row per test question with ``ground_truth`` (ending in
  ``A: <number>``) and four graded GPT-3 solutions ``{"is_correct", "solution"}`` (6B/175B,
  finetuned/verifier-selected). These are real wrong and right generations: :func:`correction_pairs`
  turns them into (wrong solution -> ground truth) pairs to train or evaluate a corrector on.

Errors name the file and line (``path:LINE``) and the expected row shape.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from feedback_lm.data.files import load_jsonl
from feedback_lm.errors import UserError

GRADED_MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
_FINAL = re.compile(r"(?:####|(?:^|\n)\s*A:)\s*\$?\s*(-?[\d,]*\.?\d+)")


@dataclass(frozen=True)
class Problem:
    """A GSM8K problem: the question, the worked solution and its final answer (a number as text)."""

    question: str
    solution: str
    answer: str


@dataclass(frozen=True)
class GradedSolution:
    """One graded GPT-3 solution of ``example_model_solutions.jsonl``.

    Attributes:
        question: the problem.
        ground_truth: the reference solution (ends in ``A: <n>``).
        answer: the reference final answer (text of a number).
        model: which of :data:`GRADED_MODELS` wrote it.
        solution: the model's solution (11 of 5,276 are cut off and have no final line).
        is_correct: the file's grade.
    """

    question: str
    ground_truth: str
    answer: str
    model: str
    solution: str
    is_correct: bool


def final_answer(text: str) -> float | None:
    """The number after the last ``#### `` or ``A:`` line (commas and ``$`` dropped); None if absent."""
    found = _FINAL.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _answer_text(text: str, where: str) -> str:
    x = final_answer(text)
    if x is None:
        raise UserError(f"{where}: the solution has no final answer line ('#### <number>' or 'A: <number>')")
    return str(int(x)) if x.is_integer() else str(x)


def load_gsm8k(path: str | os.PathLike, limit: int | None = None) -> list[Problem]:
    """Read ``train.jsonl`` / ``test.jsonl`` (``{"question", "answer"}`` rows).

    Raises:
        UserError: missing file, malformed row (``path:LINE``), or an answer without ``#### <n>``.
    """
    rows = load_jsonl(path, required=("question", "answer"))[:limit]
    return [Problem(r["question"], r["answer"], _answer_text(r["answer"], f"{path}: row {i + 1}"))
            for i, r in enumerate(rows)]


def load_graded_solutions(path: str | os.PathLike, models: Sequence[str] = GRADED_MODELS,
                          limit: int | None = None) -> list[GradedSolution]:
    """Read ``example_model_solutions.jsonl``: one :class:`GradedSolution` per (row, model).

    Args:
        path: the file.
        models: which graded fields to read (a subset of :data:`GRADED_MODELS`).
        limit: read only the first ``limit`` rows (questions).

    Raises:
        UserError: unknown model name, missing file, or a malformed row (``path:LINE`` for JSON
            errors, the row number for a bad graded field).
    """
    bad = [m for m in models if m not in GRADED_MODELS]
    if bad:
        raise UserError(f"unknown GSM8K graded model(s) {bad}; choose from {list(GRADED_MODELS)}")
    rows = load_jsonl(path, required=("question", "ground_truth"))[:limit]
    out = []
    for i, row in enumerate(rows):
        where = f"{path}: row {i + 1}"
        answer = _answer_text(row["ground_truth"], where)
        for m in models:
            graded = row.get(m)
            if not (isinstance(graded, dict) and isinstance(graded.get("solution"), str)
                    and isinstance(graded.get("is_correct"), bool)):
                raise UserError(f"{where}: field {m!r} must be an object "
                                f'{{"is_correct": true|false, "solution": "..."}}, got {graded!r:.80}')
            out.append(GradedSolution(row["question"], row["ground_truth"], answer, m, graded["solution"],
                                      graded["is_correct"]))
    return out


def prompt_for(question: str) -> str:
    """The prompt a generator or corrector sees for a question (the BBH-style ``Q: ...\\nA:`` template)."""
    return f"Q: {question}\nA:"


def correction_pairs(solutions: Sequence[GradedSolution]) -> list[dict[str, str]]:
    """Wrong solutions -> the ground truth: ``{"prompt", "hypothesis", "correction", "target"}`` rows.

    Only solutions graded wrong form pairs (a strictly value-improving pair, docs/algorithms.md §6.2); the
    correction is the reference solution with its ``A: <n>`` line, the target is the number.
    """
    return [{"prompt": prompt_for(s.question), "hypothesis": s.solution, "correction": s.ground_truth,
             "target": s.answer} for s in solutions if not s.is_correct]
