"""A table of bad inputs, each through the real entry point: exit status 2, no traceback, and a message
that names the culprit (the option, the file and line, or the value).

Most rows run ``feedback_lm.run.main`` in this process on a config composed exactly as ``train.py``
composes it (Hydra's compose API), so the table stays in the quick loop; the rows that only the command
line can show (Hydra's own run directory, ``experiment=``, the printed output) start ``train.py`` in a
subprocess and are marked slow.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

# Imported before any test captures output: the loggers' handlers then write to the session's streams,
# not to a test's closed capture (which prints "--- Logging error ---").
import feedback_lm.run  # noqa: F401
from tests.conftest import REPO

# Small, and nothing slow if a row were wrongly accepted.
QUICK = ["data.num_train=16", "data.num_val=4", "data.batch_size=4", "data.eval_batch_size=4", "trainer.max_steps=1",
         "eval_before=false", "eval_after=false", "save_model=false", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false"]
PAYLOAD_MARKER = "payload_ran"


class Payload:
    """Unpickling this writes a marker file: a checkpoint loader that runs it executes a user's file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """The bad files the table points at."""
    d = tmp_path_factory.mktemp("bad")
    good = {"prompt": "Q: a b\nA:", "response": " a b"}
    (d / "afile").write_text("a file, not a directory")
    (d / "binary.jsonl").write_bytes(b"\x00\x01\x02\x03\xff\xfe" * 50)
    (d / "latin1.jsonl").write_bytes(json.dumps(good).encode() + b'\n{"prompt": "caf\xe9", "response": "x"}\n')
    (d / "empty_response.jsonl").write_text(json.dumps({"prompt": "p", "response": ""}) + "\n")
    (d / "blank_prompt.jsonl").write_text(json.dumps({"prompt": "   ", "response": "r"}) + "\n")
    (d / "null_target.jsonl").write_text(json.dumps({**good, "target": None}) + "\n")
    (d / "numbers.jsonl").write_text(json.dumps({"prompt": 1, "response": 2}) + "\n")
    (d / "not_json.jsonl").write_text(json.dumps(good) + "\n{not json\n")
    (d / "list_row.jsonl").write_text("[1, 2]\n")
    (d / "no_response.jsonl").write_text(json.dumps({"prompt": "p"}) + "\n")
    (d / "empty.jsonl").write_text("\n\n")
    (d / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (d / "not_bbh.json").write_text(json.dumps({"rows": []}))
    (d / "empty_target.json").write_text(json.dumps({"examples": [{"input": "q", "target": ""}]}))
    (d / "same.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "x", "rejected": "x"}) + "\n")
    (d / "dup.jsonl").write_text(json.dumps({"prompt": "p", "responses": ["a", "b", "a"], "ranking": [0, 1, 2]}) + "\n")
    (d / "cbinary.jsonl").write_bytes(b"\x00" * 64)
    (d / "cshape.jsonl").write_text(json.dumps({"prompt": "p", "rank": [0, 1], "responses": ["a", "b"]}) + "\n")
    (d / "cbest.jsonl").write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "best": 5}) + "\n")
    (d / "ctied.jsonl").write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "ranking": [[0, 1]]}) + "\n")
    (d / "empty.ckpt").write_bytes(b"")
    (d / "truncated.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    (d / "random.ckpt").write_bytes(bytes(range(256)) * 16)
    (d / "foreign.ckpt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with open(d / "evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": Payload(str(d / PAYLOAD_MARKER))}, f)
    (d / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (d / "empty_model").mkdir()
    _corrupt_model(d / "corrupt_model")
    _corrupt_model(d / "corrupt_rm")
    (d / "corrupt_rm" / "reward_head.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    return d


def _corrupt_model(path: Path) -> None:
    from feedback_lm.policy import Policy

    Policy.from_config({"name": "tiny-gpt2", "preset": "tiny-gpt2", "tokenizer": "byte"}).model.save_pretrained(path)
    weights = path / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])  # the header length: absurd


def _ids(rows):
    return [r[0] for r in rows]


# (id, overrides, needles that must all be in the message)
CONFIG_ROWS = [
    ("lr-not-a-number", ["algo.lr=abc"], ["algo.lr='abc'", "expected float"]),
    ("lr-a-list", ["algo.lr=[1]"], ["algo.lr=[1]"]),
    ("lr-negative", ["algo.lr=-1"], ["algo.lr=-1", "> 0"]),
    ("lr-zero", ["algo.lr=0"], ["algo.lr=0"]),
    ("seed-not-an-int", ["seed=abc"], ["seed='abc'"]),
    ("seed-a-float", ["seed=1.5"], ["seed=1.5"]),
    ("max-steps-float", ["trainer.max_steps=2.5"], ["trainer.max_steps=2.5", "expected int"]),
    ("max-steps-text", ["trainer.max_steps=abc"], ["trainer.max_steps='abc'"]),
    ("bool-garbage-trainer", ["trainer.enable_progress_bar=maybe"], ["trainer.enable_progress_bar='maybe'"]),
    ("bool-garbage-run", ["eval_before=maybe"], ["eval_before='maybe'"]),
    ("bool-an-int", ["save_model=2"], ["save_model=2"]),
    ("precision-unknown", ["trainer.precision=float17"], ["trainer.precision='float17'"]),
    ("trainer-unknown-key", ["+trainer.max_stepz=3"], ["trainer.max_stepz is not a setting"]),
    ("logger-unknown-key", ["+logger.csv.bogus=1"], ["logger.csv.bogus is not a setting"]),
    ("algo-unknown-key", ["+algo.learning_rate=1"], ["algo.learning_rate is not a setting of plugins.sft.SFT"]),
    ("batch-size-zero", ["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    ("batch-size-negative", ["data.batch_size=-4"], ["data.batch_size=-4"]),
    ("eval-batch-size-zero", ["data.eval_batch_size=0"], ["data.eval_batch_size=0"]),
    ("num-val-negative", ["data.num_val=-1"], ["data.num_val=-1"]),
    ("val-fraction-above-one", ["data.val_fraction=1.5"], ["data.val_fraction=1.5"]),
    ("template-without-input", ["data.template=hello"], ["data.template='hello'", "{input}"]),
    ("data-source-unknown", ["data.source=nope"], ["data.source 'nope'"]),
    ("data-task-unknown", ["data.task=no_such_task"], ["no_such_task"]),
    ("jsonl-without-path", ["data=jsonl"], ["data.path"]),
    ("checkpoint-every-negative", ["checkpoint_every_n_steps=-1"], ["checkpoint_every_n_steps=-1"]),
    ("checkpoint-every-text", ["checkpoint_every_n_steps=abc"], ["checkpoint_every_n_steps='abc'"]),
    ("dtype-unknown", ["model.dtype=float17"], ["model.dtype='float17'"]),
    ("max-length-zero", ["model.max_length=0"], ["model.max_length=0"]),
    ("override-size-negative", ["+model.overrides.d_model=-8"], ["model.overrides.d_model=-8"]),
    ("dropout-above-one", ["model.dropout=1.5"], ["model.dropout=1.5"]),
    ("lora-rank-negative", ["model.lora.r=-1"], ["model.lora.r=-1"]),
    ("lora-target-missing", ["model=tiny-gpt2", "model.lora.r=4", "model.lora.target_modules=[no_such_layer]"],
     ["model.lora.target_modules=['no_such_layer']", "c_attn"]),
    ("model-preset-unknown", ["model.preset=huge"], ["model preset 'huge'"]),
    ("schedule-unknown", ["algo.schedule=exp"], ["algo.schedule='exp'", "cosine"]),
    ("normalize-unknown", ["algo.normalize=bogus"], ["algo.normalize='bogus'"]),
    ("warmup-negative", ["algo.warmup_steps=-5"], ["algo.warmup_steps=-5"]),
    ("min-lr-ratio-above-one", ["algo.min_lr_ratio=2"], ["algo.min_lr_ratio=2"]),
    ("max-new-tokens-zero", ["algo.max_new_tokens=0"], ["algo.max_new_tokens=0"]),
    ("weight-decay-negative", ["algo.weight_decay=-1"], ["algo.weight_decay=-1"]),
    ("betas-one-value", ["algo.betas=[0.9]"], ["algo.betas=[0.9]", "tuple[float, float]"]),
    ("hir-temperature-zero", ["algo=hir", "algo.temperature=0"], ["algo.temperature=0"]),
    ("hir-label-smoothing-one", ["algo=hir", "algo.label_smoothing=1"], ["algo.label_smoothing=1"]),
    ("hir-batch-size-zero", ["algo=hir", "algo.batch_size=0"], ["algo.batch_size=0"]),
    ("hir-dedupe-unknown-type", ["algo=hir", "algo.iterations=many"], ["algo.iterations='many'"]),
    ("self-correct-num-samples-zero", ["algo=self_correct", "algo.num_samples=0"], ["algo.num_samples=0"]),
    ("self-correct-schedule", ["algo=self_correct", "algo.schedule=exp"], ["algo.schedule='exp'"]),
    ("self-correct-lr-negative", ["algo=self_correct", "algo.lr=-1"], ["algo.lr=-1"]),
    ("reward-model-without-path", ["algo=ppo", "reward=model"], ["reward.path must be set"]),
    ("sft-on-comparisons", ["algo=sft", "data=comparisons"], ["algo=sft needs prompt/target task data", "data=word_sorting"]),
    ("hir-on-comparisons", ["algo=hir", "data=comparisons"], ["algo=hir needs", "data=word_sorting"]),
    ("self-correct-on-comparisons", ["algo=self_correct", "data=comparisons"], ["algo=self_correct needs"]),
    ("reward-model-on-task-data", ["algo=reward_model"], ["algo=reward_model needs", "data=comparisons"]),
    ("dpo-on-task-data", ["algo=dpo"], ["algo=dpo needs", "data=comparisons"]),
    ("ppo-on-comparisons", ["algo=ppo", "data=comparisons"], ["algo=ppo needs", "data=word_sorting"]),
    ("rloo-on-comparisons", ["algo=rloo", "data=comparisons"], ["algo=rloo needs"]),
    ("grpo-on-comparisons", ["algo=grpo", "data=comparisons"], ["algo=grpo needs"]),
    ("ppo-epochs-zero", ["algo=ppo", "algo.ppo_epochs=0"], ["algo.ppo_epochs=0"]),
    ("ppo-minibatch-zero", ["algo=ppo", "algo.minibatch_size=0"], ["algo.minibatch_size=0"]),
    ("ppo-kl-coef-negative", ["algo=ppo", "algo.kl_coef=-1"], ["algo.kl_coef=-1"]),
    ("ppo-top-p-zero", ["algo=ppo", "algo.top_p=0"], ["algo.top_p=0"]),
    ("dpo-beta-zero", ["algo=dpo", "data=comparisons", "algo.beta=0"], ["algo.beta=0"]),
    ("rloo-k-one", ["algo=rloo", "algo.k=1"], ["algo.k=1"]),
    ("grpo-group-one", ["algo=grpo", "algo.group_size=1"], ["algo.group_size=1"]),
    ("reward-head-corrupt", ["algo=ppo", "reward=model", "reward.path={bad}/corrupt_rm", "algo.max_new_tokens=4"],
     ["{bad}/corrupt_rm/reward_head.safetensors is corrupt"]),
    ("missing-resume-checkpoint", ["ckpt_path={bad}/nope.ckpt"], ["ckpt_path={bad}/nope.ckpt does not exist"]),
    ("run-dir-under-a-file", ["run_dir={bad}/afile/run"], ["run_dir={bad}/afile/run cannot be created"]),
]

JSONL = ["data=jsonl"]
CMP = ["algo=reward_model", "data=comparisons", "data.source=jsonl"]
FILE_ROWS = [
    ("jsonl-binary", [*JSONL, "data.path={bad}/binary.jsonl"], ["binary.jsonl:1", "binary file"]),
    ("jsonl-latin1", [*JSONL, "data.path={bad}/latin1.jsonl"], ["latin1.jsonl:2", "not UTF-8"]),
    ("jsonl-empty-response", [*JSONL, "data.path={bad}/empty_response.jsonl"], ["empty_response.jsonl:1", "'response'"]),
    ("jsonl-blank-prompt", [*JSONL, "data.path={bad}/blank_prompt.jsonl"], ["blank_prompt.jsonl:1", "'prompt'"]),
    ("jsonl-null-target", [*JSONL, "data.path={bad}/null_target.jsonl"], ["null_target.jsonl:1", "'target'", "null"]),
    ("jsonl-numbers", [*JSONL, "data.path={bad}/numbers.jsonl"], ["numbers.jsonl:1", "'prompt'"]),
    ("jsonl-not-json", [*JSONL, "data.path={bad}/not_json.jsonl"], ["not_json.jsonl:2", "not valid JSON"]),
    ("jsonl-list-row", [*JSONL, "data.path={bad}/list_row.jsonl"], ["list_row.jsonl:1", "JSON object"]),
    ("jsonl-missing-field", [*JSONL, "data.path={bad}/no_response.jsonl"], ["no_response.jsonl:1", "'response'"]),
    ("jsonl-empty-file", [*JSONL, "data.path={bad}/empty.jsonl"], ["empty.jsonl has no rows"]),
    ("jsonl-missing-file", [*JSONL, "data.path={bad}/nope.jsonl"], ["nope.jsonl"]),
    ("jsonl-bad-val-file", [*JSONL, "data.path={bad}/latin1.jsonl", "data.val_path={bad}/binary.jsonl"],
     ["latin1.jsonl:2"]),
    ("bbh-binary", ["data=bbh", "data.path={bad}/binary.json"], ["binary.json", "not valid JSON"]),
    ("bbh-wrong-shape", ["data=bbh", "data.path={bad}/not_bbh.json"], ["not_bbh.json", "'examples'"]),
    ("bbh-empty-target", ["data=bbh", "data.path={bad}/empty_target.json"], ["empty_target.json", "examples[0]"]),
    ("bbh-missing-file", ["data=bbh", "data.path={bad}/nope.json"], ["nope.json"]),
    ("comparisons-chosen-equals-rejected", [*CMP, "data.path={bad}/same.jsonl"],
     ["same.jsonl:1", "chosen and rejected are the same text", "data.skip_degenerate=true"]),
    ("comparisons-duplicates-ranked-apart", [*CMP, "data.path={bad}/dup.jsonl"], ["dup.jsonl:1", "responses 0 and 2"]),
    ("comparisons-binary", [*CMP, "data.path={bad}/cbinary.jsonl"], ["cbinary.jsonl:1", "binary file"]),
    ("comparisons-unknown-field", [*CMP, "data.path={bad}/cshape.jsonl"], ["cshape.jsonl:1", "accepted shapes"]),
    ("comparisons-best-out-of-range", [*CMP, "data.path={bad}/cbest.jsonl"], ["cbest.jsonl:1", '"best"']),
    ("comparisons-all-tied", [*CMP, "data.path={bad}/ctied.jsonl"], ["ctied.jsonl:1", "ties every response"]),
    ("comparisons-k-one", ["algo=reward_model", "data=comparisons", "data.k=1"], ["data.k=1"]),
    ("resume-empty-checkpoint", ["ckpt_path={bad}/empty.ckpt"], ["ckpt_path={bad}/empty.ckpt is not a checkpoint"]),
    ("resume-truncated-checkpoint", ["ckpt_path={bad}/truncated.ckpt"], ["ckpt_path={bad}/truncated.ckpt"]),
    ("resume-random-bytes", ["ckpt_path={bad}/random.ckpt"], ["ckpt_path={bad}/random.ckpt"]),
    ("resume-foreign-pickle", ["ckpt_path={bad}/foreign.ckpt"], ["ckpt_path={bad}/foreign.ckpt"]),
    ("resume-code-in-pickle", ["ckpt_path={bad}/evil.ckpt"], ["ckpt_path={bad}/evil.ckpt", "refused"]),
    ("init-from-random-bytes", ["algo=reward_model", "data=comparisons", "algo.init_from={bad}/random.ckpt"],
     ["algo.init_from={bad}/random.ckpt"]),
    ("init-from-missing", ["algo=reward_model", "data=comparisons", "algo.init_from={bad}/nope.ckpt"],
     ["algo.init_from={bad}/nope.ckpt"]),
    ("generator-path-code-in-pickle", ["algo=self_correct", "algo.generator_path={bad}/evil.ckpt"],
     ["algo.generator_path={bad}/evil.ckpt"]),
    ("model-dir-empty", ["model.preset=null", "model.tokenizer=byte", "model.name_or_path={bad}/empty_model"],
     ["{bad}/empty_model"]),
    ("model-weights-corrupt", ["model=tiny-gpt2", "model.preset=null", "model.tokenizer=byte",
                               "model.name_or_path={bad}/corrupt_model"], ["{bad}/corrupt_model", "corrupt"]),
    ("ptx-text-binary", ["algo=ppo_ptx", "algo.ptx_data={bad}/binary.txt", "algo.max_new_tokens=4"],
     ["algo.ptx_data={bad}/binary.txt", "binary file"]),
]


def _run_in_process(overrides: list[str], bad: Path, tmp_path: Path, capsys) -> str:
    from feedback_lm.run import main
    from feedback_lm.testing import compose

    filled = [o.replace("{bad}", str(bad)) for o in overrides]
    if not any(o.startswith("run_dir=") for o in filled):
        filled.append(f"run_dir={tmp_path / 'run'}")
    cfg = compose([*QUICK, *filled])
    with pytest.raises(SystemExit) as exit_info:
        main(cfg)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, f"exit {exit_info.value.code}\n{err[-3000:]}"
    return err


@pytest.mark.parametrize("overrides, needles", [r[1:] for r in CONFIG_ROWS + FILE_ROWS],
                         ids=_ids(CONFIG_ROWS + FILE_ROWS))
def test_bad_input_gives_one_message(overrides, needles, bad, tmp_path, capsys):
    err = _run_in_process(overrides, bad, tmp_path, capsys)
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, f"expected one 'error:' line:\n{err[-3000:]}"
    for needle in needles:
        needle = needle.replace("{bad}", str(bad))
        assert needle in message[0], f"{needle!r} not in:\n{message[0]}"
    assert not (bad / PAYLOAD_MARKER).exists(), "a checkpoint's pickle payload ran"


def test_collect_out_is_checked_before_sampling(bad, capsys):
    from feedback_lm.collect import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "tiny-t5", "--task", "word_sorting", "--num-prompts", "100000", "--out", str(bad)])
    assert exit_info.value.code == 2
    assert f"--out {bad} is a directory" in capsys.readouterr().err


# Rows only the command line can show: Hydra's own run directory, experiment= and the printed output.
CLI_ROWS = [
    ("experiment-unknown", ["experiment=nope"], ["experiment=nope does not exist", "instructgpt_tiny"]),
    ("hydra-run-dir-under-a-file", ["hydra.run.dir={bad}/afile/run"], ["hydra.run.dir={bad}/afile/run cannot be created"]),
    ("cli-lr-not-a-number", ["algo.lr=abc"], ["algo.lr='abc'"]),
    ("cli-binary-data", ["data=jsonl", "data.path={bad}/binary.jsonl"], ["binary.jsonl:1"]),
    ("cli-corrupt-checkpoint", ["ckpt_path={bad}/random.ckpt"], ["ckpt_path={bad}/random.ckpt"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides, needles", [r[1:] for r in CLI_ROWS], ids=_ids(CLI_ROWS))
def test_bad_input_through_the_command_line(overrides, needles, bad, tmp_path):
    args = [o.replace("{bad}", str(bad)) for o in overrides]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *QUICK, *args], cwd=tmp_path, capture_output=True,
                          check=False, text=True, timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                                       "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)})
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle.replace("{bad}", str(bad)) in proc.stderr, proc.stderr[-3000:]
