"""Chance-corrected agreement (feedback_lm.label.stats) against published worked examples."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("krippendorff", reason="the label extra is not installed: pip install '.[label]'")

from feedback_lm.label.stats import alpha_ordinal, chance_corrected, cohen_kappa, fleiss_kappa, ranks

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the example with missing values:
# 4 observers, 12 units, values 1..5 (None = not coded). The paper gives alpha = 0.743 (nominal),
# 0.815 (ordinal) and 0.849 (interval).
KRIPPENDORFF_2011 = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}

# Fleiss (1971) as worked on Wikipedia's "Fleiss' kappa" page: 10 subjects, 14 raters each,
# 5 categories; P-bar = 0.378, P-e-bar = 0.213, kappa = 0.210.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


def test_krippendorff_alpha_ordinal_matches_the_paper():
    units = {u: {c: v[u] for c, v in KRIPPENDORFF_2011.items() if v[u] is not None} for u in range(12)}
    assert alpha_ordinal(units) == pytest.approx(0.815, abs=5e-4)


def test_alpha_is_one_for_identical_and_none_when_undefined():
    same = {u: {"a": v, "b": v} for u, v in enumerate([1, 2, 3, 1])}
    assert alpha_ordinal(same) == 1.0
    assert alpha_ordinal({0: {"a": 1, "b": 1}, 1: {"a": 1, "b": 1}}) is None  # one value only
    assert alpha_ordinal({0: {"a": 1}, 1: {"b": 2}}) is None  # nothing pairable


def test_fleiss_kappa_matches_the_worked_example():
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.2099, abs=1e-4)
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[1, 1], [2, 1]])


def test_cohen_kappa_matches_the_worked_example():
    # Wikipedia's "Cohen's kappa" example: 50 proposals, both yes 20, A yes / B no 5, A no / B yes 10,
    # both no 15: p_o = 0.7, p_e = 0.5, kappa = 0.4.
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([1, 1], [1, 1]) is None  # chance agreement 1: undefined


def test_ranks_share_a_rank_in_a_tie():
    assert ranks([[2], [0, 3], [1]]) == {2: 1, 0: 2, 3: 2, 1: 3}


def row(item: int, labeler: str, tiers, best=None, likert=None, gold=None, k: int = 3) -> dict:
    return {"item_id": item, "labeler": labeler, "tiers": tiers, "best": best, "likert": likert, "gold": gold,
            "responses": ["r"] * k}


def test_chance_corrected_rank_mode_by_hand():
    # Two people rank the same 2 items of 3 responses identically, a third reverses them: alpha
    # between the first two is 1, and each is compared to gold (equal to the first person's labels).
    rows = []
    for item in (1, 2):
        rows += [row(item, "ada", [[0], [1], [2]], gold=[[0], [1], [2]]),
                 row(item, "bob", [[0], [1], [2]], gold=[[0], [1], [2]]),
                 row(item, "cy", [[2], [1], [0]], gold=[[0], [1], [2]])]
    result = chance_corrected(rows, "rank")
    pairs = {(p["a"], p["b"]): p for p in result["pairs"]}
    assert pairs["ada", "bob"]["alpha"] == 1.0 and pairs["ada", "bob"]["items"] == 2
    assert pairs["ada", "cy"]["alpha"] < 0
    assert result["with_gold"]["ada"] == 1.0 and result["with_gold"]["cy"] < 0
    # All three: 6 units of ranks (1,1,3), (2,2,2), (3,3,1); the same alpha as the library on them.
    units = {u: dict(zip("abc", v)) for u, v in enumerate([(1, 1, 3), (2, 2, 2), (3, 3, 1)] * 2)}
    assert result["between"]["rank_alpha"] == alpha_ordinal(units)


def test_chance_corrected_best_mode_by_hand():
    # 4 items, 2 people, K = 2. Agreement on 3 of 4; ada picks 0 three times, bob 0 twice:
    # p_o = 3/4, p_e = (3*2 + 1*2)/16 = 1/2, Cohen's kappa = 0.5. Fleiss on the same table:
    # p_j = (5/8, 3/8), P_e = 34/64; P_i = 1, 1, 0, 1 -> P-bar = 3/4; kappa = (3/4 - 34/64)/(30/64) = 7/15.
    picks = {"ada": [0, 0, 0, 1], "bob": [0, 0, 1, 1]}
    rows = [row(item, name, [[b], [1 - b]], best=b, k=2) for name, bs in picks.items() for item, b in enumerate(bs)]
    result = chance_corrected(rows, "best")
    assert result["pairs"] == [{"a": "ada", "b": "bob", "items": 4, "kappa": 0.5}]
    assert result["between"]["best_fleiss_kappa"] == pytest.approx(7 / 15, abs=1e-4)
    assert result["between"]["best_fleiss_items"] == 4
    assert math.isclose(cohen_kappa(picks["ada"], picks["bob"]), 0.5)
