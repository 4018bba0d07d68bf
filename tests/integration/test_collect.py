"""`feedback_lm.collect`: sample K responses per prompt, label them, write comparison rows."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from feedback_lm.collect import PROMPT_SEED_OFFSET, collect, main, resolve_model
from feedback_lm.data import tasks
from feedback_lm.data.comparisons import load_comparisons
from feedback_lm.errors import UserError

REPRO_KEYS = {"labeler", "scores", "noisy", "target", "policy", "sampling", "seed", "task", "difficulty",
              "template"}
COUNTING = {"min_items": 2, "max_items": 3, "max_count": 2}


class FakePolicy:
    """Duck-typed policy with fixed answers, so labels are known: prompt i gets " 3", " 4", "none",
    except every third prompt, whose K answers are all "none" (all tied: skipped)."""

    name = "fake"

    def __init__(self):
        self.prompts: list[str] = []
        self.calls: list[dict] = []

    def encode_prompts(self, texts):
        start = len(self.prompts)
        self.prompts.extend(texts)
        ids = torch.arange(start, start + len(texts)).unsqueeze(1)
        return ids, torch.ones_like(ids, dtype=torch.bool)

    def generate(self, prompt_ids, prompt_mask, **kwargs):
        self.calls.append(kwargs)
        k = kwargs["num_return_sequences"]
        rows = prompt_ids.repeat_interleave(k, 0)  # prompt-major, like Policy.generate
        sample = torch.arange(k).repeat(len(prompt_ids)).unsqueeze(1)
        ids = torch.cat([rows, sample], 1)
        return SimpleNamespace(response_ids=ids, response_mask=torch.ones_like(ids, dtype=torch.bool))

    def decode(self, ids, mask):
        answers = [" 3", " 4", "none"]
        return ["none" if p % 3 == 2 else answers[j % 3] for p, j in ids.tolist()]


def test_collect_with_fixed_answers_writes_labelled_rows(tmp_path):
    out = tmp_path / "comparisons.jsonl"
    fake = FakePolicy()
    summary = collect(fake, "object_counting", out, difficulty=COUNTING, num_prompts=7, k=3, mode="rank",
                      temperature=0.7, max_new_tokens=5, batch_size=3, seed=4, progress=False)

    assert summary["rows_written"] == 5 and summary["skipped_all_tied"] == 2  # prompts 2 and 5 tie
    assert summary["num_prompts"] == 7 and summary["noisy_labels"] == 0
    # sampling settings reach generate: pure sampling, K per prompt, batches of 3 prompts
    assert [c["num_return_sequences"] for c in fake.calls] == [3, 3, 3]
    assert fake.calls[0] == {"max_new_tokens": 5, "do_sample": True, "temperature": 0.7, "top_k": 0,
                             "top_p": 1.0, "num_return_sequences": 3}

    # prompts come from the documented seed stream and template
    examples = tasks.generate("object_counting", 7, seed=4 + PROMPT_SEED_OFFSET, **COUNTING)
    assert fake.prompts == [tasks.format_prompt(e, "Q: {input}\nA:") for e in examples]

    rows = load_comparisons(out)
    assert [r.meta["index"] for r in rows] == [0, 1, 3, 4, 6]
    all_scores = []
    for r in rows:
        i = r.meta["index"]
        target = examples[i].target
        assert r.prompt == fake.prompts[i]
        assert r.responses == [" 3", " 4", "none"]
        assert REPRO_KEYS <= set(r.meta)
        assert r.meta["target"] == target
        assert r.meta["policy"] == "fake" and r.meta["seed"] == 4 and r.meta["task"] == "object_counting"
        assert r.meta["difficulty"] == COUNTING and r.meta["template"] == "Q: {input}\nA:"
        assert r.meta["sampling"] == {"temperature": 0.7, "top_k": 0, "top_p": 1.0, "max_new_tokens": 5, "k": 3}
        scores = [tasks.score("object_counting", x, target) for x in r.responses]
        assert r.meta["scores"] == scores
        # " 3" vs " 4" never tie (an integer target is never 3.5 away from both); "none" scores 0 = last
        assert r.best is None and len(r.tiers) == 3 and r.tiers[-1] == [2]
        assert r.tiers[0] == [0 if scores[0] > scores[1] else 1]
        all_scores += scores
    assert summary["mean_score"] == pytest.approx(sum(all_scores) / 21)  # the 2 skipped rows scored 0
    n_correct = sum(max(r.meta["scores"]) == 1.0 for r in rows)
    assert summary["frac_any_correct"] == pytest.approx(n_correct / 7)

    # the same call writes the same file
    again = tmp_path / "again.jsonl"
    collect(FakePolicy(), "object_counting", again, difficulty=COUNTING, num_prompts=7, k=3, temperature=0.7,
            max_new_tokens=5, batch_size=3, seed=4, progress=False)
    assert again.read_text() == out.read_text()


def test_collect_best_mode_with_noise_writes_best_of_k_rows(tmp_path):
    out = tmp_path / "best.jsonl"
    summary = collect(FakePolicy(), "object_counting", out, difficulty=COUNTING, num_prompts=6, k=3,
                      mode="best", noise=1.0, batch_size=4, progress=False)
    rows = load_comparisons(out)
    assert len(rows) == summary["rows_written"] == 4 and summary["noisy_labels"] == 4
    for r in rows:
        scores = r.meta["scores"]
        assert r.meta["noisy"] is True
        assert scores[r.best] < max(scores)  # every label is a mistake: the best is never the top score
        assert r.tiers == [[r.best], [i for i in range(3) if i != r.best]]


def test_collect_with_tiny_t5(tmp_path):
    out = tmp_path / "t5.jsonl"
    summary = collect("tiny-t5", "word_sorting", out, difficulty={"min_words": 2, "max_words": 3, "vocab_size": 30},
                      num_prompts=6, k=3, max_new_tokens=8, batch_size=6, seed=0, device="cpu", progress=False)
    assert summary["rows_written"] + summary["skipped_all_tied"] == 6
    assert 0.0 <= summary["mean_score"] <= 1.0
    assert out.is_file()
    # an untrained byte model mostly writes non-words that all score 0, so rows may be few or none
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == summary["rows_written"]
    if lines:
        for r in load_comparisons(out):
            assert REPRO_KEYS <= set(r.meta) and r.meta["policy"] == "tiny-t5" and len(r.responses) == 3


def test_resolve_model(tmp_path):
    assert resolve_model("tiny-gpt2") == {"name": "tiny-gpt2", "preset": "tiny-gpt2", "tokenizer": "byte"}
    assert resolve_model("google/flan-t5-base") == {"name": "google/flan-t5-base",
                                                    "name_or_path": "google/flan-t5-base"}
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    assert resolve_model(str(run)) == {"name": "model", "name_or_path": str(run / "model")}  # a run dir
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(UserError, match="no such model directory"):
        resolve_model(str(tmp_path / "missing"))


@pytest.mark.parametrize("argv, message", [
    (["--task", "no_such_task"], "unknown task 'no_such_task'"),
    (["--task", "word_sorting", "--difficulty", "{min_words: 2}"], "--difficulty is not valid JSON"),
    (["--task", "word_sorting", "--difficulty", '{"levels": 2}'], "unknown difficulty setting"),
    (["--task", "word_sorting", "--k", "1"], "--k must be an integer >= 2"),
    (["--task", "word_sorting", "--model", "./no/such/dir"], "no such model directory"),
])
def test_bad_input_is_one_clear_message(argv, message, tmp_path, capsys):
    if "--model" not in argv:
        argv = ["--model", "tiny-t5", *argv]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "x.jsonl"), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.slow
def test_cli_subprocess_with_a_saved_model_dir(tmp_path):
    from tests.conftest import tiny_policy

    model_dir = tmp_path / "run" / "model"
    policy = tiny_policy("tiny-gpt2")
    policy.model.save_pretrained(model_dir)
    policy.tokenizer.save_pretrained(model_dir)
    out = tmp_path / "comparisons.jsonl"
    cmd = [sys.executable, "-m", "feedback_lm.collect", "--model", str(model_dir), "--task", "word_sorting",
           "--difficulty", '{"min_words":2,"max_words":3,"vocab_size":30}', "--template", r"Q: {input}\nA:",
           "--num-prompts", "4", "--k", "2", "--mode", "best", "--max-new-tokens", "8", "--batch-size", "2",
           "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"comparison rows to {out}" in proc.stdout and "skipped (all 2 samples tied)" in proc.stdout
    assert out.is_file()
    if out.read_text().strip():
        for r in load_comparisons(out):
            assert REPRO_KEYS <= set(r.meta) and r.meta["policy"] == str(model_dir)
            assert r.prompt.endswith("\nA:")  # the shell's literal \n became a newline

    bad = subprocess.run([sys.executable, "-m", "feedback_lm.collect", "--model", "tiny-t5", "--task", "nope",
                          "--out", str(tmp_path / "bad.jsonl")],
                         check=False, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: unknown task 'nope'") and "Traceback" not in bad.stderr
