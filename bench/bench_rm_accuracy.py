"""Reward-model accuracy on simulated labels of the default task (issue 3's target: >= 85% held-out pairwise).

The whole pipeline through the project's own command lines, from its defaults, one stage after the other:

1. SFT: ``python train.py`` (the embedded default: tiny-t5 on generated word_sorting), unless ``--sft``
   names an existing SFT model directory.
2. Labels: ``python -m feedback_lm.collect`` samples K=4 responses per prompt from the SFT model and the
   simulated labeler (the task verifier's graded score, ``--noise``) ranks them: training prompts with
   ``--seed 1``, held-out prompts with ``--seed 0``. Held-out rows whose prompt text also occurs in the
   training file are dropped, so the held-out prompts are disjoint from the training prompts.
3. Reward model: ``python train.py algo=reward_model data=comparisons data.source=jsonl ...
   algo.init_from=<SFT model>`` (ranking loss; by default ``algo.pooling=mean algo.lr=1e-4``, 6 epochs).
4. Held-out accuracy of the saved reward model by kind of pair: ``correct_vs_wrong`` (the winner is a
   correct answer), ``wrong_vs_wrong`` (both wrong, ordered by the graded partial credit), ``all``; also
   on ``novel`` rows, whose word set occurs in no training prompt (the 30-word task repeats word sets), and
   top-1 (the highest reward goes to a best-tier response).

Usage::

    python bench/bench_rm_accuracy.py --work /tmp/rm_acc                 # everything (CPU: hours)
    python bench/bench_rm_accuracy.py --work /tmp/rm_acc --device cuda   # minutes on one GPU
    python bench/bench_rm_accuracy.py --work /tmp/rm_acc --sft outputs/DATE/TIME/model
    python bench/bench_rm_accuracy.py --work /tmp/rm_smoke --smoke --sft outputs/DATE/TIME/model  # plumbing

Prints one JSON summary (also ``<work>/summary.json``): the sizes, every command line, the wall time of
each stage and the accuracies. Results are recorded in bench/README.md (reward-model accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIFFICULTY = '{"min_words": 2, "max_words": 3, "vocab_size": 30}'  # conf/data/word_sorting.yaml


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` from the repository root, output to ``log``; returns the wall time, raises on failure."""
    print("$ " + shlex.join(cmd), flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, check=False, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        sys.exit(f"failed ({proc.returncode}); see {log}:\n{tail}")
    return round(time.perf_counter() - t, 1)


def word_set(prompt: str) -> frozenset:
    return frozenset(prompt.split("List: ")[1].split("\n")[0].split())


def heldout(train_path: Path, val_path: Path, out: Path) -> dict:
    """Write the rows of ``val_path`` whose prompt is not in ``train_path`` to ``out``."""
    from feedback_lm.data.comparisons import load_comparisons, write_comparisons

    train, val = load_comparisons(train_path), load_comparisons(val_path)
    seen = {c.prompt for c in train}
    kept = [c for c in val if c.prompt not in seen]
    write_comparisons(out, kept)
    return {"train_rows": len(train), "val_rows": len(val), "heldout_rows": len(kept),
            "dropped_prompt_in_train": len(val) - len(kept)}


def accuracy_by_kind(model_dir: Path, train_path: Path, heldout_path: Path, device: str) -> dict:
    """Pairwise accuracy of the saved reward model on the held-out rows, by kind of pair."""
    import torch

    from feedback_lm.data.comparisons import load_comparisons
    from plugins.reward_model import load_reward_model, ranking_pairs

    rm = load_reward_model(str(model_dir), device=device)
    seen_sets = {word_set(c.prompt) for c in load_comparisons(train_path)}
    rows = load_comparisons(heldout_path)
    counts = {k: [0, 0] for k in ("all", "correct_vs_wrong", "wrong_vs_wrong", "novel", "top1")}
    with torch.no_grad():
        for i in range(0, len(rows), 64):
            batch = rows[i:i + 64]
            r = rm.batch_rewards(batch)
            for b, c in enumerate(batch):
                scores = c.meta["scores"]
                novel = word_set(c.prompt) not in seen_sets
                for w, lo in ranking_pairs(c.tiers):
                    ok = int(r[b, w] > r[b, lo])
                    kind = "correct_vs_wrong" if scores[w] == 1.0 else "wrong_vs_wrong"
                    for key in ("all", kind) + (("novel",) if novel else ()):
                        counts[key][0] += ok
                        counts[key][1] += 1
                counts["top1"][0] += int(int(r[b, : len(c.responses)].argmax()) in c.tiers[0])
                counts["top1"][1] += 1
    return {k: {"accuracy": round(v[0] / v[1], 4) if v[1] else None, "n": v[1]} for k, v in counts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="directory for every file this writes (not the repo)")
    p.add_argument("--sft", default=None, help="an existing SFT model directory (skips stage 1)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--train-prompts", type=int, default=16000, help="prompts sampled for training labels")
    p.add_argument("--val-prompts", type=int, default=3000, help="prompts sampled for held-out labels")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--noise", type=float, default=0.0, help="simulated labeler's mistake probability")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--pooling", default="mean", choices=("last", "mean"))
    p.add_argument("--batch-size", type=int, default=16, help="prompts per reward-model batch")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes and few steps: checks the plumbing only. Pass --sft too: the 20-step SFT "
                        "model of a smoke run samples no comparison pairs, so the run stops after collection")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    trainer = ["trainer=gpu", "trainer.precision=32-true"] if args.device == "cuda" else ["trainer=cpu"]
    summary: dict = {"args": vars(args), "commands": {}, "wall_s": {}}
    t_all = time.perf_counter()

    # 1. SFT (the embedded default)
    if args.sft:
        sft = Path(args.sft).resolve()
    else:
        cmd = [py, "train.py", f"hydra.run.dir={work}/sft", f"seed={args.seed}", *trainer]
        if args.smoke:
            cmd += ["trainer.max_steps=20", "trainer.val_check_interval=10", "data.num_train=200", "data.num_val=20"]
        summary["commands"]["sft"] = shlex.join(cmd)
        summary["wall_s"]["sft"] = run(cmd, work / "sft.log")
        sft = work / "sft" / "model"
        summary["sft_metrics"] = json.loads((work / "sft" / "metrics.json").read_text())
    summary["sft_model"] = str(sft)

    # 2. labels: training prompts (seed 1) and held-out prompts (seed 0), then drop shared prompts
    n_train, n_val = (64, 32) if args.smoke else (args.train_prompts, args.val_prompts)
    for name, n, seed in (("train", n_train, 1), ("val_all", n_val, 0)):
        cmd = [py, "-m", "feedback_lm.collect", "--model", str(sft), "--task", "word_sorting",
               "--difficulty", DIFFICULTY, "--num-prompts", str(n), "--k", str(args.k), "--mode", "rank",
               "--noise", str(args.noise), "--max-new-tokens", "32",
               "--batch-size", "256" if args.device == "cuda" else "32",
               "--seed", str(seed), "--device", args.device, "--no-progress", "--out", str(work / f"{name}.jsonl")]
        summary["commands"][f"collect_{name}"] = shlex.join(cmd)
        summary["wall_s"][f"collect_{name}"] = run(cmd, work / f"collect_{name}.log")
        summary[f"collect_{name}"] = (work / f"collect_{name}.log").read_text().strip().splitlines()[-3:]
    for name in ("train", "val_all"):
        if not (work / f"{name}.jsonl").read_text().strip():
            sys.exit(f"{name}: no comparison pairs (every prompt's samples tied, see {work}/collect_{name}.log); "
                     f"the SFT model {sft} has not learned the task (with --smoke, pass --sft <trained model>)")
    summary["data"] = heldout(work / "train.jsonl", work / "val_all.jsonl", work / "val_heldout.jsonl")

    # 3. the reward model, initialised from the SFT model
    steps_per_epoch = max(1, summary["data"]["train_rows"] // args.batch_size)
    cmd = [py, "train.py", "algo=reward_model", "data=comparisons", "data.source=jsonl",
           f"data.path={work}/train.jsonl", f"data.val_path={work}/val_heldout.jsonl", "data.num_train=0",
           "data.num_val=1000000", f"data.batch_size={args.batch_size}", f"algo.init_from={sft}",
           f"algo.pooling={args.pooling}", f"algo.lr={args.lr}", f"seed={args.seed}", *trainer,
           "trainer.max_steps=" + ("4" if args.smoke else "-1"), f"trainer.max_epochs={args.epochs}",
           f"trainer.val_check_interval={steps_per_epoch}", f"hydra.run.dir={work}/rm"]
    summary["commands"]["reward_model"] = shlex.join(cmd)
    summary["wall_s"]["reward_model"] = run(cmd, work / "rm.log")
    summary["rm_metrics"] = json.loads((work / "rm" / "metrics.json").read_text())

    # 4. held-out accuracy by kind of pair
    t = time.perf_counter()
    summary["heldout"] = accuracy_by_kind(work / "rm" / "model", work / "train.jsonl",
                                          work / "val_heldout.jsonl", args.device)
    summary["wall_s"]["evaluate"] = round(time.perf_counter() - t, 1)
    summary["wall_s"]["total"] = round(time.perf_counter() - t_all, 1)
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    h = summary["heldout"]
    acc = h["all"]["accuracy"]
    print(f"held-out pairwise accuracy: {acc} ({h['all']['n']} pairs; correct vs wrong "
          f"{h['correct_vs_wrong']['accuracy']}, wrong vs wrong {h['wrong_vs_wrong']['accuracy']}, novel word sets "
          f"{h['novel']['accuracy']}, top-1 {h['top1']['accuracy']}); target 0.85: "
          f"{'met' if acc is not None and acc >= 0.85 else 'NOT met'}")


if __name__ == "__main__":
    main()
