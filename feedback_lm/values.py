"""Value and feedback functions for self-correction (docs/algorithms.md §6.1, §6.3), behind one interface.

A value function judges one output: ``fn(prompt, output, target) -> Judgement(value, feedback)``,
where ``value`` is ``v(y)`` (higher is better, at most ``fn.max_value``) and ``feedback`` is ``f(y)``,
a short text ("" when there is nothing to say). Values and feedback come from outside the model and are
never differentiated (docs/algorithms.md §6.2).

Built in (``build_value_fn({"name": ..., **kwargs})``):

* ``task``: the foundation's task verifiers (``feedback_lm.data.tasks``): the graded ``score`` (or 0/1
  exact match), feedback that says *what* is wrong without giving the answer (misplaced / missing /
  extra words, a number too high or too low, a wrong option).
* ``program``: arithmetic program synthesis (docs/algorithms.md §6.3, GSM): the output is a short program or
  expression; it is run by :func:`run_program`, a restricted evaluator of our own (``ast`` parse,
  arithmetic and assignments only, never ``eval``/``exec``), with a time limit and size caps.
  ``v = 1`` iff its result equals the answer; feedback is the error or the wrong value.
* ``lexical``: lexically constrained generation (docs/algorithms.md §6.3, CommonGen): ``v`` = share of the required
  words present; feedback lists the missing ones.
* ``final_answer``: GSM8K-style solutions in natural language ending in ``A: <n>`` or ``#### <n>``:
  ``v = 1`` iff the final number is right; feedback names the first wrong calculator step
  ``<<a*b=c>>`` (checked with :func:`run_program`) or the wrong final value.
* any ``"package.module.Callable"`` that returns a :class:`ValueFn`, built with the remaining keys.
"""

from __future__ import annotations

import ast
import importlib
import math
import operator
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from feedback_lm.data import tasks
from feedback_lm.errors import UserError


@dataclass(frozen=True)
class Judgement:
    """``v(y)`` and ``f(y)`` of one output."""

    value: float
    feedback: str = ""


@runtime_checkable
class ValueFn(Protocol):
    """The interface every value/feedback function implements.

    Attributes:
        max_value: the value of a perfect output (used for "correct", oracle stopping and share fixed).
    """

    max_value: float

    def __call__(self, prompt: str, output: str, target: str) -> Judgement: ...


def judge(fn: ValueFn, prompts: Sequence[str], outputs: Sequence[str],
          targets: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Apply ``fn`` to a batch. Returns ``(values [B] float32, feedback: B strings)``."""
    if not (len(prompts) == len(outputs) == len(targets)):
        raise ValueError(f"judge: {len(prompts)} prompts, {len(outputs)} outputs, {len(targets)} targets")
    out = [fn(p, o, t) for p, o, t in zip(prompts, outputs, targets)]
    return torch.tensor([j.value for j in out], dtype=torch.float32), [j.feedback for j in out]


# ------------------------------------------------------------------------------- restricted evaluator
class ProgramError(ValueError):
    """A program that the restricted evaluator refuses or that fails; the message is user-facing feedback."""


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS: dict[str, Callable[..., Any]] = {"abs": abs, "round": round, "min": min, "max": max, "int": int,
                                         "float": float, "print": lambda x: x}
_ALLOWED_NODES = (ast.Module, ast.Assign, ast.AugAssign, ast.Expr, ast.Name, ast.Load, ast.Store,
                  ast.Constant, ast.BinOp, ast.UnaryOp, ast.Call, *_BINOPS, *_UNARY)


@dataclass(frozen=True)
class ProgramLimits:
    """Caps of :func:`run_program` [PROJECT].

    Attributes:
        max_chars: source length.
        max_nodes: AST nodes (also bounds the number of operations: there are no loops).
        max_abs: largest magnitude of any constant or intermediate result.
        max_exponent: largest ``|b|`` in ``a ** b``.
        timeout_s: wall-clock budget, checked before every node is evaluated.
    """

    max_chars: int = 2000
    max_nodes: int = 400
    max_abs: float = 1e15
    max_exponent: int = 64
    timeout_s: float = 0.1


def run_program(source: str, limits: ProgramLimits = ProgramLimits()) -> int | float:
    """Run an arithmetic program with our own AST interpreter (never ``eval``/``exec``).

    Allowed: number literals, variables, ``+ - * / // % **``, unary ``+ -``, assignments
    (``x = ...``, ``x += ...``), expression statements, and the calls ``abs round min max int float
    print``. Everything else (attributes, strings, subscripts, loops, imports, lambdas, ...) is refused.

    The result is the value of ``answer`` if the program assigns it, else the last ``print(...)``
    argument or expression statement, so ``"2 + 3"``, ``"a = 2\\nanswer = a * 3"`` and
    ``"c = 1\\nprint(c)"`` all work.

    Raises:
        ProgramError: syntax error, a refused construct, an undefined name, division by zero, a number
            or exponent over the caps, too many nodes or characters, the time limit, or no result.
    """
    if len(source) > limits.max_chars:
        raise ProgramError(f"program too long ({len(source)} characters, limit {limits.max_chars})")
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as e:
        raise ProgramError(f"syntax error on line {e.lineno}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ProgramError("program too deeply nested") from None
    for n_nodes, node in enumerate(ast.walk(tree), start=1):
        if n_nodes > limits.max_nodes:
            raise ProgramError(f"program too large (more than {limits.max_nodes} syntax nodes)")
        if not isinstance(node, _ALLOWED_NODES):
            raise ProgramError(f"{type(node).__name__} is not allowed (only arithmetic and assignments)")
    try:
        return _Interpreter(limits).run(tree)
    except RecursionError:
        raise ProgramError("program too deeply nested") from None


class _Interpreter:
    def __init__(self, limits: ProgramLimits):
        self.limits = limits
        self.deadline = time.perf_counter() + limits.timeout_s
        self.env: dict[str, int | float] = {}

    def run(self, tree: ast.Module) -> int | float:
        last = None
        for stmt in tree.body:
            self._tick()
            if isinstance(stmt, ast.Assign):
                if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
                    raise ProgramError("only assignments to one plain name are allowed (x = ...)")
                self.env[stmt.targets[0].id] = self._eval(stmt.value)
            elif isinstance(stmt, ast.AugAssign):
                if not isinstance(stmt.target, ast.Name):
                    raise ProgramError("only assignments to one plain name are allowed (x += ...)")
                self.env[stmt.target.id] = self._binop(stmt.op, self._name(stmt.target.id), self._eval(stmt.value))
            else:  # ast.Expr (the only other allowed statement)
                last = self._eval(stmt.value)
        if "answer" in self.env:
            return self.env["answer"]
        if last is None:
            raise ProgramError("no result: assign `answer = ...` or end with an expression")
        return last

    def _tick(self) -> None:
        if time.perf_counter() > self.deadline:
            raise ProgramError(f"time limit of {self.limits.timeout_s}s exceeded")

    def _check(self, x: Any) -> int | float:
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise ProgramError(f"only numbers are allowed, got {type(x).__name__}")
        if isinstance(x, float) and not math.isfinite(x):
            raise ProgramError("result is not a finite number")
        if abs(x) > self.limits.max_abs:
            raise ProgramError(f"number too large (over {self.limits.max_abs:g})")
        return x

    def _name(self, name: str) -> int | float:
        if name not in self.env:
            raise ProgramError(f"name '{name}' is not defined")
        return self.env[name]

    def _eval(self, node: ast.AST) -> int | float:
        self._tick()
        if isinstance(node, ast.Constant):
            return self._check(node.value)
        if isinstance(node, ast.Name):
            return self._name(node.id)
        if isinstance(node, ast.UnaryOp):
            return self._check(_UNARY[type(node.op)](self._eval(node.operand)))
        if isinstance(node, ast.BinOp):
            return self._binop(node.op, self._eval(node.left), self._eval(node.right))
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
                raise ProgramError(f"only the calls {', '.join(sorted(_FUNCS))} are allowed")
            if node.keywords or not node.args or (node.func.id not in ("min", "max") and len(node.args) > 2):
                raise ProgramError(f"bad arguments to {node.func.id}()")
            args = [self._eval(a) for a in node.args]
            if node.func.id == "round" and len(args) == 2 and isinstance(args[1], int):
                # round(x, n) costs O(|n|) digits inside one built-in call, where the time limit cannot
                # reach (round(1, -10**8) runs for minutes). Every |x| <= max_abs < 1e32, so clamping n
                # to [-32, 32] leaves the result exactly as it was.
                args[1] = max(-32, min(32, args[1]))
            try:
                return self._check(_FUNCS[node.func.id](*args))
            except (TypeError, ValueError, OverflowError) as e:
                raise ProgramError(f"{node.func.id}(): {e}") from None
        raise ProgramError(f"{type(node).__name__} is not allowed")  # unreachable after the AST check

    def _binop(self, op: ast.operator, a: float, b: float) -> int | float:
        if isinstance(op, ast.Pow):
            if abs(b) > self.limits.max_exponent:
                raise ProgramError(f"exponent too large (|{b}| > {self.limits.max_exponent})")
            if abs(a) > 1 and b > 0 and b * math.log10(abs(a)) > math.log10(self.limits.max_abs) + 1:
                raise ProgramError(f"number too large (over {self.limits.max_abs:g})")
            if a < 0 and isinstance(b, float) and not b.is_integer():
                raise ProgramError("fractional power of a negative number")
        try:
            out = _BINOPS[type(op)](a, b)
        except ZeroDivisionError:
            raise ProgramError("division by zero") from None
        except OverflowError:
            raise ProgramError(f"number too large (over {self.limits.max_abs:g})") from None
        return self._check(out)


def parse_number(text: str) -> float | None:
    """``"1,234"`` / ``" -5.0 "`` / ``"$12"`` -> float; None when it is not a number."""
    cleaned = text.strip().replace(",", "").lstrip("$").rstrip(".")
    try:
        x = float(cleaned)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def numbers_equal(a: float, b: float, rel: float = 1e-6) -> bool:
    """Equal up to a relative tolerance (programs compute with floats: ``0.1 * 3``)."""
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def format_number(x: float) -> str:
    """``12.0`` -> ``"12"``, ``2.5`` -> ``"2.5"``."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.6g}"


# ------------------------------------------------------------------------------------ value functions
class ProgramValue:
    """Arithmetic program synthesis: ``v = 1`` iff the program's result equals the target number.

    Feedback: the evaluator's error (``"error: division by zero"``) or the wrong value
    (``"the program returns 12"``); "" when right.
    """

    max_value = 1.0

    def __init__(self, limits: ProgramLimits | Mapping[str, Any] | None = None):
        self.limits = limits if isinstance(limits, ProgramLimits) else ProgramLimits(**dict(limits or {}))

    def __call__(self, prompt: str, output: str, target: str) -> Judgement:
        gold = _gold_number(target)
        try:
            result = run_program(output.strip(), self.limits)
        except ProgramError as e:
            return Judgement(0.0, f"error: {e}")
        if numbers_equal(float(result), gold):
            return Judgement(1.0, "")
        return Judgement(0.0, f"the program returns {format_number(result)}")


_WORD = re.compile(r"[a-z0-9]+")
_SUFFIXES = ("", "s", "es", "d", "ed", "ing")


def words_present(required: Sequence[str], text: str) -> list[bool]:
    """Which required words occur in ``text`` (lower case; a word also matches with one of the
    suffixes s/es/d/ed/ing, a light stand-in for the paper's lemma match [PROJECT])."""
    tokens = set(_WORD.findall(text.lower()))
    return [any(w.lower() + s in tokens for s in _SUFFIXES) for w in required]


class LexicalValue:
    """Lexical constraints (CommonGen): ``v`` = share of the required words present in the output.

    The target lists the required words, separated by spaces or commas. Feedback: ``"missing: dog,
    frisbee"``; "" when every word is there.
    """

    max_value = 1.0

    def __call__(self, prompt: str, output: str, target: str) -> Judgement:
        required = [w for w in re.split(r"[,\s]+", target.strip()) if w]
        if not required:
            raise UserError(f"lexical value: the target {target!r} lists no required words")
        present = words_present(required, output)
        missing = [w for w, ok in zip(required, present) if not ok]
        return Judgement(sum(present) / len(required), f"missing: {', '.join(missing)}" if missing else "")


class TaskValue:
    """The foundation's task verifiers (``feedback_lm.data.tasks``) as value and feedback.

    ``v`` is the graded ``tasks.score`` (1 iff exactly right, partial credit otherwise) or, with
    ``graded=False``, 0/1 exact match. Feedback says what is wrong without giving the answer:
    ``"misplaced: cherry, apple"`` / ``"missing: kiwi"`` / ``"extra: pear"`` for word answers,
    ``"too high"`` / ``"too low"`` / ``"not a number"`` for numbers, ``"not (B)"`` / ``"not an
    option"`` for multiple choice; "" when right.
    """

    max_value = 1.0

    def __init__(self, task: str, graded: bool = True):
        self.task, self.graded = task, graded

    def __call__(self, prompt: str, output: str, target: str) -> Judgement:
        if tasks.is_correct(output, target):
            return Judgement(1.0, "")
        value = tasks.score(self.task, output, target) if self.graded else 0.0
        return Judgement(value, task_feedback(self.task, output, target))


def task_feedback(task: str, output: str, target: str) -> str:
    """What is wrong with a wrong answer to a built-in task (see :class:`TaskValue`)."""
    kind = tasks._answer_kind(task, target)  # the verifier's own notion of the answer's kind
    if kind == "option":
        got = tasks.normalize_output(output).strip()
        return f"not {got.upper()}" if re.fullmatch(r"\([a-z]\)", got) else "not an option"
    if kind == "number":
        got = parse_number(tasks.normalize_output(output))
        if got is None:
            return "not a number"
        return "too high" if got > float(tasks.normalize_target(target)) else "too low"
    out = output.lower().replace(".", "").split()
    tgt = target.lower().replace(".", "").split()
    parts = []
    missing = [w for w in tgt if w not in out]
    extra = [w for w in out if w not in tgt]
    misplaced = [o for o, t in zip(out, tgt) if o != t and o in tgt]
    if misplaced:
        parts.append("misplaced: " + ", ".join(misplaced))
    if missing:
        parts.append("missing: " + ", ".join(missing))
    if extra:
        parts.append("extra: " + ", ".join(extra))
    return "; ".join(parts) or "wrong format"


_CALC = re.compile(r"<<([^<>=]+)=([^<>]*)>>")


class FinalAnswerValue:
    """GSM8K-style natural-language solutions: ``v = 1`` iff the final answer (``A: <n>`` or
    ``#### <n>``) equals the target number.

    Feedback: the first calculator annotation ``<<expr=result>>`` whose result is wrong (checked with
    :func:`run_program`), else ``"no final answer"`` or ``"the final answer 12 is wrong"``.
    """

    max_value = 1.0

    def __init__(self, limits: ProgramLimits | Mapping[str, Any] | None = None):
        self.limits = limits if isinstance(limits, ProgramLimits) else ProgramLimits(**dict(limits or {}))

    def __call__(self, prompt: str, output: str, target: str) -> Judgement:
        from feedback_lm.data.gsm8k import final_answer

        gold = _gold_number(target)
        got = final_answer(output)
        if got is not None and numbers_equal(got, gold):
            return Judgement(1.0, "")
        for expr, claimed in _CALC.findall(output):
            claimed_n = parse_number(claimed)
            try:
                actual = run_program(expr, self.limits)
            except ProgramError:
                continue  # not arithmetic we can check
            if claimed_n is None or not numbers_equal(float(actual), claimed_n):
                return Judgement(0.0, f"wrong step: {expr}={claimed.strip()} (it is {format_number(actual)})")
        if got is None:
            return Judgement(0.0, "no final answer")
        return Judgement(0.0, f"the final answer {format_number(got)} is wrong")


def _gold_number(target: str) -> float:
    gold = parse_number(target)
    if gold is None:
        raise UserError(f"the target {target!r} is not a number; arithmetic value functions need numeric answers")
    return gold


# ------------------------------------------------------------------------------------------ registry
VALUE_FNS: dict[str, Callable[..., ValueFn]] = {
    "task": TaskValue,
    "program": ProgramValue,
    "lexical": LexicalValue,
    "final_answer": FinalAnswerValue,
}


def build_value_fn(spec: Mapping[str, Any] | ValueFn) -> ValueFn:
    """``{"name": "task", "task": "word_sorting"}`` -> a :class:`ValueFn`.

    ``name`` is a key of :data:`VALUE_FNS` or a dotted path ``"my_pkg.my_mod.MyValue"``; the other
    keys are its keyword arguments. An object that already implements :class:`ValueFn` is returned as is.

    Raises:
        UserError: unknown name, an import that fails, bad arguments, or a result without ``max_value``.
    """
    if isinstance(spec, ValueFn):
        return spec
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise UserError(f"algo.value must be a mapping with a `name` (one of {sorted(VALUE_FNS)} or "
                        f"a dotted path), got {spec!r}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = str(spec["name"])
    if name in VALUE_FNS:
        factory = VALUE_FNS[name]
    elif "." in name:
        module, _, attr = name.rpartition(".")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise UserError(f"algo.value.name={name}: cannot import it ({e})") from None
    else:
        raise UserError(f"unknown algo.value.name '{name}'; choose one of {sorted(VALUE_FNS)} or a dotted path")
    try:
        fn = factory(**kwargs)
    except TypeError as e:
        raise UserError(f"algo.value ({name}): bad settings {sorted(kwargs)}: {e}") from None
    if not isinstance(fn, ValueFn):
        raise UserError(f"algo.value ({name}) built {type(fn).__name__}, which is not a value function: "
                        f"it needs a `max_value` and `__call__(prompt, output, target) -> Judgement`")
    return fn
