"""SimulatedLabeler: tiers and best-of-K from the task's graded scores, ties, noise, seeding."""

from __future__ import annotations

import pytest

from feedback_lm.errors import UserError
from feedback_lm.labelers import Label, Labeler, SimulatedLabeler, tiers_from_scores

# object_counting is a "number" task: 1.0 for the right count, 0.5 / (1 + |error|) for another
# integer, 0 for anything else. Target 5:
TARGET = "5"
RESPONSES = [" 4", " 5", "many", " 6", " 7"]
SCORES = [0.25, 1.0, 0.0, 0.25, 0.5 / 3]


def test_tiers_from_scores_groups_ties_best_first():
    assert tiers_from_scores([0.2, 1.0, 0.2, 0.0]) == [[1], [0, 2], [3]]
    assert tiers_from_scores([0.0, 0.0]) == [[0, 1]]
    # the same credit reached by different float sums is one tier
    assert tiers_from_scores([0.9 * (0.25 + 0.75) / 2, 0.9 * (0.1 + 0.9) / 2]) == [[0, 1]]


def test_rank_mode_tiers_from_known_scores_with_ties():
    label = SimulatedLabeler("object_counting", mode="rank").label("Q", RESPONSES, TARGET)
    assert label.tiers == [[1], [0, 3], [4], [2]]
    assert label.best is None
    assert label.has_pairs
    assert label.meta["labeler"] == "simulated"
    assert label.meta["scores"] == pytest.approx(SCORES)
    assert label.meta["noisy"] is False


def test_word_sorting_partial_credit_orders_wrong_answers():
    target = "apple banana cherry"
    responses = ["apple cherry banana", "apple banana cherry", "zebra", "apple banana"]
    label = SimulatedLabeler("word_sorting").label("Q", responses, target)
    s = label.meta["scores"]
    assert s[1] == 1.0 and s[2] == 0.0 and 0 < s[0] < s[3] < 0.9
    assert label.tiers == [[1], [3], [0], [2]]


def test_best_mode_picks_highest_score():
    label = SimulatedLabeler("object_counting", mode="best").label("Q", RESPONSES, TARGET)
    assert label.best == 1
    assert label.tiers == [[1], [0, 2, 3, 4]]
    assert label.meta["noisy"] is False


def test_best_mode_breaks_exact_ties_at_random_but_seeded():
    responses = [" 5", "x", " 5", " 5"]  # three correct answers tie at the top
    bests = {SimulatedLabeler("object_counting", mode="best", seed=s).label("Q", responses, TARGET).best
             for s in range(40)}
    assert bests == {0, 2, 3}  # every tied top response gets picked for some seed, never the wrong one
    for seed in range(5):
        a = SimulatedLabeler("object_counting", mode="best", seed=seed).label("Q", responses, TARGET)
        b = SimulatedLabeler("object_counting", mode="best", seed=seed).label("Q", responses, TARGET)
        assert a == b
        assert a.tiers == [[a.best], [i for i in range(4) if i != a.best]]


@pytest.mark.parametrize("mode", ["rank", "best"])
@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_all_tied_gives_one_tier_and_no_pairs(mode, noise):
    label = SimulatedLabeler("object_counting", mode=mode, noise=noise).label("Q", ["a", "b", "c"], TARGET)
    assert label.tiers == [[0, 1, 2]]
    assert label.best is None
    assert not label.has_pairs
    assert label.meta["noisy"] is False  # a label with nothing to order cannot be wrong


@pytest.mark.parametrize("mode", ["rank", "best"])
def test_noise_zero_is_deterministic_whatever_the_seed(mode):
    labels = {repr(SimulatedLabeler("object_counting", mode=mode, noise=0.0, seed=s).label("Q", RESPONSES, TARGET))
              for s in range(10)}
    assert len(labels) == 1


def test_noise_one_best_mode_always_picks_another_response():
    response_sets = [RESPONSES, [" 5", " 4"], ["x", " 3", " 9", " 5"], [" 1", " 2", " 2"]]
    for seed in range(20):
        clean = SimulatedLabeler("object_counting", mode="best", noise=0.0, seed=seed)
        noisy = SimulatedLabeler("object_counting", mode="best", noise=1.0, seed=seed)
        for responses in response_sets:
            a, b = clean.label("Q", responses, TARGET), noisy.label("Q", responses, TARGET)
            assert b.best != a.best
            assert b.meta["noisy"] is True
            assert b.tiers == [[b.best], [i for i in range(len(responses)) if i != b.best]]
            assert b.meta["scores"] == a.meta["scores"]  # the scores are the truth; only the label errs


def test_noise_one_rank_mode_swaps_exactly_two_adjacent_tiers():
    clean = SimulatedLabeler("object_counting", mode="rank").label("Q", RESPONSES, TARGET).tiers
    swapped = set()
    for seed in range(30):
        label = SimulatedLabeler("object_counting", mode="rank", noise=1.0, seed=seed).label("Q", RESPONSES, TARGET)
        assert label.meta["noisy"] is True
        diff = [j for j in range(len(clean)) if label.tiers[j] != clean[j]]
        assert len(diff) == 2 and diff[1] == diff[0] + 1
        j = diff[0]
        assert label.tiers[j] == clean[j + 1] and label.tiers[j + 1] == clean[j]
        swapped.add(j)
    assert swapped == {0, 1, 2}  # every adjacent pair of the 4 tiers gets swapped for some seed


def test_noise_rate_and_seeded_reproducibility():
    def run(seed):
        labeler = SimulatedLabeler("object_counting", mode="rank", noise=0.3, seed=seed)
        return [labeler.label("Q", RESPONSES, TARGET) for _ in range(300)]

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert a != c
    rate = sum(lab.meta["noisy"] for lab in a) / len(a)
    assert 0.2 < rate < 0.4


def test_label_all_matches_label_in_order():
    prompts = ["p0", "p1", "p2"]
    responses = [RESPONSES, ["x", " 5"], ["a", "b"]]
    targets = ["5", "5", "2"]
    batch = SimulatedLabeler("object_counting", mode="best", noise=0.5, seed=3).label_all(prompts, responses, targets)
    one = SimulatedLabeler("object_counting", mode="best", noise=0.5, seed=3)
    assert batch == [one.label(p, r, t) for p, r, t in zip(prompts, responses, targets)]
    with pytest.raises(ValueError, match="as many"):
        one.label_all(prompts, responses[:2], targets)


def test_bad_arguments():
    with pytest.raises(UserError, match="mode"):
        SimulatedLabeler("object_counting", mode="pairwise")
    with pytest.raises(UserError, match="noise"):
        SimulatedLabeler("object_counting", noise=1.5)
    labeler = SimulatedLabeler("object_counting")
    with pytest.raises(ValueError, match="target"):
        labeler.label("Q", ["1"], None)
    with pytest.raises(ValueError, match="at least one"):
        labeler.label("Q", [], "1")


def test_protocol_is_satisfied_by_simulated_and_custom_labelers():
    class FirstIsBest:
        def label(self, prompt, responses, target):
            return Label(tiers=[[0], list(range(1, len(responses)))], best=0, meta={"labeler": "first"})

    assert isinstance(SimulatedLabeler("object_counting"), Labeler)
    assert isinstance(FirstIsBest(), Labeler)
    assert not isinstance(object(), Labeler)
