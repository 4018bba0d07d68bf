"""Tests for feedback_lm.data.comparisons: row shapes, pairs (docs/algorithms.md §2.b), errors, HH-RLHF, split."""

from __future__ import annotations

import gzip
import json
import logging
import re
from itertools import combinations
from pathlib import Path

import pytest

from feedback_lm.data.comparisons import (
    Comparison,
    load_comparisons,
    load_hh_rlhf,
    parse_comparison,
    split_comparisons,
    write_comparisons,
)
from feedback_lm.errors import UserError

HH_FILE = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "hh-rlhf"
    / "harmless-base"
    / "test.jsonl.gz"
)

BEST_ROW = {"prompt": "p", "responses": ["a", "b", "c", "d"], "best": 2}
RANKING_ROW = {"prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [2, [0, 3], 1]}
PAIR_ROW = {"prompt": "p", "chosen": "good", "rejected": "bad", "meta": {"id": 7}}


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def hh() -> list[Comparison]:
    if not HH_FILE.is_file():
        pytest.skip(f"HH-RLHF data not found at {HH_FILE} (expected ../shared/data next to the repo)")
    return load_hh_rlhf(HH_FILE)


# --------------------------------------------------------------------------------------------------
# shapes and round trips
# --------------------------------------------------------------------------------------------------


def test_best_row():
    c = parse_comparison(BEST_ROW, "f:1")
    assert (c.best, c.tiers, c.meta) == (2, [[2], [0, 1, 3]], {})
    assert c.to_row() == BEST_ROW


def test_ranking_row():
    c = parse_comparison(RANKING_ROW, "f:1")
    assert (c.best, c.tiers) == (None, [[2], [0, 3], [1]])
    assert c.to_row() == RANKING_ROW


def test_pair_row_becomes_best_of_two():
    c = parse_comparison(PAIR_ROW, "f:1")
    assert (c.responses, c.tiers, c.best, c.meta) == (["good", "bad"], [[0], [1]], 0, {"id": 7})
    assert c.to_row() == {"prompt": "p", "responses": ["good", "bad"], "best": 0, "meta": {"id": 7}}


@pytest.mark.parametrize("row", [BEST_ROW, RANKING_ROW, PAIR_ROW], ids=["best", "ranking", "pair"])
def test_round_trip_to_row_and_file(row, tmp_path):
    c = parse_comparison(row, "f:1")
    assert parse_comparison(c.to_row(), "f:1") == c
    path = tmp_path / "sub" / "c.jsonl"
    write_comparisons(path, [c, c])
    assert load_comparisons(path) == [c, c]
    assert not [p for p in path.parent.iterdir() if p.name != "c.jsonl"]  # no temp file left


def test_k_varies_across_rows_and_blank_lines_skipped(tmp_path):
    rows = [
        {"prompt": "x", "chosen": "a", "rejected": "b"},
        {"prompt": "y", "responses": ["a", "b", "c"], "ranking": [1, 0, 2]},
        {"prompt": "z", "responses": [str(i) for i in range(9)], "best": 8},
    ]
    path = write_lines(tmp_path / "c.jsonl", [rows[0], "", rows[1], "  ", rows[2]])
    comps = load_comparisons(path)
    assert [len(c.responses) for c in comps] == [2, 3, 9]
    assert [len(c.pairs()) for c in comps] == [1, 3, 8]


def test_gzipped_comparisons_are_read(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(RANKING_ROW) + "\n")
    assert load_comparisons(path)[0].tiers == [[2], [0, 3], [1]]


# --------------------------------------------------------------------------------------------------
# pairs
# --------------------------------------------------------------------------------------------------


def test_pairs_best_of_four():
    assert parse_comparison(BEST_ROW, "f:1").pairs() == [(2, 0), (2, 1), (2, 3)]


def test_pairs_strict_ranking_is_all_c_k_2():
    c = parse_comparison({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, 2, 0]}, "f:1")
    assert c.pairs() == [(1, 2), (1, 0), (2, 0)]
    ranking = [3, 0, 4, 1, 2]
    c5 = parse_comparison({"prompt": "p", "responses": list("abcde"), "ranking": ranking}, "f:1")
    assert c5.pairs() == list(combinations(ranking, 2))  # C(5,2) = 10, better one first


def test_pairs_with_tie_give_none_within_the_tie():
    pairs = parse_comparison(RANKING_ROW, "f:1").pairs()
    assert pairs == [(2, 0), (2, 3), (2, 1), (0, 1), (3, 1)]
    assert not {(0, 3), (3, 0)} & set(pairs)


# --------------------------------------------------------------------------------------------------
# malformed rows: one UserError naming file:LINE
# --------------------------------------------------------------------------------------------------

MALFORMED = {
    "one response": ({"prompt": "p", "responses": ["a"], "best": 0}, "at least 2"),
    "no responses": ({"prompt": "p", "responses": [], "ranking": []}, "at least 2"),
    "responses not list": ({"prompt": "p", "responses": "ab", "best": 0}, "list of strings"),
    "prompt not string": ({"prompt": 3, "chosen": "a", "rejected": "b"}, '"prompt" must be a string'),
    "response not string": ({"prompt": "p", "responses": ["a", 2], "best": 0}, "response 1 must be a string"),
    "chosen not string": ({"prompt": "p", "chosen": None, "rejected": "b"}, '"chosen" must be a string'),
    "best out of range": ({"prompt": "p", "responses": ["a", "b"], "best": 2}, "integer in 0..1"),
    "best negative": ({"prompt": "p", "responses": ["a", "b"], "best": -1}, "integer in 0..1"),
    "best not int": ({"prompt": "p", "responses": ["a", "b"], "best": "0"}, '"best" must be an integer'),
    "best bool": ({"prompt": "p", "responses": ["a", "b"], "best": True}, '"best" must be an integer'),
    "best float": ({"prompt": "p", "responses": ["a", "b"], "best": 1.0}, '"best" must be an integer'),
    "ranking missing": ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1]}, "missing [2]"),
    "ranking duplicate": ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, [1, 0]]}, "repeated [0]"),
    "ranking out of range": ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 5]}, "out of range [5]"),
    "ranking not list": (
        {"prompt": "p", "responses": ["a", "b"], "ranking": "01"},
        '"ranking" must be a list',
    ),
    "ranking string entry": (
        {"prompt": "p", "responses": ["a", "b"], "ranking": ["0", 1]},
        "integer indices",
    ),
    "ranking nested twice": (
        {"prompt": "p", "responses": ["a", "b"], "ranking": [[0, [1]]]},
        "integer indices",
    ),
    "ranking empty tie": ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, [], 1]}, "empty tie group"),
    "all tied": (
        {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [[0, 1, 2]]},
        "ties every response",
    ),
    "best and ranking": (
        {"prompt": "p", "responses": ["a", "b"], "best": 0, "ranking": [0, 1]},
        'both "best" and "ranking"',
    ),
    "no label": ({"prompt": "p", "responses": ["a", "b"]}, "match none"),
    "no prompt": ({"chosen": "a", "rejected": "b"}, "match none"),
    "unknown field": ({"prompt": "p", "chosen": "a", "rejected": "b", "score": 1}, "match none"),
    "mixed shapes": ({"prompt": "p", "chosen": "a", "rejected": "b", "responses": ["a", "b"]}, "match none"),
    "meta not object": (
        {"prompt": "p", "chosen": "a", "rejected": "b", "meta": [1]},
        '"meta" must be an object',
    ),
    "not an object": ([1, 2], "expected a JSON object"),
}


@pytest.mark.parametrize(("row", "expected"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_row_names_file_and_line(row, expected, tmp_path):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = write_lines(tmp_path / "bad.jsonl", [good, "", good, row, good])
    with pytest.raises(UserError) as err:
        load_comparisons(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:4: "), msg
    assert expected in msg, msg
    assert '"chosen"' in msg and '"ranking"' in msg  # the accepted shapes are listed


def test_invalid_json_names_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [BEST_ROW, '{"prompt": "p",'])
    with pytest.raises(UserError, match=re.escape(f"{path}:2: not valid JSON")):
        load_comparisons(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_comparisons(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="has no rows"):
        load_comparisons(write_lines(tmp_path / "empty.jsonl", ["", ""]))


def test_direct_construction_is_checked():
    with pytest.raises(UserError, match="do not match best"):
        Comparison(prompt="p", responses=["a", "b", "c"], tiers=[[0], [1]], best=0)
    with pytest.raises(UserError, match="missing"):
        Comparison(prompt="p", responses=["a", "b", "c"], tiers=[[0], [1]])


# --------------------------------------------------------------------------------------------------
# HH-RLHF
# --------------------------------------------------------------------------------------------------


def test_hh_rlhf_real_file(hh):
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    assert len(raw) == 2312
    assert 2300 <= len(hh) <= 2312  # 4 rows have an empty chosen turn and are skipped
    for c in hh:
        assert c.prompt.endswith("\n\nAssistant:") and c.prompt.startswith("\n\nHuman:")
        assert c.responses[0].strip() and c.responses[1].strip()
        assert c.responses[0] != c.responses[1]
        assert (c.best, c.tiers, c.pairs()) == (0, [[0], [1]], [(0, 1)])
        assert c.meta["source"] == "hh-rlhf"
    for c in hh[::50]:
        row = raw[c.meta["line"] - 1]
        assert c.prompt + " " + c.responses[0] == row["chosen"]
        assert c.prompt + " " + c.responses[1] == row["rejected"]


def test_hh_rlhf_limit(hh):
    assert load_hh_rlhf(HH_FILE, limit=5) == hh[:5]


def _hh_line(history: str, chosen: str, rejected: str) -> dict:
    return {"chosen": history + chosen, "rejected": history + rejected}


def test_hh_rlhf_splits_at_last_shared_assistant_turn_and_counts_skips(tmp_path, caplog):
    h = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant:"
    rows = [
        _hh_line(h, " yes", " no"),
        _hh_line(h, " same", " same"),  # chosen == rejected
        {"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: b"},  # no shared Assistant marker
        _hh_line(h, " ", " no"),  # empty chosen turn
        _hh_line(h, " sure\n\nAssistant: more", " no"),  # the response may hold another marker
    ]
    path = write_lines(tmp_path / "hh.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="feedback_lm.data.comparisons"):
        comps = load_hh_rlhf(path)
    assert [c.meta["line"] for c in comps] == [1, 5]
    assert all(c.prompt == h for c in comps)
    assert [c.responses for c in comps] == [["yes", "no"], ["sure\n\nAssistant: more", "no"]]
    assert "skipped 3 HH-RLHF rows" in caplog.text
    assert "1 chosen == rejected" in caplog.text and "1 empty final turn" in caplog.text


def test_hh_rlhf_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_hh_rlhf(tmp_path / "missing.jsonl.gz")
    path = write_lines(tmp_path / "hh.jsonl", [_hh_line("\n\nAssistant:", " a", " b"), {"chosen": "x"}])
    with pytest.raises(UserError, match=re.escape(f"{path}:2: not an HH-RLHF row")):
        load_hh_rlhf(path)
    fake_gz = tmp_path / "plain.jsonl.gz"
    fake_gz.write_text("not gzip")
    with pytest.raises(UserError, match="cannot read"):
        load_hh_rlhf(fake_gz)


# --------------------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------------------


def _check_split(comps, train, val):
    assert not {c.prompt for c in train} & {c.prompt for c in val}
    assert len(train) + len(val) == len(comps)
    # each side keeps the input order
    order = {id(c): i for i, c in enumerate(comps)}
    assert [order[id(c)] for c in train] == sorted(order[id(c)] for c in train)


def test_split_by_prompt_is_disjoint_and_deterministic():
    comps = [Comparison(f"p{i % 7}", ["a", f"b{i}"], [[0], [1]], best=0) for i in range(30)]
    train, val = split_comparisons(comps, 0.3, seed=0)
    _check_split(comps, train, val)
    assert len({c.prompt for c in val}) == 2  # round(0.3 * 7)
    assert split_comparisons(comps, 0.3, seed=0) == (train, val)
    assert any(split_comparisons(comps, 0.3, seed=s)[1] != val for s in range(1, 6))


def test_split_edges():
    comps = [Comparison(f"p{i}", ["a", "b"], [[0], [1]], best=0) for i in range(3)]
    assert split_comparisons(comps, 0.0, seed=1) == (comps, [])
    assert len(split_comparisons(comps, 0.01, seed=1)[1]) == 1  # at least one val prompt
    assert len(split_comparisons(comps, 0.99, seed=1)[0]) == 1  # at least one train prompt
    for bad in (-0.1, 1.0):
        with pytest.raises(UserError, match="val_fraction"):
            split_comparisons(comps, bad, seed=1)


def test_split_real_hh_prompts(hh):
    train, val = split_comparisons(hh, 0.1, seed=3)
    _check_split(hh, train, val)
    assert len({c.prompt for c in hh}) < len(hh)  # repeated prompts exist, so grouping matters
    assert split_comparisons(hh, 0.1, seed=3) == (train, val)


@pytest.mark.parametrize("row, needle", [
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "chosen and rejected are the same text"),
    ({"prompt": "p", "responses": ["a", "b", "a"], "ranking": [0, 1, 2]}, "responses 0 and 2 are the same text but ranked apart"),
    ({"prompt": "p", "responses": ["a", "a", "b"], "best": 0}, "responses 0 and 1 are the same text but ranked apart"),
])
def test_degenerate_rows_are_refused_with_their_line_or_skipped(tmp_path, row, needle):
    from feedback_lm.data.comparisons import load_comparisons

    good = {"prompt": "q", "responses": ["x", "y"], "best": 1}
    tied = {"prompt": "q", "responses": ["a", "a", "b"], "ranking": [[0, 1], 2]}  # identical but tied: fine
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, tied, row)) + "\n")
    with pytest.raises(UserError, match=re.escape(f"c.jsonl:3: {needle}") + ".*data.skip_degenerate=true"):
        load_comparisons(path)
    skipped: dict[str, int] = {}
    assert len(load_comparisons(path, skip_degenerate=True, skipped=skipped)) == 2
    assert skipped == {"degenerate": 1}


def test_binary_comparison_file_names_the_line(tmp_path):
    from feedback_lm.data.comparisons import load_comparisons

    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(UserError, match=r"c\.jsonl:1: byte 0x89 at column 1 is not UTF-8"):
        load_comparisons(path)
