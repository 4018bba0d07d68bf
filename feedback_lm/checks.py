"""Range checks for a plugin's arguments, in one place at the top of its ``__init__``.

Plugins are built before any model or data loads, so a bad value fails in seconds with one message
that names the option, the value and the allowed range::

    check_args("algo", lr=(lr, "> 0"), minibatch_size=(minibatch_size, ">= 1"),
               kl_coef=(kl_coef, ">= 0"), top_p=(top_p, "(0, 1]"), clip=(clip, "[0, 1)"))

A rule is ``"> x"``, ``">= x"``, ``"< x"``, ``"<= x"`` or an interval ``"(a, b]"`` / ``"[a, b)"`` /
``"[a, b]"`` / ``"(a, b)"`` (``inf`` allowed). ``None`` values pass (an optional argument left unset).
"""

from __future__ import annotations

import math
import operator
import re

from feedback_lm.errors import UserError

_CMP = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_RULE = re.compile(r"^\s*(>=|<=|>|<)\s*(\S+)\s*$")
_INTERVAL = re.compile(r"^\s*([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])\s*$")


def holds(value: float, rule: str) -> bool:
    """Whether ``value`` satisfies ``rule`` (see the module docstring for the forms)."""
    if m := _RULE.match(rule):
        return _CMP[m[1]](value, float(m[2]))
    if m := _INTERVAL.match(rule):
        lo, hi = float(m[2]), float(m[3])
        above = value >= lo if m[1] == "[" else value > lo
        below = value <= hi if m[4] == "]" else value < hi
        return above and below
    raise ValueError(f"unknown range rule {rule!r}")


def check_args(prefix: str, **checks: tuple[object, str]) -> None:
    """Raise one :class:`UserError` naming ``<prefix>.<name>`` for the first value outside its rule.

    Args:
        prefix: the config group the values come from (``"algo"``, ``"data"``, ``"model"``).
        **checks: ``name=(value, rule)``.
    """
    for name, (value, rule) in checks.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{prefix}.{name}={value!r} must be a number {rule}")
        if isinstance(value, float) and math.isnan(value) or not holds(value, rule):
            raise UserError(f"{prefix}.{name}={value!r} is out of range: it must be {rule}")
