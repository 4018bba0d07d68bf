"""The HIR paper's table on SmolLM2-135M-Instruct and real BBH tasks (issue 13, item 4a).

For each task (real BIG-Bench Hard files, ``<shared>/bbh/<task>.json``, the seeded 80/20 split of
``data=bbh``) and seed, one CLI run per training arm, all from the instruct model as it comes (LoRA):

- **none**: the instruct model untouched: every run's ``before/val/accuracy`` (the same held-out rows, the
  same input), reported once;
- **sft**: ``algo=sft`` on the gold answers (uses gold labels: a reference, not a feedback method);
- **ppo**: ``algo=ppo reward=verifier`` (the task verifier's graded score, adaptive KL);
- **hir**: ``algo=hir`` (hindsight relabeling of its own samples, binary correct/wrong feedback).

Equal budgets: every arm gets the same wall-clock training time (``trainer.max_time``) and step cap.
Every arm sees the same input, HIR's template ``"Solve the question with correct answer.\\n\\nQ: {input}\\nA:"``
(SFT and PPO get it through ``data.template``), and is scored by greedy exact match on the held-out 20 %.
Anchor: the paper's FLAN-T5-large 12-task averages: no training 26.8, PPO 34.7, HIR 67.3.

    python bench/bench_smollm2_hir_table.py --json bench/results/smollm2_hir_table_cpu.json    # CPU size
    python bench/bench_smollm2_hir_table.py --trainer gpu --json bench/results/smollm2_hir_table_gpu.json
    python bench/bench_smollm2_hir_table.py --smoke --work /tmp/hir_smoke                       # plumbing

``--start sft`` asks the next question when the instruct model cannot answer in the bare format (it scores
0 %, so the verifier gives PPO no signal and HIR no correct sample): first the ``sft`` arm (saved), then PPO
and HIR each for the same budget from that SFT model, so the "none" column is the SFT model and the other
columns say what feedback adds to it:

    python bench/bench_smollm2_hir_table.py --start sft --parallel 2 --json bench/results/smollm2_hir_from_sft_cpu.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _cli import finish, run_jobs, run_train
from _smollm2 import MODEL, SHARED, add_size_args, seeds, size, trainer_overrides
from bench_hir_table import INSTRUCTION, QUERY_TEMPLATE, hydra_value

TASKS = "object_counting,logical_deduction_three_objects,tracking_shuffled_objects_three_objects"
NEW_TOKENS = {"word_sorting": 64}                          # answers longer than the preset's 16 tokens
ARMS = {  # [PROJECT] settings for LoRA on a 135M model; the budget, not the step count, ends each run
    "sft": ["algo=sft", "algo.lr=3e-4", "algo.warmup_steps=0"],
    "ppo": ["algo=ppo", "reward=verifier", "algo.lr=1e-4", "algo.ppo_epochs=2", "algo.eval_sampled=false",
            "algo.kl_horizon=1000"],
    "hir": ["algo=hir", "algo.lr=3e-4", "algo.epochs_per_iteration=2", "algo.iterations=1000"],
}


def run_arm(task: str, arm: str, seed: int, args, work: Path, start: Path | None = None,
            save: bool = False) -> dict:
    seconds, max_steps, batch, pool = size(args, cpu=(300, 300, 8, 64), gpu=(120, 1000, 32, 256),
                                           smoke=(20, 2, 2, 4))
    run_dir = work / f"{task}_{arm}_s{seed}"
    overrides = [*ARMS[arm], *MODEL, "data=bbh", f"data.task={task}", f"data.path={SHARED / 'bbh' / (task + '.json')}",
                 f"data.batch_size={batch}", f"data.eval_batch_size={2 * batch}", "data.num_val=100000",
                 f"algo.max_new_tokens={NEW_TOKENS.get(task, 16)}", f"seed={seed}", "data.seed=0",
                 f"trainer.max_steps={max_steps}", f"+trainer.max_time={{seconds: {seconds}}}",
                 "trainer.val_check_interval=null", "trainer.check_val_every_n_epoch=null",
                 f"save_model={str(save).lower()}", "trainer.enable_progress_bar=false", *trainer_overrides(args)]
    if start is not None:  # from a saved run (LoRA adapters merged into the base on load)
        overrides.append(f"model.name_or_path={start}")
    if arm in ("sft", "ppo"):
        overrides.append("data.template=" + hydra_value(f"{INSTRUCTION}\n\n{QUERY_TEMPLATE}"))
    if arm == "ppo":
        overrides += [f"algo.minibatch_size={batch}", f"algo.eval_max_new_tokens={NEW_TOKENS.get(task, 16)}"]
    if arm == "hir":
        overrides += [f"algo.batch_size={batch}", f"algo.sample_batch_size={2 * batch}", f"algo.pool_size={pool}",
                      "algo.eval_size=8"]
    overrides += [o.split(":", 1)[1] for o in args.override if o.split(":", 1)[0] == arm]
    run = run_train(overrides, run_dir, threads=args.threads, reuse=args.reuse)
    metrics = json.loads((run_dir / "metrics.json").read_text()) if run["rc"] == 0 else {}
    row = {"task": task, "arm": arm, "seed": seed, "start": str(start) if start else "instruct model", **run,
           "steps": metrics.get("trainer/global_step"),
           "fit_seconds": metrics.get("time/fit_seconds"), "none": metrics.get("before/val/accuracy"),
           "after": metrics.get("val/accuracy")}
    print(f"{task} {arm} seed {seed}: rc={run['rc']} {row['none']} -> {row['after']} "
          f"({row['steps']} steps in {row['fit_seconds']}s)", flush=True)
    return row


def table(runs: list[dict], start: str = "none") -> str:
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    arms = list(dict.fromkeys(r["arm"] for r in runs))

    def mean(values):
        values = [v for v in values if v is not None]
        return f"{100 * sum(values) / len(values):.1f}" if values else "-"

    lines = [f"| task | {start} | " + " | ".join(arms) + " |", "|---" * (len(arms) + 2) + "|"]
    for t in tasks:
        mine = [r for r in runs if r["task"] == t]
        lines.append(f"| {t} | {mean(r['none'] for r in mine)} | "
                     + " | ".join(mean(r["after"] for r in mine if r["arm"] == a) for a in arms) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_size_args(p, "/tmp/bench_smollm2_hir_table")
    p.add_argument("--tasks", default=TASKS, help="comma-separated BBH task files")
    p.add_argument("--arms", default="sft,ppo,hir")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (on a GPU: 9 share one card)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: the environment's)")
    p.add_argument("--start", choices=("none", "sft"), default="none",
                   help="sft: PPO and HIR start from each task's saved SFT arm (see above)")
    p.add_argument("--override", action="append", default=[], metavar="ARM:KEY=VALUE",
                   help="one more Hydra override for one arm, e.g. hir:algo.temperature=0.5 (repeatable)")
    p.add_argument("--reuse", action="store_true", help="read back runs of --work that finished (their "
                   "metrics.json exists) instead of running them again")
    args = p.parse_args(argv)
    tasks = args.tasks.split(",")[:1] if args.smoke else args.tasks.split(",")
    started = time.perf_counter()
    work = Path(args.work)
    arms = args.arms.split(",")
    if args.start == "none":
        runs = run_jobs(run_arm, [(t, a, s, args, work) for s in seeds(args) for t in tasks for a in arms],
                        args.parallel)
    else:
        sft = run_jobs(run_arm, [(t, "sft", s, args, work, None, True) for s in seeds(args) for t in tasks],
                       args.parallel)
        from_sft = [(r["task"], a, r["seed"], args, work, work / f"{r['task']}_sft_s{r['seed']}" / "model")
                    for r in sft if r["rc"] == 0 for a in arms if a != "sft"]
        runs = run_jobs(run_arm, from_sft, args.parallel)
    md = table(runs, "none" if args.start == "none" else "start (the SFT arm)")
    print(md)
    return finish({"what": "HIR table on SmolLM2-135M-Instruct, real BBH (bench_smollm2_hir_table.py"
                           + (", PPO and HIR from the SFT arm)" if args.start == "sft" else ")"),
                   "trainer": args.trainer, "smoke": args.smoke, "table": md, "runs": runs},
                  started, args.json, None, lambda runs, path: None)


if __name__ == "__main__":
    main()
