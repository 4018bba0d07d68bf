"""Issue 5's comparison table: no training / shared start / SFT / PPO / HIR on generated BBH tasks.

For each task and seed, everything runs through the real CLI (``python train.py ...`` subprocesses, one
at a time; ``--parallel N`` runs N (task, seed) pipelines at once), then every saved model is evaluated
here, in-process, the same way:

1. **start** (shared by the three training arms): ``python train.py algo=hir`` stopped inside HIR's own
   supervised warm start (``algo.warm_start_steps``, ``conf/experiment/hir_tiny-t5.yaml``: gold answers
   under "Solve the question with correct answer.", every other example a corrupted answer under "...with
   wrong answer.", lr 1e-3). The tiny models have no pretraining; this stands in for FLAN's instruction
   tuning, which the paper starts from. Its ``model/`` is the starting point of every arm below.
2. **sft**: ``algo=sft`` continues from the start on the gold answers (the upper reference: uses gold).
3. **ppo**: ``algo=ppo reward=verifier`` continues with the task verifier as the reward (graded: partial
   credit for near misses), no gold answers in the loss; the tiny-pipeline settings of
   ``conf/experiment/instructgpt_tiny.yaml`` (lr 2e-5, KL horizon 1000) with 128 prompts per iteration
   and minibatch 64.
4. **hir**: ``algo=hir`` (``conf/experiment/hir_tiny-t5.yaml``) continues without gold answers: only the
   binary correct/wrong feedback of its own samples (``algo.warm_start_steps=0``).

**Budget.** Every arm gets the same wall-clock training budget (``--arm-seconds``; Lightning's
``trainer.max_time``), with a step cap (``--arm-max-steps``) so an idle machine does not run away; LR
schedules are set over the cap, so they are near-constant inside the budget. The table reports what each
arm did in its budget (optimizer steps, training examples consumed) next to the fit time. The start gets
``--start-seconds`` (and ``--start-max-steps``). Lightning validation is off in all runs
(``trainer.limit_val_batches=0``) so that no arm spends budget on evaluation; HIR's in-loop monitor
(``hir/accuracy``, part of its algorithm) is shrunk to ``--hir-eval-size`` held-out rows.

**Evaluation** (not counted in the budgets): greedy decoding, the task verifier's normalised exact match
with a 95 % bootstrap interval (``feedback_lm.evaluate`` / ``feedback_lm.evaluation``), with the
same input for every arm, ``"Solve the question with correct answer.\\n\\nQ: {input}\\nA:"`` (HIR's
template; SFT and PPO are trained with ``data.template`` set to exactly this text), on

- (a) the generated held-out set: the datamodule's own ``num_val`` examples, drawn disjoint from training
  (``feedback_lm.data.datamodule.generated_split`` with the runs' seed, size and difficulty);
- (b) the real BBH examples of the task, all 250 of ``/work/shared/data/bbh/<task>.json`` (never trained on).

**none** is the untrained model (``tiny-t5`` preset, random init with the seed), evaluated the same way.

Usage::

    python bench/bench_hir_table.py --json bench/results/hir_table.json           # defaults: ~35-40 min
    python bench/bench_hir_table.py --smoke                                          # plumbing, ~2-3 min
    python bench/bench_hir_table.py --tasks word_sorting,object_counting --seeds 0,1 --arm-seconds 300
    python bench/bench_hir_table.py --reuse --json out.json     # re-evaluate the runs in --work, no training
    python bench/bench_hir_table.py --trainer gpu --parallel 3 --start-seconds 600 --arm-seconds 300  # a GPU

Prints a markdown table (task x arm: generated held-out accuracy, BBH accuracy, fit time, steps, seed)
and, with ``--json``, writes every number, command line, run directory and machine condition.
Results are recorded in bench/README.md ("HIR on the tiny default" -> "The comparison table (issue 5)").
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _cli import GPU_TRAINER, run_train  # bench/ is on sys.path when this runs as a script

BBH_DIR = ROOT.parent / "shared" / "data" / "bbh"
INSTRUCTION = "Solve the question with correct answer."   # plugins.hir.INSTR_ORIGINAL (the eval instruction)
QUERY_TEMPLATE = "Q: {input}\nA:"                          # conf/data/*.yaml template
ARMS = ("none", "start", "sft", "ppo", "hir")

# Tasks and the difficulty knobs of their generated training data (feedback_lm/data/tasks.py), chosen so
# a 1 M-parameter byte-level tiny-t5 gets above zero quickly from scratch; gen_tokens = the generation
# budget (sampling and evaluation) on generated data, where answers are short.
TASKS: dict[str, dict] = {
    # the embedded default's knobs (conf/data/word_sorting.yaml); BBH: 2-20 words, open vocabulary
    "word_sorting": {"difficulty": {"min_words": 2, "max_words": 3, "vocab_size": 30}, "gen_tokens": 32},
    # 1-3 kinds of the asked category, one of each, no distractors: the answer is 1, 2 or 3
    # (BBH: 2-10 kinds with quantities up to 5 and distractors, answers 2-20)
    "object_counting": {"difficulty": {"min_items": 1, "max_items": 3, "max_count": 1, "distractor_prob": 0.0},
                        "gen_tokens": 8},
    # BBH-like generator defaults (3 options, 3 objects); chance = 1/3
    "logical_deduction_three_objects": {"difficulty": {}, "gen_tokens": 8},
    "tracking_shuffled_objects_three_objects": {"difficulty": {}, "gen_tokens": 8},
}
DEFAULT_TASKS = "word_sorting,object_counting,logical_deduction_three_objects"


def hydra_value(value) -> str:
    """A Python value as a Hydra override value (dicts as ``{k:v,...}``, strings single-quoted)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return json.dumps(value)


def run_cli(overrides: list[str], run_dir: Path, log: Path, reuse: bool = False) -> dict:
    """``python train.py <overrides>`` into ``run_dir``; returns its metrics.json plus the wall time.

    ``reuse``: a finished run already in ``run_dir`` (metrics.json, model/ and this script's
    bench_run.json) is taken as it is, so a table can be re-evaluated without retraining.
    """
    record = run_dir / "bench_run.json"
    if reuse and record.is_file() and (run_dir / "metrics.json").is_file() and (run_dir / "model").is_dir():
        print(f"reusing {run_dir}", flush=True)
        return {**json.loads(record.read_text()), "metrics": json.loads((run_dir / "metrics.json").read_text()),
                "reused": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    print(f"$ train.py {' '.join(overrides)} -> {run_dir}", flush=True)
    run = run_train(overrides, run_dir, threads=None, log=log)
    if run["rc"] != 0:
        sys.exit(f"failed ({run['rc']}); see {log}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = {"command": run["command"], "wall_seconds": run["wall_seconds"]}
    record.write_text(json.dumps(out) + "\n")
    return {**out, "metrics": metrics}


def common_overrides(task: str, seed: int, args) -> list[str]:
    spec = TASKS[task]
    return [
        f"data={task}", *[f"++data.difficulty.{k}={hydra_value(v)}" for k, v in spec["difficulty"].items()],
        f"seed={seed}",
        f"data.num_train={args.num_train}", f"data.num_val={args.num_val}",
        f"model.max_length={args.max_length}",   # BBH-format multiple-choice prompts + instruction exceed 512 bytes
        "eval_before=false", "eval_after=false", "trainer.limit_val_batches=0",
        "checkpoint_every_n_steps=1000000", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        *(GPU_TRAINER if args.trainer == "gpu" else []),
    ]


def budget(seconds: float, max_steps: int) -> list[str]:
    return [f"trainer.max_steps={max_steps}", f"+trainer.max_time={{seconds:{int(seconds)}}}"]


def arm_overrides(arm: str, task: str, start_model: Path, args) -> list[str]:
    """The training arm's own overrides (added to the common ones and the budget)."""
    gen = TASKS[task]["gen_tokens"]
    from_start = [f"model.name_or_path={start_model}", "model.preset=null"]
    instructed = f"data.template={hydra_value(INSTRUCTION + chr(10) * 2 + QUERY_TEMPLATE)}"
    if arm == "sft":
        return ["algo=sft", *from_start, instructed, f"algo.max_new_tokens={gen}"]
    if arm == "ppo":
        return ["algo=ppo", "reward=verifier", *from_start, instructed, f"algo.lr={args.ppo_lr}",
                "algo.kl_horizon=1000", f"data.batch_size={args.ppo_batch}",
                f"algo.minibatch_size={args.ppo_minibatch}", f"algo.max_new_tokens={gen}",
                f"algo.eval_max_new_tokens={gen}"]
    if arm == "hir":
        return ["algo=hir", *from_start, "algo.warm_start_steps=0", "algo.iterations=100000",
                f"algo.pool_size={args.hir_pool}", f"algo.eval_size={args.hir_eval_size}",
                f"algo.max_new_tokens={gen}"]
    raise ValueError(arm)


def steps_and_examples(arm: str, metrics: dict, args) -> tuple[int, int]:
    """Optimizer steps and training examples consumed (gold rows for SFT/start, rollouts for PPO,
    relabeled rows trained on for HIR)."""
    step = int(metrics.get("trainer/global_step", 0))
    if arm in ("start", "sft"):
        return step, step * 32                    # data.batch_size (conf/data/*.yaml)
    if arm == "ppo":                              # one Lightning step = one iteration
        per_iter = (args.ppo_batch // args.ppo_minibatch) * 4   # ppo_epochs=4
        return step * per_iter, step * args.ppo_batch
    return step, step * 32                        # HIR: one Lightning step = one minibatch of 32


# ------------------------------------------------------------------------------------------ evaluation
def eval_sets(task: str, seed: int, args) -> dict[str, list]:
    from feedback_lm.data import files
    from feedback_lm.data.datamodule import generated_split

    _, held_out = generated_split(task, args.num_train, args.num_val, seed, TASKS[task]["difficulty"])
    bbh = files.load_bbh(BBH_DIR / f"{task}.json", split="all")
    if args.bbh_limit:
        bbh = bbh[: args.bbh_limit]
    return {"generated": held_out, "bbh": bbh}


def load_policy(model_dir: Path | None, seed: int, args):
    from feedback_lm.evaluate import load_policy as load

    model = ({"name": "tiny-t5", "preset": "tiny-t5"} if model_dir is None else
             {"name": "tiny-t5", "name_or_path": str(model_dir)})
    return load({**model, "tokenizer": "byte", "max_length": args.max_length}, seed,
                "cuda" if args.trainer == "gpu" else "cpu")


def accuracy(policy, task: str, examples, max_new_tokens: int, batch: int = 50) -> tuple[dict, list[dict], list]:
    """Greedy exact match (``feedback_lm.evaluation``: the task verifier, with its 95 % bootstrap interval);
    also a few (output, target) samples and the 5 most frequent outputs (a model that answers one constant
    shows up there)."""
    from collections import Counter

    from feedback_lm.data.tasks import format_prompt
    from feedback_lm.evaluate import generate
    from feedback_lm.evaluation import mean_estimate, task_scores
    from feedback_lm.values import TaskValue

    prompts = [f"{INSTRUCTION}\n\n{format_prompt(e, QUERY_TEMPLATE)}" for e in examples]
    outputs = generate(policy, prompts, "greedy", max_new_tokens, 1.0, seed=0, batch_size=batch)["texts"]
    exact, _ = task_scores(TaskValue(task), prompts, outputs, [e.target for e in examples])
    shown = [{"output": o, "target": e.target} for o, e in zip(outputs[:3], examples)]
    return mean_estimate(exact), shown, Counter(o.strip() for o in outputs).most_common(5)


def evaluate(model_dir: Path | None, task: str, seed: int, sets: dict, args) -> dict:
    t = time.perf_counter()
    policy = load_policy(model_dir, seed, args)
    gen = TASKS[task]["gen_tokens"]
    bbh_tokens = min(256, max(len(e.target.encode()) for e in sets["bbh"]) + 8)
    acc_gen, shown_gen, top_gen = accuracy(policy, task, sets["generated"], gen)
    acc_bbh, shown_bbh, top_bbh = accuracy(policy, task, sets["bbh"], bbh_tokens)
    return {"generated_acc": acc_gen["value"], "bbh_acc": acc_bbh["value"], "generated_acc_ci": acc_gen["ci"],
            "bbh_acc_ci": acc_bbh["ci"], "n_generated": len(sets["generated"]),
            "n_bbh": len(sets["bbh"]), "eval_seconds": round(time.perf_counter() - t, 1),
            "samples_generated": shown_gen, "samples_bbh": shown_bbh,
            "top_outputs_generated": top_gen, "top_outputs_bbh": top_bbh}


# ---------------------------------------------------------------------------------------------- driver
def run_task(task: str, seed: int, work: Path, args) -> list[dict]:
    out = work / f"{task}_s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    sets = eval_sets(task, seed, args)
    common = common_overrides(task, seed, args)
    rows = []

    def add(arm: str, model_dir: Path | None, run: dict | None):
        ev = evaluate(model_dir, task, seed, sets, args)
        metrics = run["metrics"] if run else {}
        steps, examples = steps_and_examples(arm, metrics, args) if run else (0, 0)
        row = {"task": task, "seed": seed, "arm": arm, **ev,
               "fit_seconds": round(metrics.get("time/fit_seconds", 0.0), 1),
               "wall_seconds": run["wall_seconds"] if run else 0.0,
               "optimizer_steps": steps, "train_examples": examples,
               "command": run["command"] if run else None, "reused_run": bool(run and run.get("reused")),
               "run_dir": str(model_dir.parent) if model_dir else None,
               "final_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        rows.append(row)
        print(f"  {task} seed {seed} {arm:5s}: generated {ev['generated_acc']:.3f}  BBH {ev['bbh_acc']:.3f}  "
              f"fit {row['fit_seconds']:.0f}s  steps {steps}  (eval {ev['eval_seconds']:.0f}s)", flush=True)

    add("none", None, None)
    start_dir = out / "start"
    start = run_cli(["algo=hir", *common, f"algo.warm_start_steps={args.start_max_steps}",
                     *budget(args.start_seconds, args.start_max_steps)], start_dir, out / "start.log", args.reuse)
    add("start", start_dir / "model", start)
    for arm in ("sft", "ppo", "hir"):
        if arm not in args.arms:
            continue
        arm_dir = out / arm
        res = run_cli([*arm_overrides(arm, task, start_dir / "model", args), *common,
                       *budget(args.arm_seconds, args.arm_max_steps)], arm_dir, out / f"{arm}.log", args.reuse)
        add(arm, arm_dir / "model", res)
    return rows


def markdown(rows: list[dict]) -> str:
    header = ("| task | arm | seed | generated held-out acc [95 % CI] | real BBH acc [95 % CI] | fit time (s) | optimizer steps | "
              "training examples |")
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ci = lambda key, r=r: "[{:.1f}, {:.1f}]".format(*(100 * c for c in r[key])) if key in r else ""
        lines.append(f"| {r['task']} | {r['arm']} | {r['seed']} | {100 * r['generated_acc']:.1f} % "
                     f"{ci('generated_acc_ci')} (n={r['n_generated']}) | {100 * r['bbh_acc']:.1f} % "
                     f"{ci('bbh_acc_ci')} (n={r['n_bbh']}) | "
                     f"{r['fit_seconds']:.0f} | {r['optimizer_steps']} | {r['train_examples']} |")
    seeds = sorted({r["seed"] for r in rows})
    if len(seeds) > 1:
        lines += ["", f"Mean over seeds {seeds}:", "",
                  "| task | arm | generated held-out acc | real BBH acc |", "| --- | --- | --- | --- |"]
        for task in dict.fromkeys(r["task"] for r in rows):
            for arm in ARMS:
                sel = [r for r in rows if r["task"] == task and r["arm"] == arm]
                if sel:
                    g = sum(r["generated_acc"] for r in sel) / len(sel)
                    b = sum(r["bbh_acc"] for r in sel) / len(sel)
                    lines.append(f"| {task} | {arm} | {100 * g:.1f} % | {100 * b:.1f} % |")
    return "\n".join(lines)


def machine() -> dict:
    import torch

    info = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads()}
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, from {list(TASKS)}")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (each runs the whole pipeline)")
    p.add_argument("--arms", default="sft,ppo,hir", help="training arms after the shared start")
    p.add_argument("--start-seconds", type=float, default=210, help="wall-clock budget of the shared start")
    p.add_argument("--start-max-steps", type=int, default=1500)
    p.add_argument("--arm-seconds", type=float, default=110, help="wall-clock training budget of each arm")
    p.add_argument("--arm-max-steps", type=int, default=1000, help="step cap of each arm (PPO: iterations)")
    p.add_argument("--num-train", type=int, default=20000)
    p.add_argument("--num-val", type=int, default=200, help="generated held-out examples")
    p.add_argument("--bbh-limit", type=int, default=0, help="evaluate on the first N BBH examples (0 = all)")
    p.add_argument("--max-length", type=int, default=768, help="model.max_length (prompt bytes kept)")
    p.add_argument("--ppo-lr", type=float, default=2e-5, help="conf/experiment/instructgpt_tiny.yaml's value")
    p.add_argument("--ppo-batch", type=int, default=128, help="prompts per PPO iteration")
    p.add_argument("--ppo-minibatch", type=int, default=64)
    p.add_argument("--hir-pool", type=int, default=256, help="HIR sampling pool (hir_tiny-t5.yaml: 256)")
    p.add_argument("--hir-eval-size", type=int, default=8, help="HIR's in-loop held-out monitor rows")
    p.add_argument("--work", default="/tmp/bench_hir_table", help="run directories and logs")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--reuse", action="store_true",
                   help="take finished runs already in --work as they are (re-evaluate without retraining)")
    p.add_argument("--smoke", action="store_true", help="one task, seconds-long budgets, small eval sets")
    p.add_argument("--trainer", default="cpu", choices=("cpu", "gpu"),
                   help="gpu: every run on the GPU (fp32) and evaluation there too")
    p.add_argument("--parallel", type=int, default=1,
                   help="(task, seed) pipelines run at once (each still runs its arms one after the other)")
    args = p.parse_args(argv)
    if args.smoke:
        args.tasks = "object_counting" if args.tasks == DEFAULT_TASKS else args.tasks
        args.start_seconds, args.arm_seconds = 12, 8
        args.start_max_steps, args.arm_max_steps = 6, 4
        args.num_train, args.num_val, args.bbh_limit = 500, 16, 16
        args.ppo_batch, args.ppo_minibatch, args.hir_pool = 16, 8, 16
        args.hir_eval_size = 4
    args.arms = [a for a in args.arms.split(",") if a]
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS] + [a for a in args.arms if a not in ARMS[2:]]
    if unknown:
        sys.exit(f"unknown task(s)/arm(s) {unknown}; tasks: {list(TASKS)}, arms: {list(ARMS[2:])}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    info = machine()
    jobs = [(task, seed) for task in tasks for seed in seeds]
    with cf.ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:  # train.py runs are subprocesses
        rows = [row for rows_of_job in pool.map(lambda job: run_task(*job, work, args), jobs) for row in rows_of_job]
    total = time.perf_counter() - t0
    info["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    table = markdown(rows)
    print("\n" + table)
    print(f"\ntotal wall time {total:.0f} s")
    result = {"argv": sys.argv, "settings": {k: v for k, v in vars(args).items()}, "tasks": {t: TASKS[t] for t in tasks},
              "machine": info, "total_seconds": round(total, 1), "rows": rows, "table_markdown": table}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
