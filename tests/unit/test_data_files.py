"""Tests for feedback_lm.data.files: BBH loading and the docs/algorithms.md §5.1 split, JSONL read/write."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from feedback_lm.data.files import bbh_split_indices, load_bbh, load_jsonl, write_jsonl
from feedback_lm.data.tasks import Example
from feedback_lm.errors import UserError

BBH_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bbh"


def real_file(task: str) -> Path:
    path = BBH_DIR / f"{task}.json"
    if not path.is_file():
        pytest.skip(f"real BBH data not found at {path} (expected ../shared/data/bbh next to the repo)")
    return path


def fake_bbh(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "fake.json"
    rows = [{"input": f"question {i}", "target": f"({'ABC'[i % 3]})"} for i in range(n)]
    path.write_text(json.dumps({"canary": "x", "examples": rows}))
    return path


# --------------------------------------------------------------------------------------------------
# load_bbh
# --------------------------------------------------------------------------------------------------


def test_split_matches_reference_global_seed_permutation():
    """The reference code does np.random.seed(1); np.random.permutation: same order, no global side effect."""
    state = np.random.get_state()
    try:
        np.random.seed(1)
        expected = np.random.permutation(250).tolist()
        np.random.seed(123)
        before = np.random.get_state()[1].copy()
        train, test = bbh_split_indices(250)
        assert (np.random.get_state()[1] == before).all()  # global numpy state untouched
    finally:
        np.random.set_state(state)
    assert train + test == expected
    assert (len(train), len(test)) == (200, 50)


@pytest.mark.parametrize(("n", "sizes"), [(250, (200, 50)), (146, (116, 30)), (10, (8, 2)), (1, (0, 1))])
def test_split_sizes(n, sizes):
    train, test = bbh_split_indices(n)
    assert (len(train), len(test)) == sizes
    assert sorted(train + test) == list(range(n))


def test_load_bbh_splits_on_a_synthetic_file(tmp_path):
    path = fake_bbh(tmp_path, 250)
    everything = load_bbh(path)
    assert everything[0] == Example(input="question 0", target="(A)")
    train, test = load_bbh(path, split="train"), load_bbh(path, split="test")
    assert (len(train), len(test)) == (200, 50)
    assert not set(train) & set(test) and set(train) | set(test) == set(everything)
    assert load_bbh(path, split="train") == train  # deterministic
    assert load_bbh(path, split="train", seed=2) != train
    assert len(load_bbh(path, split="test", test_frac=0.5)) == 125


def test_load_bbh_real_file():
    path = real_file("word_sorting")
    everything = load_bbh(path)
    train, test = load_bbh(path, split="train"), load_bbh(path, split="test")
    assert len(everything) == 250 and (len(train), len(test)) == (200, 50)
    assert not {e.input for e in train} & {e.input for e in test}
    rows = json.loads(path.read_text())["examples"]
    perm = np.random.RandomState(1).permutation(250)
    assert test[0] == Example(**rows[perm[200]])


def test_load_bbh_missing_file_says_where_and_how(tmp_path):
    missing = tmp_path / "nope" / "object_counting.json"
    with pytest.raises(UserError) as err:
        load_bbh(missing)
    assert str(missing) in str(err.value) and "data.path=" in str(err.value)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('[{"input": "a", "target": "b"}]', "'examples'"),
        ('{"canary": "x"}', "'examples'"),
        ('{"examples": []}', "'examples'"),
        ('{"examples": [{"input": "a", "target": "b"}, {"input": "a"}]}', "examples[1]"),
        ('{"examples": [{"input": "a", "target": 3}]}', "examples[0]"),
        ('{"examples": ["a"]}', "examples[0]"),
    ],
)
def test_load_bbh_rejects_non_bbh_files(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError) as err:
        load_bbh(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_load_bbh_rejects_bad_split_and_fraction(tmp_path):
    path = fake_bbh(tmp_path, 10)
    with pytest.raises(UserError, match="split"):
        load_bbh(path, split="validation")
    with pytest.raises(UserError, match="test_frac"):
        load_bbh(path, split="test", test_frac=1.5)


# --------------------------------------------------------------------------------------------------
# load_jsonl
# --------------------------------------------------------------------------------------------------


def test_load_jsonl_reads_rows_and_skips_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"prompt": "p1", "response": "r1", "score": 0.5}\n\n   \n{"prompt": "p2", "response": "r2"}\n'
    )
    rows = load_jsonl(path)
    assert rows == [{"prompt": "p1", "response": "r1", "score": 0.5}, {"prompt": "p2", "response": "r2"}]
    assert load_jsonl(path, required=("prompt",))[1] == {"prompt": "p2", "response": "r2"}


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        ('{"prompt": "p", "response": ', "not valid JSON"),
        ('["p", "r"]', "expected a JSON object"),
        ('{"prompt": "p"}', "missing field 'response'"),
        ('{"prompt": "p", "response": 7}', "field 'response' must be a non-empty string"),
    ],
)
def test_load_jsonl_malformed_row_names_file_and_line(tmp_path, bad_line, needle):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n' + bad_line + "\n")  # the bad row is on line 3
    with pytest.raises(UserError) as err:
        load_jsonl(path)
    msg = str(err.value)
    assert f"{path}:3" in msg and needle in msg
    assert '"prompt"' in msg and '"response"' in msg  # the expected shape


def test_load_jsonl_custom_required_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:1: missing field 'rejected'"):
        load_jsonl(path, required=("prompt", "chosen", "rejected"))


def test_load_jsonl_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_jsonl(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(UserError, match="no rows"):
        load_jsonl(empty)


# --------------------------------------------------------------------------------------------------
# write_jsonl
# --------------------------------------------------------------------------------------------------


def test_write_jsonl_round_trip(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"  # parent directories are created
    rows = [{"prompt": "Q: ünïcode\nA:", "response": " (B)"}, {"prompt": "p", "response": "r", "n": 3}]
    write_jsonl(path, rows)
    assert load_jsonl(path) == rows
    assert "ünïcode" in path.read_text(encoding="utf-8")
    write_jsonl(path, iter(rows[:1]))  # overwrite, from any iterable
    assert load_jsonl(path) == rows[:1]
    assert os.listdir(path.parent) == ["out.jsonl"]  # no temp file left behind


def test_write_jsonl_is_atomic_on_failure(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"prompt": "old", "response": "old"}])
    before = path.read_text()

    def rows():
        yield {"prompt": "new", "response": "new"}
        yield {"prompt": object(), "response": "x"}  # not JSON-serialisable: the write fails midway

    with pytest.raises(TypeError):
        write_jsonl(path, rows())
    assert path.read_text() == before  # the old file is intact, not half overwritten
    assert os.listdir(tmp_path) == ["out.jsonl"]


@pytest.mark.parametrize("raw, needle", [
    (b'{"prompt": "a", "response": "b"}\n\x00\x01\x02\xff binary\n', "d.jsonl:2: holds NUL bytes; this is a binary file"),
    (b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n',
     "d.jsonl:2: byte 0xe9 at column 16 is not UTF-8"),
    (b'{"prompt": "a", "response": ""}\n', "d.jsonl:1: field 'response' must be a non-empty string, got an empty string"),
    (b'{"prompt": "  ", "response": "b"}\n', "d.jsonl:1: field 'prompt' must be a non-empty string"),
    (b'{"prompt": "a", "response": "b", "target": null}\n', "d.jsonl:1: field 'target' must be a non-empty string, got null"),
])
def test_load_jsonl_refuses_bad_bytes_and_empty_fields(tmp_path, raw, needle):
    path = tmp_path / "d.jsonl"
    path.write_bytes(raw)
    with pytest.raises(UserError, match=re.escape(needle)):
        load_jsonl(path, optional=("target",))


def test_load_text_refuses_binary(tmp_path):
    from feedback_lm.data.files import load_text

    good = tmp_path / "t.txt"
    good.write_text("héllo\nworld\n", encoding="utf-8")
    assert load_text(good, "algo.ptx_data") == "héllo\nworld\n"
    bad = tmp_path / "b.txt"
    bad.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match=r"algo\.ptx_data=.*b\.txt: .*b\.txt:1: holds NUL bytes"):
        load_text(bad, "algo.ptx_data")


def test_check_output_file(tmp_path):
    from feedback_lm.data.files import check_output_file

    check_output_file(tmp_path / "new" / "out.jsonl", "--out")
    with pytest.raises(UserError, match=r"--out .* is a directory; give a file path"):
        check_output_file(tmp_path, "--out")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"cannot be created: .*f is a file"):
        check_output_file(tmp_path / "f" / "out.jsonl", "--out")
