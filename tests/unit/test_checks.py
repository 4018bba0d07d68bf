"""The plugins' range checks (feedback_lm.checks)."""

import pytest

from feedback_lm.checks import check_args, holds
from feedback_lm.errors import UserError


@pytest.mark.parametrize("value, rule, ok", [
    (1e-4, "> 0", True), (0, "> 0", False), (0, ">= 0", True), (-1, ">= 0", False),
    (1, "(0, 1]", True), (0, "(0, 1]", False), (1, "[0, 1)", False), (0, "[0, 1)", True),
    (5, "[1, inf)", True), (0.5, "(0, 1)", True), (3, "< 3", False), (3, "<= 3", True),
])
def test_holds(value, rule, ok):
    assert holds(value, rule) is ok


def test_check_args_names_the_option():
    check_args("algo", lr=(1e-3, "> 0"), warmup=(None, ">= 0"))
    with pytest.raises(UserError, match=r"algo\.lr=-1 is out of range: it must be > 0"):
        check_args("algo", lr=(-1, "> 0"))
    with pytest.raises(UserError, match=r"algo\.top_p='abc' must be a number"):
        check_args("algo", top_p=("abc", "(0, 1]"))
    with pytest.raises(UserError, match=r"algo\.lr=nan"):
        check_args("algo", lr=(float("nan"), "> 0"))
    with pytest.raises(UserError, match=r"must be a number"):
        check_args("algo", ppo_epochs=(True, ">= 1"))
