"""A reward model on HH-RLHF harmless-base with the pretrained SmolLM2-135M backbone (issue 13, item 4b).

One CLI run per seed: ``python train.py algo=reward_model model=smollm2-135m data=comparisons
data.source=hh_rlhf data.path=<shared>/hh-rlhf/harmless-base/test.jsonl.gz`` (LoRA on the attention
projections plus the reward head; the pairwise loss of InstructGPT Eq. 1 with K=2). The split is by prompt
(``data.val_fraction=0.2``, seeded with ``data.seed=0`` for every seed, so every seed sees the same
held-out prompts, disjoint from the training prompts). Reported: held-out pairwise accuracy (the share of
pairs whose chosen response gets the higher reward; chance 50 %) before (random head) and after training.
Anchors: today's tiny-t5 from scratch 57.5 % (bench/README.md); InstructGPT's reward models 72.4 % on
held-out comparisons of their own labelers, 69.6 % on held-out labelers.

    python bench/bench_smollm2_rm_hh.py --json bench/results/smollm2_rm_hh_cpu.json          # CPU size
    python bench/bench_smollm2_rm_hh.py --trainer gpu --json bench/results/smollm2_rm_hh_gpu.json
    python bench/bench_smollm2_rm_hh.py --smoke --work /tmp/rm_hh_smoke                       # plumbing
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _cli import finish, run_train
from _smollm2 import MODEL, SHARED, add_size_args, seeds, size, trainer_overrides

HH = SHARED / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"


def run_seed(seed: int, args, work: Path) -> dict:
    train_pairs, val_pairs, batch, steps = size(args, cpu=(800, 200, 4, 200), gpu=(0, 100000, 16, 400),
                                                smoke=(16, 8, 2, 4))
    run_dir = work / f"rm_s{seed}"
    overrides = ["algo=reward_model", *MODEL, "data=comparisons", "data.source=hh_rlhf", f"data.path={HH}",
                 "data.val_fraction=0.2", "data.seed=0", f"data.num_train={train_pairs}",
                 f"data.num_val={val_pairs}", f"data.batch_size={batch}", f"data.eval_batch_size={2 * batch}",
                 f"algo.lr={args.lr}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
                 f"seed={seed}", "save_model=false", "trainer.enable_progress_bar=false", *trainer_overrides(args)]
    run = run_train(overrides, run_dir, threads=None)
    metrics = json.loads((run_dir / "metrics.json").read_text()) if run["rc"] == 0 else {}
    row = {"seed": seed, **run, "train_pairs": train_pairs or "all", "steps": steps,
           "before": metrics.get("before/val/accuracy"), "after": metrics.get("val/accuracy")}
    print(f"seed {seed}: rc={run['rc']} pairwise accuracy {row['before']} -> {row['after']} "
          f"in {run['wall_seconds']:.0f}s", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_args(p, "/tmp/bench_smollm2_rm_hh")
    p.add_argument("--lr", type=float, default=2e-4, help="[PROJECT] LoRA + head")
    args = p.parse_args(argv)
    started = time.perf_counter()
    runs = [run_seed(s, args, Path(args.work)) for s in seeds(args)]
    done = [r for r in runs if r["after"] is not None]
    mean = {k: sum(r[k] for r in done) / len(done) for k in ("before", "after")} if done else {}
    print(f"held-out pairwise accuracy, mean over {len(done)} seed(s): {mean}")
    return finish({"what": "reward model on HH-RLHF harmless-base, SmolLM2-135M + LoRA (bench_smollm2_rm_hh.py)",
                   "trainer": args.trainer, "smoke": args.smoke, "mean": mean, "runs": runs},
                  started, args.json, None, lambda runs, path: None)


if __name__ == "__main__":
    main()
