"""``python -m feedback_lm.evaluate`` end to end: tiny runs trained through the CLI, a reward-model judge,
a pairwise human-judge campaign labeled through the store, and the errors a user can cause."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from feedback_lm.evaluate import format_estimate
from tests.conftest import REPO
from tests.integration.test_cli import QUICK, fails_clearly, ok, train

FAST = ["--num-prompts", "6", "--max-new-tokens", "8", "--bootstrap", "100", "--batch-size", "6"]


def evaluate(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "feedback_lm.evaluate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A 3-step SFT run and a 2-step reward model started from it (tiny-t5)."""
    root = tmp_path_factory.mktemp("eval_runs")
    sft, rm = root / "sft", root / "rm"
    ok(train("algo=sft", "trainer.max_steps=3", f"hydra.run.dir={sft}", *QUICK, cwd=root))
    ok(train("algo=reward_model", "data=comparisons", "data.num_train=16", "data.num_val=8", "data.batch_size=4",
             f"algo.init_from={sft}/model", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
             f"hydra.run.dir={rm}", cwd=root))
    return {"sft": sft, "rm": rm}


@pytest.mark.slow
def test_evaluate_runs_against_the_untrained_model_with_a_judge_and_people(runs, tmp_path):
    out, camp = tmp_path / "eval", tmp_path / "campaign"
    proc = ok(evaluate(str(runs["sft"]), "--baseline", "tiny-t5", "--judge", str(runs["rm"] / "model"),
                       "--out", str(out), "--campaign", str(camp), *FAST, cwd=tmp_path))
    result = json.loads((out / "eval.json").read_text())
    assert result["baseline"] == "tiny-t5" and set(result["runs"]) == {"tiny-t5", "sft"}
    assert result["prompts"]["n"] == 6 and "held-out set of" in result["prompts"]["source"]  # the run's own
    base, sft = result["runs"]["tiny-t5"]["metrics"], result["runs"]["sft"]["metrics"]
    for mode in ("greedy", "sampled"):
        for key in ("exact_match", "score", "rouge1", "rouge2", "rougeL", "dist1", "dist2", "length", "copy",
                    "ppl_baseline", "rm_score", "rm_win_rate"):
            est = sft[f"{mode}/{key}"]
            assert est["n"] == 6 and est["ci"][0] <= est["value"] <= est["ci"][1], (mode, key, est)
        assert base[f"{mode}/rm_win_rate"]["value"] == 0.5   # against itself: every prompt a tie
    assert base["sampled/kl"]["value"] == 0.0 and "greedy/kl" not in sft and "sampled/kl" in sft
    assert (out / "plots" / "rm_win_rate.png").is_file() and (out / "plots" / "exact_match.png").is_file()
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and set(rows[0]["responses"]) == {"tiny-t5", "sft"}
    assert "sampled/rm_win_rate" in proc.stdout

    # people as judges: label every pairwise item "sft better", then `label stats` prints the win rate
    assert _label_all(camp, prefer="sft") == 6
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    stats = ok(subprocess.run([sys.executable, "-m", "feedback_lm.label", "stats", str(camp)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120, check=False))
    assert "human win rate of sft against tiny-t5: 1.000 [1.000, 1.000] (6 items, 6 labels" in stats.stdout


def _label_all(campaign: Path, prefer: str) -> int:
    """Label every item of a pairwise campaign as one person who always ranks ``prefer``'s response first."""
    from feedback_lm.label.store import open_campaign

    store = open_campaign(campaign)
    token = store.add_labeler("bob")
    labeler_id, _ = store.labeler_for_token(token)
    n = 0
    while (a := store.next_item(labeler_id)) is not None:
        runs = _item_runs(store, a.item_id)
        best = runs.index(prefer)
        store.submit(labeler_id, a.id, {"idempotency_key": f"key-{a.id:08d}", "ranking": [best, 1 - best]})
        n += 1
    store.close()
    return n


def _item_runs(store, item_id: int) -> list[str]:
    with store.db.transaction(write=False) as cur:
        meta = cur.execute("SELECT meta FROM items WHERE id = ?", (item_id,)).one()["meta"]
    return json.loads(meta)["pairwise"]["runs"]


# ------------------------------------------------------------------------------------------- bad input
def test_run_directory_without_model(tmp_path):
    (tmp_path / "run").mkdir()
    proc = evaluate(str(tmp_path / "run"), "--data", "word_sorting", *FAST, cwd=tmp_path)
    fails_clearly(proc, "no model/ in this run directory")
    assert proc.returncode == 2


def test_empty_prompt_set(tmp_path):
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("\n")
    err = fails_clearly(evaluate("tiny-t5", "--data", str(empty), *FAST, cwd=tmp_path), str(empty))
    assert "no rows" in err or "empty" in err
    fails_clearly(evaluate("tiny-t5", "--data", "word_sorting", "--num-prompts", "0", cwd=tmp_path),
                  "is empty: nothing to evaluate on")


def test_a_judge_that_is_not_a_reward_model(tmp_path):
    (tmp_path / "not_rm").mkdir()
    proc = evaluate("tiny-t5", "--data", "word_sorting", "--judge", str(tmp_path / "not_rm"), *FAST, cwd=tmp_path)
    fails_clearly(proc, "is not a reward model")
    assert proc.returncode == 2
    fails_clearly(evaluate("tiny-t5", "--data", "word_sorting", "--judge", str(tmp_path / "nope"), *FAST,
                           cwd=tmp_path), "--judge", "no such directory")


def test_no_prompt_set_for_presets(tmp_path):
    fails_clearly(evaluate("tiny-t5", *FAST, cwd=tmp_path), "give --data")


def _word_level_model(directory: Path) -> None:
    """A tiny GPT-2 with its own 6-word tokenizer: a vocabulary unlike the byte tokenizer's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[EOS]": 1, "[UNK]": 2, "Q:": 3, "A:": 4, "sort": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")
    fast.save_pretrained(directory)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, pad_token_id=0,
                               eos_token_id=1, bos_token_id=1)).save_pretrained(directory)


def test_different_tokenizers_generate_with_their_own_and_skip_kl(tmp_path):
    _word_level_model(tmp_path / "words")
    out = tmp_path / "eval"
    proc = ok(evaluate("tiny-t5", str(tmp_path / "words"), "--data", "word_sorting", "--out", str(out), *FAST,
                       cwd=tmp_path))
    result = json.loads((out / "eval.json").read_text())
    words = result["runs"]["words"]
    assert "vocabularies differ in size (6 vs" in words["skipped"]["kl"]
    assert "sampled/kl" not in words["metrics"] and "sampled/dist1" in words["metrics"]
    assert "kl skipped (not computed against tiny-t5: vocabularies differ" in proc.stdout


PIPELINE = """# @package _global_
pipeline:
  - name: base
    overrides: [algo=sft, trainer.max_steps=1]
  - name: sft
    overrides: [algo=sft, trainer.max_steps=3]
summary:
  title: tiny eval pipeline
  evaluate: {runs: [sft], baseline: base, num_prompts: 4, max_new_tokens: 8, n_boot: 50}
  rows: [[SFT exact match, sft, "eval:greedy/exact_match"], [SFT KL to base, sft, "eval:sampled/kl"],
         [SFT val accuracy, sft, val/accuracy]]
"""


@pytest.mark.slow
def test_pipeline_summary_rows_come_from_the_evaluation(tmp_path):
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "eval_pipe.yaml").write_text(PIPELINE)
    run = tmp_path / "run"
    proc = ok(train("--config-dir", str(tmp_path / "conf"), "experiment=eval_pipe", *QUICK, f"hydra.run.dir={run}",
                    cwd=tmp_path, timeout=900))
    results = json.loads((run / "pipeline.json").read_text())
    evaluation = json.loads((run / "eval" / "eval.json").read_text())
    assert results["eval"]["baseline"] == evaluation["baseline"] == "base"
    kl = evaluation["runs"]["sft"]["metrics"]["sampled/kl"]
    line = next(ln for ln in proc.stdout.splitlines() if "SFT KL to base" in ln)
    # after: sft; before: base (KL 0 to itself). The estimate is a mean over 4 sampled responses: the KL of two
    # nearly equal models is positive in expectation, but one 4-sample estimate can have either sign
    assert format_estimate(kl) in line and kl["value"] != 0 and kl["ci"][0] <= kl["value"] <= kl["ci"][1]
    assert "0 [0, 0]" in line
